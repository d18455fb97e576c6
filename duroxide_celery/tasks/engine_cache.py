"""Per-worker cache of live engines of instances blocked mid-orchestration.

A Running turn always ends with its generator suspended; keeping that engine lets the next turn on this worker
feed it only the new messages instead of replaying the whole history (like Temporal's sticky cache). Its history
is the committed one, so it also serves as the cached history prefix: history is append-only with contiguous
ids, and a turn loads only the events stored after it. Entries are put back only after a commit succeeded, and
dropped whenever the stored history moved on elsewhere.

The cache is bounded by size, not only by count: a thousand waiting instances with megabyte inputs would hold
gigabytes. Each engine's size is estimated cheaply from the text it was built from (history payloads, KV values),
counted once per event as its history grows; the least recently used engines are evicted past the budget
(RuntimeOptions.engine_cache_max_bytes). Every entry is idle (a turn takes its engine out while it runs), so
eviction only costs that instance a replay on its next turn.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..options import DEFAULT_ENGINE_CACHE_BYTES

Key = tuple[str, int]
V = TypeVar("V")

#: Fixed cost counted per history event and per cached engine (objects, dicts, the generator frame).
EVENT_OVERHEAD = 200
ENGINE_OVERHEAD = 4096
#: Payload text is held twice: as stored (history) and decoded (the orchestration's own variables).
PAYLOAD_FACTOR = 2


def _text_size(value: Any) -> int:
    """Characters of the strings in a payload dict (one level deep, like HistoryEvent.data), cheap and rough."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(v) if isinstance(v, str) else _shallow(v) for v in value.values())
    return _shallow(value)


def _shallow(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(v) for v in value.values() if isinstance(v, str))
    return 0


class EngineSizer:
    """Estimated bytes of a ReplayEngine: history payload text and KV values; remembers how far it counted each
    engine's (append-only) history, so a put costs only the events added since."""

    def __init__(self) -> None:
        self._counted: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()

    def __call__(self, engine: Any) -> int:
        history = getattr(engine, "history", None) or []
        try:
            count, size = self._counted.get(engine, (0, 0))
        except TypeError:  # not weak-referenceable: count it whole
            count, size = 0, 0
        if count > len(history):  # not the list we counted: start again
            count, size = 0, 0
        for event in history[count:]:
            size += EVENT_OVERHEAD + PAYLOAD_FACTOR * _text_size(getattr(event, "data", None))
        try:
            self._counted[engine] = (len(history), size)
        except TypeError:
            pass
        kv = getattr(engine, "kv", None) or {}
        kv_size = sum(PAYLOAD_FACTOR * len(v[0]) + len(k) for k, v in kv.items() if v and isinstance(v[0], str))
        return ENGINE_OVERHEAD + size + kv_size


class LruCache(Generic[V]):
    """Entries by key, least recently used evicted first once there are more than `capacity` of them or their
    sizes (by `sizer`) add up to more than `max_bytes`. An entry bigger than the whole budget is not kept."""

    def __init__(
        self, capacity: int = 1000, max_bytes: int | None = None, sizer: Callable[[V], int] | None = None
    ) -> None:
        self.capacity = capacity
        self.max_bytes = DEFAULT_ENGINE_CACHE_BYTES if max_bytes is None else max_bytes
        self._sizer: Callable[[V], int] = sizer if sizer is not None else EngineSizer()
        self._entries: OrderedDict[Key, tuple[V, int]] = OrderedDict()
        #: The execution of each instance's entry (the last put, when there are several): `of_instance`.
        self._executions: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """The estimated size of what the cache holds now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, key: Key) -> V | None:
        """Remove and return the entry (a turn owns it until it puts it back)."""
        with self._lock:
            return self._pop(key)

    def peek(self, key: Key) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def of_instance(self, instance_id: str) -> tuple[int, V] | None:
        """An instance's entry, with its execution id, without knowing the execution (a turn before its lease)."""
        with self._lock:
            execution_id = self._executions.get(instance_id)
            entry = self._entries.get((instance_id, execution_id)) if execution_id is not None else None
            return (execution_id, entry[0]) if execution_id is not None and entry is not None else None

    def put(self, key: Key, value: V) -> None:
        size = self._sizer(value)  # outside the lock: it reads only this (idle) entry
        with self._lock:
            self._pop(key)
            if size > self.max_bytes or self.capacity <= 0:
                return  # bigger than the whole budget: the next turn replays it
            self._entries[key] = (value, size)
            self._executions[key[0]] = key[1]
            self._bytes += size
            while len(self._entries) > self.capacity or self._bytes > self.max_bytes:
                self._pop(next(iter(self._entries)))

    def drop(self, key: Key) -> None:
        with self._lock:
            self._pop(key)

    def _pop(self, key: Key) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        if self._executions.get(key[0]) == key[1]:
            del self._executions[key[0]]
        self._bytes -= entry[1]
        return entry[0]
