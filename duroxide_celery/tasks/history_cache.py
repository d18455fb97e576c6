"""Per-worker caches of committed turns: histories, and live engines of instances blocked mid-orchestration.

History is append-only with contiguous event ids, so a cached list is always a correct prefix of the stored
history, even when other workers ran turns in between: a turn loads just the events after it. A cached engine
(its generator suspended where the last turn blocked) is used only when the stored history is exactly the one
it ended with; then a turn costs its new messages alone instead of a replay of the whole history. Entries are
added only after a commit succeeded, and taken out while a turn uses them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from ..replay.events import HistoryEvent

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


class HistoryCache(LruCache[list[HistoryEvent]]):
    def get(self, key: Key) -> list[HistoryEvent]:
        events = self.peek(key)
        return list(events) if events is not None else []
