"""kombu's in-memory transport, tuned for the embedded runtime.

Celery's consumer loop drains with a fixed 2 s timeout and checks for shutdown only between drains; capping the
drain timeout makes `Runtime.shutdown()` prompt. Messages live in process memory: losing them on exit is fine,
since the store holds all pending work and the recovery sweep republishes it on the next start.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import memory

_MAX_DRAIN_S = 0.05


class Transport(memory.Transport):
    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:
        capped = _MAX_DRAIN_S if timeout is None else min(timeout, _MAX_DRAIN_S)
        return super().drain_events(connection, timeout=capped)
