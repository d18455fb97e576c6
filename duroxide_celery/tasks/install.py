"""Registers the engine's Celery tasks on an app, bound to one Runtime (no module globals: two apps can coexist)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.app.routes import Router

from ..errors import ActivityFailed, OrchestrationFailed
from ..replay.engine import ReplayEngine
from .activity import ActivityExecutor
from .engine_cache import LruCache
from .executor_parts import ExecutorParts
from .inline import InlinePolicy, early_ack
from .queues import ACTIVITY_TASK, ENGINE_TASK_OPTIONS, RECOVERY_TASK, TIMER_TASK, TURN_TASK, queue
from .recovery import fire_timers, sweep
from .turn import TurnExecutor

if TYPE_CHECKING:
    from ..runtime import Runtime


class EngineTask(Task):
    """Base of the engine's tasks: the app's `task_annotations` (even `{"*": {...}}`) do not reach them, as its
    global task settings do not; their options are set where they are declared (DESIGN invariant 8)."""

    @classmethod
    def annotate(cls) -> None:
        return None


class HousekeepingTask(EngineTask):
    """A housekeeping task sent by hand (`.delay()`) goes to the engine's orchestrator queue, never where the app's
    `task_routes` would send it (the engine's workers might not consume that queue)."""

    engine_queue: str = ""

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: Any = None, **options: Any) -> Any:
        options.setdefault("queue", queue(self.engine_queue))
        options.setdefault("router", Router(app=self.app))
        options.setdefault("serializer", "json")
        return super().apply_async(args, kwargs, task_id, **options)


@dataclass
class InstalledTasks:
    """What install_tasks built: the executors, this process's engine cache and the Celery task objects."""

    turns: TurnExecutor
    activities: ActivityExecutor
    engine_cache: LruCache[ReplayEngine]
    #: The Celery task objects by task name (proxies until the app is finalized).
    tasks: dict[str, Any] = field(default_factory=dict)


def install_tasks(app: Celery, runtime: Runtime) -> InstalledTasks:
    """Register the engine's tasks on `app`, with executors built from the runtime's parts; returns them."""
    provider = runtime.provider
    parts = ExecutorParts(
        store=lambda: provider.store,  # the provider builds it again in a forked child
        publisher=runtime.publisher,
        settings=runtime.options,  # what a worker bootstep changes lives in `identity`
        identity=runtime.identity,
        registry=runtime,
        metrics=runtime.metrics,
        tracing=runtime.tracing,
        inline=InlinePolicy(
            settings=runtime.options, identity=runtime.identity, registry=runtime, queues=runtime.names
        ),
    )
    turns = TurnExecutor(parts, queues=runtime.names)
    activities = ActivityExecutor(parts, provider=runtime.provider)
    # Inline steps (tasks/inline.py): a turn runs the activity its commit claimed, an activity the turn after it.
    turns.run_claimed = activities.run_claimed
    activities.next_turn = turns.run_after_activity

    @app.task(
        name=TURN_TASK,
        base=EngineTask,
        acks_late=True,
        shared=False,
        throws=(OrchestrationFailed, ActivityFailed),  # ActivityFailed: an activity it ran inline
        **ENGINE_TASK_OPTIONS,
    )
    def turn(instance_id: str) -> None:
        """Run the pending turn(s) of one orchestration instance."""
        turns.run(instance_id, ack=early_ack())

    # Acked when a worker starts it, not when it ends: the activity's lease and heartbeats live in the store, so a
    # delivery held for a whole long activity buys nothing and costs much: Redis redelivers it after the
    # visibility timeout, and RabbitMQ's consumer_timeout closes the channel, which cancels the running activity
    # and redelivers it to hit the same wall again (DESIGN section 3). A worker that dies between the ack and its
    # claim leaves the row unclaimed; the recovery sweep republishes it (tests/production/test_deliveries.py).
    @app.task(
        name=ACTIVITY_TASK,
        base=EngineTask,
        acks_late=False,
        shared=False,
        throws=(ActivityFailed,),
        **ENGINE_TASK_OPTIONS,
    )
    def activity(instance_id: str, execution_id: int, event_id: int) -> None:
        """Run one activity work item."""
        activities.run((instance_id, int(execution_id), int(event_id)))

    # Housekeeping, callable by hand (`.delay()`); beat and the embedded scheduler run the same code in-process.
    housekeeping = {
        "base": HousekeepingTask,
        "engine_queue": runtime.names.orchestrator,
        "acks_late": True,
        "shared": False,
        **ENGINE_TASK_OPTIONS,
    }

    @app.task(name=TIMER_TASK, **housekeeping)
    def fire_due_timers() -> int:
        """Move due durable timers into their instances' inboxes."""
        return fire_timers(runtime.store, runtime.publisher)

    @app.task(name=RECOVERY_TASK, **housekeeping)
    def recover(threshold_ms: int | None = None) -> dict[str, int]:
        """Republish work the store says is pending and undelivered for too long."""
        limit = runtime.options.recovery_threshold if threshold_ms is None else threshold_ms
        return sweep(runtime.store, runtime.publisher, limit)

    # By their names, not `task.name`: reading any attribute of a task declared before the app is finalized
    # evaluates its PromiseProxy, creating the task now.
    built = {TURN_TASK: turn, ACTIVITY_TASK: activity, TIMER_TASK: fire_due_timers, RECOVERY_TASK: recover}
    return InstalledTasks(turns, activities, turns.engines, built)
