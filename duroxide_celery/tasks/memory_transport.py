"""kombu's in-memory transport, tuned for the embedded runtime.

kombu's virtual transports poll: an empty drain sleeps `polling_interval` and looks again, so the embedded workers
either woke a thousand times a second (CPU and GIL time taken from the turns, even when idle) or answered late.
Here a consumer with nothing to take sleeps until a message is put, acked or rejected (the two that free a prefetch
slot), and a drain returns within a short cap so that `Runtime.shutdown()` stays prompt (Celery's consumer loop
checks for shutdown only between drains). Messages live in process memory: losing them on exit is fine, since the
store holds all pending work and the recovery sweep republishes it on the next start.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Any

from kombu.transport import memory
from kombu.transport.virtual.base import Empty

_MAX_DRAIN_S = 0.05


class _Arrivals:
    """A counter of what may let a consumer take a message, which waiters sleep on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def happened(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait_past(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._count != seen, timeout)


#: One for the process, like the memory transport's queues (which every memory channel shares).
_arrivals = _Arrivals()


class Channel(memory.Channel):
    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        _arrivals.happened()

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _arrivals.happened()

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        _arrivals.happened()  # a prefetch slot is free: a consumer that was full may take the next message

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)
        _arrivals.happened()


class Transport(memory.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:
        """Deliver one message; wait (never poll) for one to arrive, up to min(timeout, the cap)."""
        budget = _MAX_DRAIN_S if timeout is None else min(timeout, _MAX_DRAIN_S)
        deadline = monotonic() + budget
        while True:
            seen = _arrivals.count  # read before looking: an arrival after this wakes the wait below
            try:
                return self.cycle.get(self._deliver, timeout=budget)
            except Empty:
                pass
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise TimeoutError()
            _arrivals.wait_past(seen, remaining)
