"""Registers the engine's Celery tasks on an app, bound to one Runtime (no module globals: two apps can coexist)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from .activity import ActivityExecutor
from .queues import ACTIVITY_TASK, RECOVERY_TASK, TIMER_TASK, TURN_TASK
from .recovery import fire_timers, sweep
from .turn import TurnExecutor

if TYPE_CHECKING:
    from ..runtime import Runtime


def install_tasks(app: Celery, runtime: Runtime) -> None:
    turns = TurnExecutor(runtime)
    activities = ActivityExecutor(runtime)
    runtime._activity_executor = activities

    @app.task(name=TURN_TASK, ignore_result=True, acks_late=True, reject_on_worker_lost=True, shared=False)
    def turn(instance_id: str) -> None:
        """Run the pending turn(s) of one orchestration instance."""
        turns.run(instance_id)

    # Acked when a worker starts it, not when it ends: the activity's lease and heartbeats live in the store, so a
    # delivery held for a whole long activity buys nothing and costs much: Redis redelivers it after the
    # visibility timeout, and RabbitMQ's consumer_timeout closes the channel, which cancels the running activity
    # and redelivers it to hit the same wall again (DESIGN section 3). A worker that dies between the ack and its
    # claim leaves the row unclaimed; the recovery sweep republishes it (tests/production/test_deliveries.py).
    @app.task(name=ACTIVITY_TASK, ignore_result=True, acks_late=False, shared=False)
    def activity(instance_id: str, execution_id: int, event_id: int) -> None:
        """Run one activity work item."""
        activities.run((instance_id, int(execution_id), int(event_id)))

    @app.task(name=TIMER_TASK, ignore_result=True, shared=False)
    def fire_due_timers() -> int:
        """Move due durable timers into their instances' inboxes."""
        return fire_timers(runtime.store, runtime.publisher)

    @app.task(name=RECOVERY_TASK, ignore_result=True, shared=False)
    def recover(threshold_ms: int | None = None) -> dict[str, int]:
        """Republish work the store says is pending and undelivered for too long."""
        limit = runtime.options.recovery_threshold if threshold_ms is None else threshold_ms
        return sweep(runtime.store, runtime.publisher, limit)
