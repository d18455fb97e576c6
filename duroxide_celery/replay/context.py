"""OrchestrationContext: the only door orchestration code has to the outside world.

Scheduling methods return yieldables (replay/yieldables.py) that the code must `yield`; the replay engine turns
them into history. Fire-and-forget methods (custom status, KV, traces) act at once through the ContextHost
(replay/host.py) and are recorded or suppressed during replay.
"""

from __future__ import annotations

import logging
from typing import Any

from .events import SYSCALL_PREFIX, dumps
from .host import ContextHost
from .limits import (
    MAX_INSTANCE_ID_CHARS,
    MAX_KV_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_SESSION_ID_CHARS,
    MAX_VERSION_CHARS,
    check_delay_ms,
    check_length,
    check_storable,
)
from .yieldables import (
    ActivityTask,
    AllTask,
    ContinueAsNewTask,
    DequeueTask,
    DetachedStartTask,
    NewGuidTask,
    RaceTask,
    SubOrchestrationTask,
    Task,
    TimerTask,
    TryDequeueTask,
    UtcNowTask,
    WaitEventTask,
)

log = logging.getLogger("duroxide_celery.orchestration")


def _encode(value: Any, what: str) -> str:
    try:
        return dumps(value)
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None


def _typed_input(value: Any, what: str) -> str:
    """`*_typed` calls pass a str through as JSON text, without encoding it again (duroxide-python 1.6)."""
    return check_storable(value, what) if isinstance(value, str) else _encode(value, what)


# Every check below raises at the context call, inside the orchestration code, so a try/except around the call
# (or around the `yield` of what it returns) catches it like any other error; uncaught, it fails the instance
# with the message. Limits are the store's (replay/limits.py), the same on SQLite and PostgreSQL.
def _require_name(value: Any, what: str, max_chars: int | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    check_storable(value, what)
    if max_chars is not None:
        check_length(value, what, max_chars)
    return value


def _require_session_id(value: Any) -> str:
    return _require_name(value, "session_id", MAX_SESSION_ID_CHARS)


def _require_version(value: Any, what: str = "version") -> str | None:
    if value is None:
        return None
    return _require_name(value, what, MAX_VERSION_CHARS)


def _kv_key(key: Any) -> str:
    text = str(key)
    check_storable(text, "KV key")
    return check_length(text, "KV key", MAX_KV_KEY_CHARS)


def _check_retry(policy: Any) -> dict[str, Any]:
    if not isinstance(policy, dict):
        raise TypeError(f"retry policy must be a dict, got {type(policy).__name__}")
    max_attempts = policy.get("max_attempts", 3)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"retry policy max_attempts must be an integer >= 1, got {max_attempts!r}")
    for key in ("timeout_ms", "total_timeout_ms"):
        if policy.get(key):  # None and 0 mean "no timeout"
            check_delay_ms(policy[key], f"retry policy {key}")
    backoff = policy.get("backoff")
    if isinstance(backoff, dict):
        for key in ("base_ms", "delay_ms", "max_ms"):
            if backoff.get(key) is not None:
                check_delay_ms(backoff[key], f"retry policy backoff {key}")
    return dict(policy)


class TraceMethods:
    """trace_info/warn/error/debug over a `_trace(level, message)` the context defines."""

    def _trace(self, level: int, message: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def trace_info(self, message: str) -> None:
        self._trace(logging.INFO, str(message))

    def trace_warn(self, message: str) -> None:
        self._trace(logging.WARNING, str(message))

    def trace_error(self, message: str) -> None:
        self._trace(logging.ERROR, str(message))

    def trace_debug(self, message: str) -> None:
        self._trace(logging.DEBUG, str(message))


class OrchestrationContext(TraceMethods):
    """Deterministic API for orchestration generators (names and behaviour of duroxide-python)."""

    def __init__(self, host: ContextHost) -> None:
        self._host = host

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        return self._host.instance_id

    @property
    def execution_id(self) -> int:
        return self._host.execution_id

    @property
    def orchestration_name(self) -> str:
        return self._host.orchestration_name

    @property
    def orchestration_version(self) -> str:
        return self._host.orchestration_version

    def is_replaying(self) -> bool:
        """True while the code re-runs steps already in history (traces are silent then)."""
        return self._host.replaying

    # -- activities -------------------------------------------------------------------------------------------
    def schedule_activity(
        self, name: str, input: Any = None, session_id: str | None = None, ttl_ms: int | None = None
    ) -> ActivityTask:
        """An activity; `session_id` pins it to the worker owning that session, `ttl_ms` fails it if no worker
        claims it in time (also `.with_tag()`, `.with_ttl()`)."""
        _require_name(name, "activity name", MAX_NAME_CHARS)
        if session_id is not None:
            _require_session_id(session_id)
        task = ActivityTask(name, _encode(input, f"input of activity '{name}'"), session_id=session_id)
        return task.with_ttl(ttl_ms) if ttl_ms is not None else task

    def schedule_activity_on_session(self, name: str, input: Any, session_id: str) -> ActivityTask:
        _require_session_id(session_id)
        return self.schedule_activity(name, input, session_id=session_id)

    def schedule_activity_with_retry(self, name: str, input: Any, retry: dict[str, Any]) -> ActivityTask:
        task = self.schedule_activity(name, input)
        task.retry = _check_retry(retry)
        return task

    def schedule_activity_with_retry_on_session(
        self, name: str, input: Any, retry: dict[str, Any], session_id: str
    ) -> ActivityTask:
        task = self.schedule_activity_on_session(name, input, session_id)
        task.retry = _check_retry(retry)
        return task

    # -- timers and events ------------------------------------------------------------------------------------
    def schedule_timer(self, delay_ms: int) -> TimerTask:
        return TimerTask(check_delay_ms(delay_ms, "timer delay"))

    def wait_for_event(self, name: str) -> WaitEventTask:
        return WaitEventTask(_require_name(name, "event name"))

    def dequeue_event(self, queue_name: str) -> DequeueTask:
        return DequeueTask(_require_name(queue_name, "queue name"))

    def try_dequeue_event(self, queue_name: str) -> TryDequeueTask:
        """Yields the next message of the queue if one has arrived, else None, without waiting."""
        return TryDequeueTask(_require_name(queue_name, "queue name"))

    try_dequeue_event_typed = try_dequeue_event

    # -- orchestrations ---------------------------------------------------------------------------------------
    def schedule_sub_orchestration(self, name: str, input: Any = None) -> SubOrchestrationTask:
        return SubOrchestrationTask(
            _require_name(name, "orchestration name", MAX_NAME_CHARS), _encode(input, "sub-orchestration input")
        )

    def schedule_sub_orchestration_with_id(
        self, name: str, instance_id: str, input: Any = None
    ) -> SubOrchestrationTask:
        task = self.schedule_sub_orchestration(name, input)
        task.instance_id = _require_name(instance_id, "sub-orchestration instance id", MAX_INSTANCE_ID_CHARS)
        return task

    def schedule_sub_orchestration_versioned(
        self, name: str, version: str | None = None, input: Any = None
    ) -> SubOrchestrationTask:
        task = self.schedule_sub_orchestration(name, input)
        task.version = _require_version(version)
        return task

    def schedule_sub_orchestration_versioned_with_id(
        self, name: str, version: str | None, instance_id: str, input: Any = None
    ) -> SubOrchestrationTask:
        task = self.schedule_sub_orchestration_with_id(name, instance_id, input)
        task.version = _require_version(version)
        return task

    def start_orchestration(self, name: str, instance_id: str, input: Any = None) -> DetachedStartTask:
        return DetachedStartTask(
            _require_name(name, "orchestration name", MAX_NAME_CHARS),
            _require_name(instance_id, "instance id", MAX_INSTANCE_ID_CHARS),
            _encode(input, "orchestration input"),
        )

    def start_orchestration_versioned(
        self, name: str, version: str | None, instance_id: str, input: Any = None
    ) -> DetachedStartTask:
        task = self.start_orchestration(name, instance_id, input)
        task.version = _require_version(version)
        return task

    def continue_as_new(self, input: Any = None) -> ContinueAsNewTask:
        return ContinueAsNewTask(_encode(input, "continue_as_new input"))

    def continue_as_new_versioned(self, input: Any = None, version: str | None = None) -> ContinueAsNewTask:
        return ContinueAsNewTask(_encode(input, "continue_as_new input"), _require_version(version))

    # -- composition ------------------------------------------------------------------------------------------
    def all(self, tasks: list[Task]) -> AllTask:
        return AllTask(list(tasks))

    def race(self, *tasks: Task) -> RaceTask:
        if len(tasks) == 1 and isinstance(tasks[0], list | tuple):
            tasks = tuple(tasks[0])
        return RaceTask(list(tasks))

    # -- typed variants (duroxide-python 1.6): same behaviour; a str input is taken as JSON text as-is ----------
    def schedule_activity_typed(
        self, name: str, input: Any = None, session_id: str | None = None, ttl_ms: int | None = None
    ) -> ActivityTask:
        task = self.schedule_activity(name, None, session_id, ttl_ms)
        task.input = _typed_input(input, f"input of activity '{name}'")
        return task

    def schedule_activity_on_session_typed(self, name: str, input: Any, session_id: str) -> ActivityTask:
        _require_session_id(session_id)
        return self.schedule_activity_typed(name, input, session_id)

    def schedule_activity_with_retry_typed(self, name: str, input: Any, retry: dict[str, Any]) -> ActivityTask:
        task = self.schedule_activity_typed(name, input)
        task.retry = _check_retry(retry)
        return task

    def schedule_activity_with_retry_on_session_typed(
        self, name: str, input: Any, retry: dict[str, Any], session_id: str
    ) -> ActivityTask:
        task = self.schedule_activity_on_session_typed(name, input, session_id)
        task.retry = _check_retry(retry)
        return task

    def schedule_sub_orchestration_typed(self, name: str, input: Any = None) -> SubOrchestrationTask:
        task = self.schedule_sub_orchestration(name, None)
        task.input = _typed_input(input, "sub-orchestration input")
        return task

    def schedule_sub_orchestration_with_id_typed(
        self, name: str, instance_id: str, input: Any = None
    ) -> SubOrchestrationTask:
        task = self.schedule_sub_orchestration_with_id(name, instance_id, None)
        task.input = _typed_input(input, "sub-orchestration input")
        return task

    def start_orchestration_typed(self, name: str, instance_id: str, input: Any = None) -> DetachedStartTask:
        task = self.start_orchestration(name, instance_id, None)
        task.input = _typed_input(input, "orchestration input")
        return task

    def start_orchestration_versioned_typed(
        self, name: str, version: str | None, instance_id: str, input: Any = None
    ) -> DetachedStartTask:
        task = self.start_orchestration_typed(name, instance_id, input)
        task.version = _require_version(version)
        return task

    def continue_as_new_typed(self, input: Any = None) -> ContinueAsNewTask:
        return ContinueAsNewTask(_typed_input(input, "continue_as_new input"))

    def wait_for_event_typed(self, name: str) -> WaitEventTask:
        return self.wait_for_event(name)

    def dequeue_event_typed(self, queue_name: str) -> DequeueTask:
        return self.dequeue_event(queue_name)

    def all_typed(self, tasks: list[Task]) -> AllTask:
        """Like all(), with each {"ok": v} unwrapped to v; failures stay {"err": msg} (as duroxide does)."""
        return AllTask(list(tasks), unwrap_ok=True)

    def race_typed(self, *tasks: Task) -> RaceTask:
        return self.race(*tasks)

    # -- deterministic helpers --------------------------------------------------------------------------------
    def utc_now(self) -> UtcNowTask:
        return UtcNowTask()

    def new_guid(self) -> NewGuidTask:
        return NewGuidTask()

    # -- custom status ----------------------------------------------------------------------------------------
    def set_custom_status(self, status: str) -> None:
        if not isinstance(status, str):
            raise TypeError(f"custom status must be a str, got {type(status).__name__}")
        check_storable(status, "custom status")
        self._host.record_custom_status(status)

    def reset_custom_status(self) -> None:
        self._host.record_custom_status(None)

    def get_custom_status(self) -> str | None:
        return self._host.custom_status

    # -- KV ---------------------------------------------------------------------------------------------------
    def set_kv_value(self, key: str, value: Any) -> None:
        text = str(value)
        check_storable(text, f"KV value for key {str(key)[:80]!r}")
        self._host.record_kv_set(_kv_key(key), text)

    def get_kv_value(self, key: str) -> str | None:
        entry = self._host.kv.get(str(key))
        return entry[0] if entry else None

    def get_kv_all_values(self) -> dict[str, str]:
        return {k: v for k, (v, _) in self._host.kv.items()}

    def get_kv_all_keys(self) -> list[str]:
        return list(self._host.kv)

    def get_kv_length(self) -> int:
        return len(self._host.kv)

    def clear_kv_value(self, key: str) -> None:
        self._host.record_kv_clear(_kv_key(key))

    def clear_all_kv_values(self) -> None:
        self._host.record_kv_clear_all()

    def prune_kv_values_updated_before(self, cutoff_ms: int) -> int:
        stale = [k for k, (_, stamp) in self._host.kv.items() if stamp < cutoff_ms]
        for key in stale:
            self._host.record_kv_clear(key)
        return len(stale)

    def get_kv_value_from_instance(self, instance_id: str, key: str) -> ActivityTask:
        if not isinstance(instance_id, str) or not isinstance(key, str):
            raise TypeError("get_kv_value_from_instance takes a str instance id and a str key")
        check_storable(instance_id, "instance id")
        check_storable(key, "KV key")
        return ActivityTask(SYSCALL_PREFIX + "get_kv_value", dumps([instance_id, key]))

    # -- tracing (silent while replaying, so a trace appears once per real step) ------------------------------
    def _trace(self, level: int, message: str) -> None:
        if self._host.replaying:
            return
        log.log(
            level,
            message,
            extra={
                "instance_id": self.instance_id,
                "execution_id": self.execution_id,
                "orchestration_name": self.orchestration_name,
                "orchestration_version": self.orchestration_version,
            },
        )
