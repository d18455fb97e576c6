"""Contexts handed to user code: OrchestrationContext (deterministic, from replay/) and ActivityContext."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .replay.context import OrchestrationContext, TraceMethods

if TYPE_CHECKING:
    from .client import Client

__all__ = ["ActivityContext", "OrchestrationContext"]

log = logging.getLogger("duroxide_celery.activity")


@dataclass
class ActivityContext(TraceMethods):
    """What an activity knows about its call; `is_cancelled()` turns true when its work was cancelled or lost."""

    instance_id: str
    execution_id: int
    orchestration_name: str
    orchestration_version: str
    activity_name: str
    worker_id: str
    session_id: str | None = None
    _tag: str | None = None
    _provider: Any = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def tag(self) -> str | None:
        return self._tag

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _cancel(self) -> None:
        self._cancelled.set()

    def get_client(self) -> Client:
        """A Client on the same store, e.g. to start or signal other orchestrations from an activity."""
        from .client import Client

        return Client(self._provider)

    def _trace(self, level: int, message: str) -> None:
        log.log(
            level,
            message,
            extra={
                "instance_id": self.instance_id,
                "execution_id": self.execution_id,
                "orchestration_name": self.orchestration_name,
                "activity_name": self.activity_name,
                "worker_id": self.worker_id,
            },
        )
