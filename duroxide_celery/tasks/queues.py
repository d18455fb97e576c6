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
    """`<prefix>.orchestrator`, `<prefix>.activities`, `<prefix>.activities.<tag>`, `<prefix>.sessions.<node>`."""

    def __init__(self, prefix: str = "duroxide"):
        self.prefix = prefix
        self.orchestrator = f"{prefix}.orchestrator"
        self.activities = f"{prefix}.activities"

    def activity_queue(self, tag: str | None) -> str:
        return f"{self.activities}.{tag}" if tag else self.activities

    def session_queue(self, node_id: str) -> str:
        return f"{self.prefix}.sessions.{node_id}"

    def is_activity_queue(self, name: str) -> bool:
        """The untagged activity queue or a tag's queue."""
        return name == self.activities or name.startswith(self.activities + ".")

    def is_ours(self, name: str) -> bool:
        """Whether a queue carries only this runtime's messages (turns, timers, recovery, activities, sessions)."""
        return name == self.orchestrator or self.is_activity_queue(name) or name.startswith(f"{self.prefix}.sessions.")


@lru_cache(maxsize=4096)
def queue(name: str) -> Queue:
    """A declared Queue object: publishing with it makes the producer declare the queue, so a message sent before
    any worker has declared it is not dropped on Redis."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def baseline_settings(names: QueueNames) -> dict[str, Any]:
    """Settings that keep work from being lost or duplicated by Celery's defaults; the app's own config wins."""
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "task_queues": [queue(names.orchestrator), queue(names.activities)],
        "task_routes": {
            TURN_TASK: {"queue": names.orchestrator},
            ACTIVITY_TASK: {"queue": names.activities},
            TIMER_TASK: {"queue": names.orchestrator},
            RECOVERY_TASK: {"queue": names.orchestrator},
        },
    }
