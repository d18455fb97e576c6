"""Per-worker cache of live engines of instances blocked mid-orchestration.

A Running turn always ends with its generator suspended; keeping that engine lets the next turn on this worker
feed it only the new messages instead of replaying the whole history (like Temporal's sticky cache). Its history
is the committed one, so it also serves as the cached history prefix: history is append-only with contiguous
ids, and a turn loads only the events stored after it. Entries are put back only after a commit succeeded, and
dropped whenever the stored history moved on elsewhere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

Key = tuple[str, int]
V = TypeVar("V")


class LruCache(Generic[V]):
    def __init__(self, capacity: int = 1000):
        self.capacity = capacity
        self._entries: OrderedDict[Key, V] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: Key) -> V | None:
        """Remove and return the entry (a turn owns it until it puts it back)."""
        with self._lock:
            return self._entries.pop(key, None)

    def peek(self, key: Key) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Key, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def drop(self, key: Key) -> None:
        with self._lock:
            self._entries.pop(key, None)
