"""Queue names, kombu Queue objects and the Celery settings baseline (DESIGN section 3)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from kombu import Exchange, Queue

TURN_TASK = "duroxide.turn"
ACTIVITY_TASK = "duroxide.activity"
RECOVERY_TASK = "duroxide.recover"
TIMER_TASK = "duroxide.fire_timers"


class QueueNames:
    """`<prefix>.orchestrator`, `<prefix>.activities`, `<prefix>.activities.<tag>`, `<prefix>.sessions.<worker_id>`."""

    def __init__(self, prefix: str = "duroxide"):
        self.prefix = prefix
        self.orchestrator = f"{prefix}.orchestrator"
        self.activities = f"{prefix}.activities"

    def activity_queue(self, tag: str | None) -> str:
        return f"{self.activities}.{tag}" if tag else self.activities

    def session_queue(self, worker_id: str) -> str:
        return f"{self.prefix}.sessions.{worker_id}"

    def is_activity_queue(self, name: str) -> bool:
        """The untagged activity queue or a tag's queue."""
        return name == self.activities or name.startswith(self.activities + ".")

    def is_ours(self, name: str) -> bool:
        """Whether a queue carries only this runtime's messages (turns, timers, recovery, activities, sessions)."""
        return name == self.orchestrator or self.is_activity_queue(name) or name.startswith(f"{self.prefix}.sessions.")


#: Starts every generated worker id (tasks/identity.py). No chosen worker id, tag or queue prefix may contain it, so
#: a queue name with it is the session queue of a worker that no restart brings back, told from the name alone.
GENERATED_ID_MARK = "~"
#: The queue TTL (`x-expires`) of such a session queue: the broker deletes it once nothing has used it (no consumer,
#: no redeclaration) for this long; RabbitMQ, and kombu >= 5.7's Redis transport (its list and binding). Nobody
#: consumes it after its worker ends, and nothing is lost with it: what was routed there is pending in the store,
#: which hands it to another worker (the session lapses; the recovery sweep). Every process (the worker, any
#: publisher) declares it with this same value: RabbitMQ refuses a redeclaration with other arguments.
GENERATED_SESSION_QUEUE_EXPIRES_S = 3600


@lru_cache(maxsize=4096)
def queue(name: str) -> Queue:
    """A declared Queue object: publishing with it makes the producer declare the queue, so a message sent before
    any worker has declared it is not dropped on Redis."""
    arguments = {"x-expires": GENERATED_SESSION_QUEUE_EXPIRES_S * 1000} if GENERATED_ID_MARK in name else None
    return Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=arguments)


#: What stands for "no time limit" on the engine's tasks. Celery has no way to say "none" per task: a task whose
#: limit is unset inherits the app's global `task_time_limit`, and the prefork pool falls back to it for 0. An
#: activity's time is bounded by its workflow (retry policy `timeout_ms`), never by the app's limit for its own tasks.
NO_TIME_LIMIT_S = 10 * 365 * 24 * 3600

#: Options of the engine's own tasks (DESIGN section 3), set on the tasks so that the app's global settings
#: (`task_acks_late`, `task_ignore_result`, `task_time_limit`, `task_default_rate_limit`, ...) neither reach them
#: nor have to change for them (DESIGN invariant 8).
ENGINE_TASK_OPTIONS: dict[str, Any] = {
    "ignore_result": True,
    "store_errors_even_if_ignored": False,
    "track_started": False,
    "serializer": "json",
    "time_limit": NO_TIME_LIMIT_S,
    "soft_time_limit": NO_TIME_LIMIT_S,
    "rate_limit": "0/s",  # Celery reads a zero rate as "no limit"; None would inherit task_default_rate_limit
    # A failure is recorded in the store first: never redeliver it (the narrower two are Celery >= 5.6's; an app's
    # task_acks_on_failure would otherwise reach the engine's tasks through them).
    "acks_on_failure_or_timeout": True,
    "acks_on_failure": True,
    "acks_on_timeout": True,
    "reject_on_worker_lost": True,
}


def embedded_settings(names: QueueNames) -> dict[str, Any]:
    """Settings of the embedded runtime's own private Celery app (never applied to a user's app)."""
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "task_queues": [queue(names.orchestrator), queue(names.activities)],
    }
