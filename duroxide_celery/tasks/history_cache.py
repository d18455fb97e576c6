"""Per-worker cache of committed histories, so a turn reads only the events appended since its last visit.

History is append-only and event ids are contiguous, so a cached list is always a correct prefix of the stored
history, even when other workers ran turns in between: the turn loads just the events after it. Entries are
added only after a commit succeeded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..replay.events import HistoryEvent

Key = tuple[str, int]


class HistoryCache:
    def __init__(self, capacity: int = 2000):
        self.capacity = capacity
        self._entries: OrderedDict[Key, list[HistoryEvent]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> list[HistoryEvent]:
        with self._lock:
            events = self._entries.get(key)
            if events is None:
                return []
            self._entries.move_to_end(key)
            return list(events)

    def put(self, key: Key, events: list[HistoryEvent]) -> None:
        with self._lock:
            self._entries[key] = events
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def drop(self, key: Key) -> None:
        with self._lock:
            self._entries.pop(key, None)
