"""Inline steps (RuntimeOptions.inline_steps): run the next step where the last one finished, without a broker hop.

- A turn that schedules exactly one activity, of a queue served by the pool running the turn, claims that row in its
  own commit and runs it right after (a fan-out is published: its activities run in parallel elsewhere).
- An activity completed by a worker that also serves the orchestrator queue, when its instance has no other activity
  in flight, is followed by its instance's next turn, right there, instead of a poke through the broker (the pokes
  of a fan-out's completions still coalesce into a few turns).

The store stays the truth. An inline activity is a claimed row with a lease, renewed while it runs like any other: a
crash lets the lease lapse and the recovery sweep republishes the row. An inline turn is exactly what the poke would
have started, so the lease-holder re-check that keeps pokes from being lost applies unchanged. (Temporal's eager
activities, DBOS's inline steps.)
"""

from __future__ import annotations

from collections.abc import Callable

from celery import current_task
from celery.worker import state

from ..options import RuntimeOptions
from ..registry import Registry
from ..replay.commands import ScheduleActivity
from .identity import WorkerIdentity
from .queues import QueueNames

__all__ = ["InlinePolicy", "early_ack"]


class InlinePolicy:
    """Which steps this worker runs inline; read at each use (a worker bootstep sets what it consumes)."""

    def __init__(self, *, settings: RuntimeOptions, identity: WorkerIdentity, registry: Registry, queues: QueueNames):
        self.settings = settings
        self.identity = identity
        self.registry = registry
        self.queues = queues

    def activity_to_claim(self, activities: list[ScheduleActivity], *, in_turn_pool: bool) -> int | None:
        """The scheduled event id of the activity a turn may claim and run inline, or None. Only a turn's single new
        activity, outside any session, registered here, whose queue this worker consumes; from a turn task (the
        turn pool: `in_turn_pool`), only when one pool runs both turns and activities."""
        if not self.settings.inline or len(activities) != 1:
            return None
        activity = activities[0]
        identity = self.identity
        if activity.session_id is not None or (in_turn_pool and not identity.shared_pool):
            return None
        if self.queues.activity_queue(activity.tag) not in identity.consumed:
            return None
        return activity.event_id if activity.name in self.registry.activities else None

    def runs_next_turn(self, orchestration_name: str | None, version: str | None) -> bool:
        """Whether an activity completed here is followed by its instance's next turn, here: this worker serves the
        orchestrator queue and has the orchestration."""
        if not self.settings.inline or not orchestration_name:
            return False
        if self.queues.orchestrator not in self.identity.consumed:
            return False
        return self.registry.resolve_orchestration(orchestration_name, version or None) is not None


def early_ack() -> Callable[[], None] | None:
    """The ack of the running turn task's delivery, to send before it runs an inline activity (which may take hours:
    an unacked delivery would be redelivered by Redis after its visibility timeout, and RabbitMQ's consumer_timeout
    would close the channel). None where the task runs in another process than its consumer (prefork children):
    such a turn publishes its activity instead. Everything the delivery asked for is committed when it is acked."""
    request_id = getattr(getattr(current_task, "request", None), "id", None)
    request = state.requests.get(request_id)  # the worker's own table (empty outside one) if request_id else None
    return request.acknowledge if request is not None else None
