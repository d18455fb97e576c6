"""A first-come, first-served re-entrant lock for SQLite writers.

Python's locks are not fair: a thread that releases and immediately re-acquires usually wins, so with a dozen
busy worker threads a Client call (one short write) can wait several GIL switch intervals per attempt. Handing
the lock to the longest waiter keeps every writer's wait bounded by the queue ahead of it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class FairRLock:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiters: deque[tuple[int, threading.Lock]] = deque()

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None:
                self._owner, self._depth = me, 1
                return True
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append((me, gate))
        gate.acquire()  # released by the previous owner, which has already made us the owner
        return True

    def release(self) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                owner, gate = self._waiters.popleft()
                self._owner, self._depth = owner, 1
                gate.release()
            else:
                self._owner = None

    def __enter__(self) -> FairRLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
