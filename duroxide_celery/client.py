"""Client: start, signal, cancel and inspect orchestrations (duroxide-python's `Client`).

Every call writes to the store first; the broker message after it is only a wake-up. A client in a process
without a runtime (a web app) takes a Celery app to send those wake-ups; without one, the recovery sweep
delivers the work a little later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery

from . import schedules as sched
from .errors import (
    CannotDeleteSubOrchestration,
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    OperationTimedOut,
    ScheduleNotFound,
)
from .observability.otel import Tracing
from .options import check_queue_prefix
from .providers import Provider
from .providers.dto import NewInstance
from .providers.endings import endings
from .providers.restart import current_execution, current_executions, replace_finished, restart_id, restart_instance
from .providers.rewind import rewind_instance
from .providers.schedules import ScheduleStore, for_store
from .providers.store import Store, now_ms
from .providers.waits import read_waits
from .registry import Registry
from .replay import events as ev
from .replay.events import dumps, loads
from .replay.limits import (
    MAX_INSTANCE_ID_CHARS,
    MAX_KV_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_VERSION_CHARS,
    check_int64,
    check_length,
    check_name,
    check_storable,
    check_timeout_ms,
)
from .replay.yieldables import check_flow_key
from .tasks.binding import runtime_of
from .tasks.publish import Publisher, live_publishers
from .tasks.queues import QueueNames
from .types import (
    TERMINAL_STATUSES,
    DeleteInstanceResult,
    Event,
    ExecutionInfo,
    InstanceFilter,
    InstanceInfo,
    InstanceTree,
    OrchestrationResult,
    PruneOptions,
    PruneResult,
    QueueDepths,
    ScheduleInfo,
    StartRequest,
    StartResult,
    SystemMetrics,
    SystemStats,
    Waits,
)

log = logging.getLogger(__name__)
INT32_MAX = 2**31 - 1

SUB_ORCHESTRATION_MARKER = "::sub::"
#: How many instances a bulk delete or prune handles when the filter sets no limit (duroxide's default).
DEFAULT_BULK_LIMIT = 1000


@dataclass(frozen=True)
class _CheckedStart:
    """One start of a bulk start, checked: its index in the call, arguments and encoded input."""

    index: int
    instance_id: str
    name: str
    payload: str
    version: str | None
    key: str | None


def _start_request(item: Any) -> StartRequest:
    if isinstance(item, StartRequest):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        return StartRequest(*item)
    raise TypeError(
        "a start must be a StartRequest or an (instance_id, orchestration_name[, input]) tuple, got "
        + (f"a tuple of {len(item)} items" if isinstance(item, tuple) else type(item).__name__)
    )


# Every Client call checks its arguments here, before any database access, with the store's limits
# (replay/limits.py): both stores then refuse (or accept) the same input with the same clear error, instead of
# PostgreSQL raising a raw database error on input SQLite would take.
def _management_id(instance_id: Any) -> str:
    """Ids given to reads and management calls name existing instances: any str the store could hold (an id that
    is too long simply names no instance)."""
    if not isinstance(instance_id, str):
        raise TypeError(f"instance id must be a str, got {type(instance_id).__name__}")
    return check_storable(instance_id, "instance id")


def _may_exist(instance_id: Any) -> bool:
    """Whether `instance_id` could name a stored instance. Reads answer for one the store cannot hold (a NUL, a lone
    surrogate) as for an unknown id, instead of raising; a too-long id simply names no instance (a
    sub-orchestration's id may exceed the limit on starts). A wrong type is still a TypeError."""
    try:
        _management_id(instance_id)
    except ValueError:
        return False
    return True


def _read_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return check_storable(value, what)


def _option(value: Any, cls: type, what: str) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise TypeError(f"{what} must be a {cls.__name__} or None, got {type(value).__name__}")
    return value


def _check_instance_id(instance_id: Any) -> str:
    if not isinstance(instance_id, str):
        raise TypeError(f"instance id must be a str, got {type(instance_id).__name__}")
    if not instance_id.strip():
        raise ValueError("instance id must not be empty")
    if SUB_ORCHESTRATION_MARKER in instance_id:
        raise ValueError(
            f"Invalid input: instance id {instance_id!r} contains the reserved sub-orchestration marker "
            f"'{SUB_ORCHESTRATION_MARKER}'"
        )
    check_storable(instance_id, "instance id")
    return check_length(instance_id, "instance id", MAX_INSTANCE_ID_CHARS)


#: What start_orchestration(..., if_exists=...) accepts.
IF_EXISTS = ("keep", "fail", "restart_if_finished")


def _check_if_exists(value: Any) -> str:
    if value not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {', '.join(map(repr, IF_EXISTS))}, got {value!r}")
    return str(value)


def _check_name(name: Any, what: str, max_chars: int | None = None) -> str:
    return check_name(name, what, max_chars)


def _encode(value: Any, what: str) -> str:
    try:
        return dumps(value)
    except TypeError as exc:
        raise TypeError(f"{what} {exc}") from None


class Client:
    """Talks to orchestrations through the store (and wakes workers through the broker)."""

    def __init__(self, provider: Provider, app: Celery | None = None, queue_prefix: str = "duroxide"):
        if not isinstance(provider, Provider):
            raise TypeError(f"Client needs a provider, got {provider!r}")
        check_queue_prefix(queue_prefix)
        self.provider = provider
        self._app = app
        self._tracing = Tracing()
        self._own_publisher: Publisher | None = None
        self._warned_no_broker = False
        if app is not None:
            # The app's own runtime knows its queue names; a prefix given here would only risk a mismatch.
            runtime = runtime_of(app)
            self._own_publisher = runtime.publisher if runtime is not None else Publisher(app, QueueNames(queue_prefix))

    @property
    def _store(self) -> Store:
        return self.provider.store

    @property
    def _schedules(self) -> ScheduleStore:
        return for_store(self.provider.store)

    def _publisher(self) -> Publisher | None:
        return self._own_publisher or live_publishers.get(self.provider.token)

    def _poke(self, instance_id: str, name: str | None = None) -> None:
        self._wake([(instance_id, name)])

    def _wake(self, targets: list[tuple[str, str | None]]) -> None:
        """Wake the turns of committed instances (id, orchestration name), in one broker batch."""
        if not targets:
            return
        first = targets[0][0]
        publisher = self._publisher()
        if publisher is None:
            # No worker reachable from here: the recovery sweep delivers it, seconds later. Say so once.
            if not self._warned_no_broker:
                self._warned_no_broker = True
                log.warning(
                    "Client for %s has no Celery app to wake workers: instance %s starts when the recovery sweep "
                    "finds it (pass Client(provider, app=your_celery_app) for an immediate start)",
                    self.provider,
                    first,
                )
            return
        try:
            publisher.poke(targets)
        except Exception:  # noqa: BLE001 - the rows are committed; the sweep heals a failed publish
            more = f" and {len(targets) - 1} more" if len(targets) > 1 else ""
            log.warning("could not publish wake-up for %s%s; the recovery sweep will deliver it", first, more)

    # -- starting -----------------------------------------------------------------------------------------------
    def start_orchestration(
        self,
        instance_id: str,
        orchestration_name: str,
        input: Any = None,
        *,
        if_exists: str = "keep",
        key: str | None = None,
    ) -> StartResult:
        """Start an instance. `if_exists` says what a start of an existing id does: "keep" (duroxide's rule:
        nothing, the first start wins), "fail" (raise InstanceAlreadyExists) or "restart_if_finished" (a Completed
        or Failed instance gets a fresh execution with this input; a running one is kept). Returns a StartResult
        saying which happened (true when this call started something). `key` (e.g. "tenant:42") is what the
        orchestration's start limit counts a new instance under (`Runtime.limit_starts`): a start beyond the limit
        waits in the store, Running with a waiting reason, until a slot frees."""
        return self._start(instance_id, orchestration_name, input, None, if_exists, key)

    start_orchestration_typed = start_orchestration

    def start_orchestration_versioned(
        self,
        instance_id: str,
        orchestration_name: str,
        input: Any,
        version: str,
        *,
        if_exists: str = "keep",
        key: str | None = None,
    ) -> StartResult:
        """Start an instance pinned to an exact registered version (`if_exists`, `key` as in start_orchestration)."""
        return self._start(instance_id, orchestration_name, input, version, if_exists, key)

    start_orchestration_versioned_typed = start_orchestration_versioned

    def _start(
        self, instance_id: str, name: str, input: Any, version: str | None, if_exists: str, key: str | None = None
    ) -> StartResult:
        _check_if_exists(if_exists)
        payload = self._checked_start(instance_id, name, input, version)
        return self._create(
            instance_id, name, payload, version, if_exists, check_flow_key(key) if key is not None else None
        )

    @staticmethod
    def _checked_start(instance_id: str, name: str, input: Any, version: str | None) -> str:
        """Check a start's arguments before anything is written; returns the encoded input."""
        if version is not None:
            _check_name(version, "version", MAX_VERSION_CHARS)
        _check_instance_id(instance_id)
        _check_name(name, "orchestration name", MAX_NAME_CHARS)
        return _encode(input, "orchestration input")

    @staticmethod
    def _checked_starts(starts: Any) -> list[_CheckedStart]:
        """Check every start of a bulk start as start_orchestration checks one (the same errors, prefixed with
        `starts[i]: `), and that no id comes twice; nothing is written before all pass."""
        if isinstance(starts, str | bytes | Mapping | StartRequest) or not isinstance(starts, Iterable):
            raise TypeError(f"starts must be an iterable of StartRequest or tuples, got {type(starts).__name__}")
        checked: list[_CheckedStart] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(starts):
            try:
                request = _start_request(item)
                payload = Client._checked_start(
                    request.instance_id, request.orchestration_name, request.input, request.version
                )
                key = check_flow_key(request.key) if request.key is not None else None
            except (TypeError, ValueError) as exc:
                raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"starts[{index}]: {exc}") from None
            first = seen.get(request.instance_id)
            if first is not None:
                raise ValueError(
                    f"starts[{index}]: instance id {request.instance_id!r} is also starts[{first}]; "
                    "an id can start only once per call"
                )
            seen[request.instance_id] = index
            checked.append(
                _CheckedStart(index, request.instance_id, request.orchestration_name, payload, request.version, key)
            )
        return checked

    def _create(
        self,
        instance_id: str,
        name: str,
        payload: str,
        version: str | None,
        if_exists: str = "keep",
        key: str | None = None,
    ) -> StartResult:
        """Write a checked start and wake a worker, inside its start span; an existing id is handled as
        `if_exists` says. Under a start limit a new instance is held in the same transaction, and only what the
        limit admits is woken."""
        woken: list[tuple[str, str]] = []
        with self._tracing.start(instance_id, name, version) as traced:
            with self._store.write() as conn:
                if created := self._store.create_instance(
                    conn, instance_id, name, payload, version, trace_context=traced
                ):
                    outcome, execution_id = "created", 1
                    woken = self._store.hold_start(conn, instance_id, name, key, created)
                elif if_exists == "fail":
                    raise InstanceAlreadyExists(f"Instance {instance_id} already exists")
                elif if_exists == "restart_if_finished":
                    outcome, execution_id = replace_finished(conn, instance_id, name, payload, version)
                else:
                    outcome, execution_id = "kept", current_execution(conn, instance_id)
            if outcome == "created":
                for woken_id, woken_name in woken:
                    self._poke(woken_id, woken_name)
            elif outcome != "kept":
                self._poke(instance_id, name)
            else:
                log.info("instance %s already exists; start ignored (the first start wins)", instance_id)
        return StartResult(instance_id, outcome, execution_id)

    def start_orchestrations(
        self, starts: Iterable[StartRequest | tuple[Any, ...]], *, if_exists: str = "keep"
    ) -> list[StartResult]:
        """Start many instances at once: each a StartRequest or an (instance_id, orchestration_name[, input])
        tuple, handled as start_orchestration handles it (`if_exists` applies to each). Every item is checked
        before anything is written (a bad one raises naming its index, `starts[i]`, and nothing is written); all
        are written in one transaction and woken in one broker batch. Returns their StartResults in order."""
        _check_if_exists(if_exists)
        checked = self._checked_starts(starts)
        return self._create_many(checked, if_exists) if checked else []

    def _create_many(self, starts: list[_CheckedStart], if_exists: str) -> list[StartResult]:
        """Write checked starts of distinct ids in one transaction (start limits applied), then wake them; an
        existing id is handled as `if_exists` says ("fail": nothing is written)."""
        outcomes: dict[str, tuple[str, int]] = {}
        with self._tracing.starts([(s.instance_id, s.name, s.version) for s in starts]) as contexts:
            with self._store.write() as conn:
                new = [
                    NewInstance(s.instance_id, s.name, s.payload, s.version, trace_context=context)
                    for s, context in zip(starts, contexts, strict=True)
                ]
                created = self._store.create_instances(conn, new)
                existing = [s for s in starts if s.instance_id not in created]
                if existing and if_exists == "fail":
                    taken = existing[0]
                    raise InstanceAlreadyExists(f"starts[{taken.index}]: Instance {taken.instance_id} already exists")
                if if_exists == "restart_if_finished":
                    for s in existing:
                        outcomes[s.instance_id] = replace_finished(conn, s.instance_id, s.name, s.payload, s.version)
                else:
                    executions = current_executions(conn, [s.instance_id for s in existing])
                    outcomes.update({s.instance_id: ("kept", executions.get(s.instance_id, 0)) for s in existing})
                woken: list[tuple[str, str | None]] = list(
                    self._store.hold_starts(
                        conn, [(s.instance_id, s.name, s.key) for s in starts if s.instance_id in created]
                    )
                )
            woken += [(s.instance_id, s.name) for s in existing if outcomes[s.instance_id][0] != "kept"]
            self._wake(woken)
        kept = sum(1 for outcome, _ in outcomes.values() if outcome == "kept")
        if kept:
            log.info(
                "%d of %d starts named existing instances; those were ignored (the first start wins)", kept, len(starts)
            )
        return [StartResult(s.instance_id, *outcomes.get(s.instance_id, ("created", 1))) for s in starts]

    # -- rewind and restart (issue 16) ------------------------------------------------------------------------
    def rewind(self, instance_id: str, reason: str = "", *, registry: Registry | None = None) -> list[str]:
        """Resume a Failed instance from its failed step with the code now deployed (Azure's rewind).

        The failure is kept in history and recorded as rewound (one OrchestrationRewound event; replay sets the
        rewound events aside), the failed activity runs again under the same scheduled event id (its retry
        policy's attempt count is not reset: the last attempt runs once more), a failed sub-orchestration is
        rewound with its parent, and an orchestration that failed by its own exception (or nondeterminism, or
        poison) re-runs its last turn. All in one transaction; workers are woken after it commits.

        With `registry` (or the Runtime of this Client's app), the rewound history is first replayed here with
        that code, and a history it no longer reproduces is refused; without one, the next turn replays it and
        fails the instance again with the nondeterminism error. Returns the ids rewound: this instance first, then
        the sub-orchestrations rewound with it. Raises InstanceNotFound, or RewindRefused for an instance that is
        not Failed, was canceled, or would not replay (nothing is written then)."""
        _management_id(instance_id)
        text = _read_text(reason, "rewind reason")
        code = registry if registry is not None else (runtime_of(self._app) if self._app is not None else None)
        resolve = getattr(code, "resolve_orchestration", None)
        if code is not None and not callable(resolve):
            raise TypeError(f"registry must be a Registry or Runtime, got {type(code).__name__}")
        outcome = rewind_instance(self._store, instance_id, text, resolve)
        log.info("rewound %s", ", ".join(i for i, _ in outcome.rewound))
        publisher = self._publisher()
        if publisher is not None:
            try:
                publisher.activities(outcome.activities)
                if outcome.earliest_timer is not None:
                    publisher.timers_created(outcome.earliest_timer)
            except Exception:  # noqa: BLE001 - committed; the recovery sweep republishes the work items
                log.warning("could not publish the rerun work of %s; the recovery sweep will", instance_id)
        for rewound_id, name in outcome.rewound:
            self._poke(rewound_id, name)
        return [rewound_id for rewound_id, _ in outcome.rewound]

    def restart(self, instance_id: str, new_instance_id: str | None = None, *, version: str | None = None) -> str:
        """Start a new instance with a finished (Completed or Failed) instance's orchestration and input, pinned
        to the version it ran (or `version`), linked to it (InstanceInfo.restarted_from); returns the new id.

        The default new id is `<instance_id>:restart-<n>`, n counting this instance's restarts from 1. Raises
        InstanceNotFound, InstanceStillRunning for a running instance, InstanceAlreadyExists when an explicit
        `new_instance_id` exists."""
        _management_id(instance_id)
        if version is not None:
            _check_name(version, "version", MAX_VERSION_CHARS)
        if new_instance_id is not None:
            _check_instance_id(new_instance_id)
        else:
            # The longest default id (n up to 6 digits) must itself be a valid id.
            try:
                _check_instance_id(restart_id(instance_id, 999_999))
            except ValueError as exc:
                raise ValueError(f"{exc}; pass new_instance_id to restart {instance_id!r}") from None
        new_id, name = restart_instance(self._store, instance_id, new_instance_id, version)
        self._poke(new_id, name)
        return new_id

    # -- schedules (README "Schedules"; the rules are in schedules.py) -----------------------------------------
    def create_schedule(
        self,
        schedule_id: str,
        orchestration: str,
        input: Any = None,
        *,
        cron: str | None = None,
        every_ms: int | None = None,
        timezone: str = "UTC",
        overlap: str = "skip",
        catchup_window_ms: int = sched.DEFAULT_CATCHUP_WINDOW_MS,
        jitter_ms: int = 0,
        start_at: datetime | int | None = None,
        end_at: datetime | int | None = None,
        paused: bool = False,
        version: str | None = None,
    ) -> ScheduleInfo:
        """Create a durable schedule: each tick of `cron` (5 fields, in `timezone`) or of `every_ms` starts
        `orchestration` with `input` as instance `<schedule_id>@<tick UTC ISO-8601>`, once, whatever the number of
        beats. `overlap` says what a tick does while the previous run is still running (skip, buffer_one,
        allow_all, cancel_previous); ticks later than `catchup_window_ms` (downtime) are skipped and recorded.
        `start_at`/`end_at`: aware datetimes or epoch ms, both inclusive. Every argument is checked here; a taken
        id raises ScheduleAlreadyExists. Returns the new schedule's ScheduleInfo (its next fire times)."""
        if not isinstance(paused, bool):
            raise TypeError(f"paused must be a bool, got {type(paused).__name__}")
        spec = sched.make_spec(
            schedule_id,
            orchestration,
            _encode(input, "schedule input"),
            cron=cron,
            every_ms=every_ms,
            timezone=timezone,
            overlap=overlap,
            catchup_window_ms=catchup_window_ms,
            jitter_ms=jitter_ms,
            start_at=start_at,
            end_at=end_at,
            version=version,
        )
        if spec.end_at is not None and sched.Cadence(spec).after(now_ms()) is None:
            raise ValueError(f"end_at ({sched.format_tick(spec.end_at)}) leaves the schedule no tick after now")
        self._schedules.create(spec, paused)
        self._wake_timer_loop()
        return self._require_schedule(schedule_id)

    def update_schedule(self, schedule_id: str, **changes: Any) -> ScheduleInfo:
        """Change some of a schedule's fields (create_schedule's keyword names, and `orchestration`, `input`);
        the result is checked as a whole. Giving `cron` drops `every_ms`, and `every_ms` drops `cron` (and its
        timezone). A new cadence (cron, every_ms, timezone, jitter_ms, start_at, end_at) plans the next tick from
        now. Returns the ScheduleInfo."""
        _read_text(schedule_id, "schedule id")
        allowed = set(sched.UPDATABLE_FIELDS)
        unknown = sorted(set(changes) - allowed)
        if unknown:
            hint = " (use pause_schedule/resume_schedule)" if "paused" in unknown else ""
            raise TypeError(f"update_schedule: unknown field(s) {', '.join(unknown)}{hint}; it takes {sorted(allowed)}")
        if not changes:
            raise ValueError("update_schedule needs at least one field to change")
        if "input" in changes:
            changes["input"] = _encode(changes["input"], "schedule input")

        def merge(old: sched.ScheduleSpec) -> sched.ScheduleSpec:
            fields = sched.spec_fields(old)
            if changes.get("cron") is not None and "every_ms" not in changes:
                fields["every_ms"] = None
            if changes.get("every_ms") is not None and "cron" not in changes:
                fields["cron"] = None
                if "timezone" not in changes:
                    fields["timezone"] = "UTC"  # an interval counts real time
            fields.update(changes)
            return sched.make_spec(old.schedule_id, **fields)

        self._schedules.update(schedule_id, merge)
        self._wake_timer_loop()
        return self._require_schedule(schedule_id)

    def pause_schedule(self, schedule_id: str) -> None:
        """Stop a schedule's ticks until resume_schedule (no-op if paused); ScheduleNotFound if unknown."""
        self._schedules.set_paused(_read_text(schedule_id, "schedule id"), True)

    def resume_schedule(self, schedule_id: str) -> None:
        """Resume a paused schedule from its next tick after now: the ticks of the pause are not caught up."""
        self._schedules.set_paused(_read_text(schedule_id, "schedule id"), False)
        self._wake_timer_loop()

    def trigger_schedule(self, schedule_id: str, overlap: str | None = None) -> str | None:
        """Run the schedule now, outside its cadence (its next tick does not move; paused schedules too), as
        instance `<schedule_id>@<now, UTC ISO-8601 with ms>`. The schedule's overlap policy applies, as in
        Temporal's trigger, unless `overlap` names another (`"allow_all"`: start whatever runs). Returns the
        started instance id, or None when the policy skipped or buffered the run (get_schedule says which)."""
        _read_text(schedule_id, "schedule id")
        if overlap is not None and overlap not in sched.OVERLAP_POLICIES:
            raise ValueError(f"overlap must be one of {', '.join(sched.OVERLAP_POLICIES)} or None, got {overlap!r}")
        started, pokes = self._schedules.trigger(schedule_id, overlap)
        for instance_id, name in pokes:
            self._poke(instance_id, name)
        return started

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule and its run records; the instances it started stay. ScheduleNotFound if unknown."""
        self._schedules.delete(_read_text(schedule_id, "schedule id"))

    def get_schedule(self, schedule_id: str) -> ScheduleInfo | None:
        """A schedule's definition, state, next fire times and latest run records (with the instances' statuses
        now), or None if there is no such schedule."""
        return self._schedules.get(_read_text(schedule_id, "schedule id"))

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by id (next_fire_times holds the next tick only; recent_runs is empty)."""
        return self._schedules.list()

    def _require_schedule(self, schedule_id: str) -> ScheduleInfo:
        info = self._schedules.get(schedule_id)
        if info is None:  # deleted meanwhile by someone else
            raise ScheduleNotFound(f"schedule {schedule_id!r} not found")
        return info

    def _wake_timer_loop(self) -> None:
        """An embedded runtime in this process looks at the schedules now rather than at its next poll."""
        publisher = self._publisher()
        if publisher is not None and publisher.on_timer is not None:
            publisher.on_timer(0)

    # -- signals ------------------------------------------------------------------------------------------------
    def raise_event(self, instance_id: str, event_name: str, data: Any = None) -> None:
        """Deliver a positional event to the instance's next matching wait_for_event. Events for unknown or
        finished instances are dropped (logged), never queued where they could block anything."""
        _check_name(event_name, "event name")
        self._signal(instance_id, ev.MSG_EXTERNAL_RAISED, {"name": event_name, "data": _encode(data, "event data")})

    raise_event_typed = raise_event

    def enqueue_event(self, instance_id: str, queue_name: str, data: Any = None) -> None:
        """Append a message to the instance's FIFO queue `queue_name` (see dequeue_event)."""
        _check_name(queue_name, "queue name")
        self._signal(instance_id, ev.MSG_QUEUE_MESSAGE, {"name": queue_name, "data": _encode(data, "event data")})

    enqueue_event_typed = enqueue_event

    def cancel_instance(self, instance_id: str, reason: str | None = None) -> None:
        """Cancel a running instance (and its sub-orchestrations). No-op for unknown or finished instances."""
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"cancel reason must be a str or None, got {type(reason).__name__}")
        text = "" if reason is None else reason
        # The reason becomes the instance's error text ("canceled: <reason>"), stored as-is.
        self._signal(instance_id, ev.MSG_CANCEL, {"reason": check_storable(text, "cancel reason")})

    def _signal(self, instance_id: str, kind: str, payload: dict[str, Any]) -> None:
        if not isinstance(instance_id, str):
            raise TypeError(f"instance id must be a str, got {type(instance_id).__name__}")
        if not instance_id:
            raise ValueError(f"instance id must be a non-empty string, got {instance_id!r}")
        check_storable(instance_id, "instance id")
        name = self._store.enqueue_if_running(instance_id, kind, payload)
        if name is not None:
            self._poke(instance_id, name)
        else:
            log.warning("%s for %s dropped: no such running instance", kind, instance_id)

    # -- status -------------------------------------------------------------------------------------------------
    def get_status(self, instance_id: str) -> OrchestrationResult:
        row = self._store.get_instance(instance_id) if _may_exist(instance_id) else None
        if row is None:
            return OrchestrationResult(status="NotFound")
        return OrchestrationResult(
            status=row["status"],
            output=loads(row["output"]) if row["status"] == "Completed" else None,
            error=row["error"],
            custom_status=row["custom_status"],
            custom_status_version=row["custom_status_version"],
            waiting_reason=_waiting_reason(row),
        )

    def wait_for_orchestration(self, instance_id: str, timeout_ms: int = 30_000) -> OrchestrationResult:
        """Block until the instance is Completed or Failed; raises OperationTimedOut (a TimeoutError)."""
        _may_exist(instance_id)  # a wrong type fails here; an id that cannot exist waits as an unknown one
        return self._poll(instance_id, timeout_ms, lambda r: r.status in TERMINAL_STATUSES)

    def wait_for_orchestration_typed(self, instance_id: str, timeout_ms: int = 30_000) -> Any:
        result = self.wait_for_orchestration(instance_id, timeout_ms)
        if result.status == "Failed":
            raise Exception(result.error)
        return result.output

    def wait_for_status_change(
        self, instance_id: str, last_seen_version: int = 0, poll_interval_ms: int = 200, timeout_ms: int = 30_000
    ) -> OrchestrationResult:
        """Return once custom_status_version exceeds `last_seen_version` or the instance has ended."""
        _may_exist(instance_id)  # a wrong type fails here; an id that cannot exist waits as an unknown one
        check_int64(last_seen_version, "last_seen_version")
        interval_ms = check_timeout_ms(poll_interval_ms, "poll_interval_ms")
        return self._poll(
            instance_id,
            timeout_ms,
            lambda r: r.custom_status_version > last_seen_version or r.status in TERMINAL_STATUSES,
            max_interval_s=max(interval_ms, 1) / 1000,
        )

    def _poll(self, instance_id: str, timeout_ms: int, done: Any, max_interval_s: float = 0.1) -> OrchestrationResult:
        """Read the instance until `done`, backing off from 5 ms to `max_interval_s`; a turn that ends it (here,
        or elsewhere on PostgreSQL) cuts the sleep short (providers/endings.py)."""
        deadline = time.monotonic() + check_timeout_ms(timeout_ms) / 1000
        interval = 0.005
        self._store.watch_endings()
        woken = endings.watch(instance_id)
        try:
            while True:
                woken.clear()  # before the read: an end committed after it sets it again
                result = self.get_status(instance_id)
                if done(result):
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OperationTimedOut("Operation timed out")
                woken.wait(min(interval, remaining))
                interval = min(interval * 2, max_interval_s)
        finally:
            endings.unwatch(instance_id, woken)

    # -- KV -----------------------------------------------------------------------------------------------------
    def get_kv_value(self, instance_id: str, key: str) -> str | None:
        possible = _may_exist(instance_id)
        _read_text(key, "KV key")
        if not possible or len(key) > MAX_KV_KEY_CHARS:
            return None  # no such key can exist
        return self._store.get_kv(instance_id, key)

    def get_kv_value_typed(self, instance_id: str, key: str) -> Any:
        value = self.get_kv_value(instance_id, key)
        return None if value is None else json.loads(value)

    def wait_for_kv_value(self, instance_id: str, key: str, timeout_ms: int = 30_000) -> str:
        _may_exist(instance_id)  # a wrong type fails here; an id that cannot exist waits as an unknown one
        _read_text(key, "KV key")
        deadline = time.monotonic() + check_timeout_ms(timeout_ms) / 1000
        interval = 0.005
        while True:
            value = self.get_kv_value(instance_id, key)
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                raise OperationTimedOut(f"Operation timed out waiting for KV key {key!r} of {instance_id}")
            time.sleep(interval)
            interval = min(interval * 2, 0.1)

    def wait_for_kv_value_typed(self, instance_id: str, key: str, timeout_ms: int = 30_000) -> Any:
        return json.loads(self.wait_for_kv_value(instance_id, key, timeout_ms))

    # -- inspection ---------------------------------------------------------------------------------------------
    def get_instance_info(self, instance_id: str, include_waits: bool = True) -> InstanceInfo | None:
        """The instance's row, with what it waits on (`waits`, see get_waits) unless `include_waits` is False
        (that read costs a look at its history and pending rows); None for an unknown id."""
        row = self._store.get_instance(instance_id) if _may_exist(instance_id) else None
        if row is None:
            return None
        waits = read_waits(self._store, instance_id) if include_waits else None
        return InstanceInfo(
            instance_id=row["instance_id"],
            orchestration_name=row["orchestration_name"],
            orchestration_version=row["orchestration_version"] or row["requested_version"],
            current_execution_id=row["current_execution_id"],
            status=row["status"],
            output=loads(row["output"]) if row["status"] == "Completed" else None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            parent_instance_id=row["parent_instance_id"],
            waiting_reason=_waiting_reason(row),
            waits=waits,
            restarted_from=row.get("restarted_from"),
        )

    def get_waits(self, instance_id: str) -> Waits:
        """What the instance waits on: pending activities (who holds them, since when), timers, awaited events
        and queues, running children, and a backoff for a handler no worker has registered. A finished instance
        waits on nothing. Raises InstanceNotFound for an unknown id."""
        waits = read_waits(self._store, instance_id) if _may_exist(instance_id) else None
        if waits is None:
            raise InstanceNotFound(f"Instance {instance_id} not found")
        return waits

    def list_executions(self, instance_id: str) -> list[int]:
        if not _may_exist(instance_id):
            return []
        return [r["execution_id"] for r in self._store.list_executions(instance_id)]

    def get_execution_info(self, instance_id: str, execution_id: int) -> ExecutionInfo | None:
        possible = _may_exist(instance_id)
        check_int64(execution_id, "execution_id")
        if not possible:
            return None
        for r in self._store.list_executions(instance_id):
            if r["execution_id"] == execution_id:
                return ExecutionInfo(
                    execution_id=r["execution_id"],
                    status=r["status"],
                    output=loads(r["output"]),
                    started_at=r["started_at"],
                    completed_at=r["completed_at"],
                    event_count=r["event_count"],
                )
        return None

    def read_execution_history(self, instance_id: str, execution_id: int) -> list[Event]:
        possible = _may_exist(instance_id)
        check_int64(execution_id, "execution_id")
        if not possible or not 0 <= execution_id <= INT32_MAX:
            return []  # execution ids are stored as 32-bit integers: there is no such execution
        return [Event.from_history(e) for e in self._store.read_history(instance_id, execution_id)]

    def list_all_instances(self) -> list[str]:
        return self._store.list_instances()

    def list_instances_by_status(self, status: str) -> list[str]:
        _read_text(status, "status")
        return self._store.list_instances(status)

    # -- management: trees, deletion, pruning, metrics (semantics.md 2.21) ---------------------------------------
    def get_instance_tree(self, instance_id: str) -> InstanceTree:
        """The instance and all its descendants: sub-orchestrations, with generated or explicit ids, and theirs.
        Detached starts (ctx.start_orchestration) have no parent, so they are not part of it. Raises
        InstanceNotFound for an unknown id (duroxide returns a one-element tree for any id)."""
        ids = self._store.instance_tree(instance_id) if _may_exist(instance_id) else None
        if ids is None:
            raise InstanceNotFound(f"Instance {instance_id} not found")
        return InstanceTree(root_id=instance_id, all_ids=ids, size=len(ids))

    def delete_instance(self, instance_id: str, force: bool = False) -> DeleteInstanceResult:
        """Delete a root instance and its whole sub-orchestration tree, in one transaction: instances,
        executions, history, pending inbox messages, activity work items, timers and KV. Frees the ids for reuse.

        Raises InstanceNotFound for an unknown id, CannotDeleteSubOrchestration for a sub-orchestration (delete
        its root: a parent must never wait on a child that vanished), and InstanceStillRunning when any member
        of the tree is running, unless `force=True`; all three are RuntimeErrors, as in duroxide.

        Force-deleting a running instance removes its rows, and with them its pending work: queued activities,
        timers and messages never run. Unlike duroxide, whose force delete leaves its tasks running unaware, the
        instance stops here: a turn in progress either committed first (and its rows go with the rest) or fails its
        lease check and commits nothing; an activity already executing sees ctx.is_cancelled() turn True within
        about half a second (its row is gone), and whatever it returns is dropped. It is not interrupted, so side
        effects it performs before it checks still happen."""
        if not _may_exist(instance_id):
            raise InstanceNotFound(f"Instance {instance_id!r} not found")
        outcome = self._store.delete_tree(instance_id, force=bool(force))
        if outcome.status == "not_found":
            raise InstanceNotFound(f"Instance {instance_id} not found")
        if outcome.status == "sub_orchestration":
            raise CannotDeleteSubOrchestration(
                f"Cannot delete sub-orchestration {instance_id} directly. Delete the root orchestration instead."
            )
        if outcome.status == "running":
            running = outcome.running_ids
            which = "is still running" if running == [instance_id] else f"has running instances {running}"
            raise InstanceStillRunning(
                f"Instance {instance_id} {which}. Use force=True to delete it anyway, or cancel it first."
            )
        log.info("deleted instance %s (%d instances in its tree)", instance_id, len(outcome.deleted_ids))
        return _delete_result(outcome.counts)

    def delete_instance_bulk(self, filter: InstanceFilter | None = None) -> DeleteInstanceResult:
        """Delete finished (Completed or Failed) root instances matching the filter, oldest first, each with its
        tree, each tree in its own transaction. Sub-orchestration ids, running instances and trees with a running
        member are skipped, never an error. Filters are ANDed; the limit defaults to 1000 roots."""
        flt = _option(filter, InstanceFilter, "filter")
        limit = DEFAULT_BULK_LIMIT if flt.limit is None else flt.limit
        totals = dict.fromkeys(("instances", "executions", "events", "queue_messages"), 0)
        if limit == 0:
            return _delete_result(totals)
        roots = self._store.select_instances(
            terminal_roots_only=True,
            instance_ids=flt.instance_ids,
            completed_before=flt.completed_before,
            limit=limit,
        )
        for root in roots:
            outcome = self._store.delete_tree(root, force=False)  # re-checked in its transaction
            for key in totals:
                totals[key] += outcome.counts.get(key, 0)
        return _delete_result(totals)

    def prune_executions(self, instance_id: str, options: PruneOptions | None = None) -> PruneResult:
        """Delete old executions (left by continue-as-new) of an instance, with their history, to bound storage.
        The current execution is never pruned, even with keep_last=0; KV state is untouched. Raises
        InstanceNotFound for an unknown id."""
        possible = _may_exist(instance_id)
        opts = _option(options, PruneOptions, "options")
        deleted = (
            self._store.prune_executions(
                instance_id, keep_last=opts.keep_last or 1, completed_before=opts.completed_before
            )
            if possible
            else None
        )
        if deleted is None:
            raise InstanceNotFound(f"Instance {instance_id} not found")
        return PruneResult(instances_processed=1, executions_deleted=deleted[0], events_deleted=deleted[1])

    def prune_executions_bulk(
        self, filter: InstanceFilter | None = None, options: PruneOptions | None = None
    ) -> PruneResult:
        """prune_executions over every instance matching the filter (running ones too: a long-lived
        continue-as-new loop is what needs pruning), oldest first, at most `limit` (default 1000)."""
        flt = _option(filter, InstanceFilter, "filter")
        opts = _option(options, PruneOptions, "options")
        limit = DEFAULT_BULK_LIMIT if flt.limit is None else flt.limit
        processed = executions_deleted = events_deleted = 0
        if limit == 0:
            return PruneResult()
        for instance_id in self._store.select_instances(
            terminal_roots_only=False,
            instance_ids=flt.instance_ids,
            completed_before=flt.completed_before,
            limit=limit,
        ):
            deleted = self._store.prune_executions(
                instance_id, keep_last=opts.keep_last or 1, completed_before=opts.completed_before
            )
            if deleted is None:
                continue  # deleted meanwhile
            processed += 1
            executions_deleted += deleted[0]
            events_deleted += deleted[1]
        return PruneResult(processed, executions_deleted, events_deleted)

    def get_system_metrics(self) -> SystemMetrics:
        """Instance counts by status, and execution and history-event totals, over the whole store."""
        return SystemMetrics(**self._store.system_metrics())

    def get_queue_depths(self) -> QueueDepths:
        """Backlog right now: inbox messages waiting for a free instance, activities no worker holds, timers."""
        return QueueDepths(**self._store.queue_depths())

    def get_orchestration_stats(self, instance_id: str) -> SystemStats | None:
        """Size of one instance: its current execution's history, pending messages and KV; None if unknown."""
        stats = self._store.orchestration_stats(instance_id) if _may_exist(instance_id) else None
        return None if stats is None else SystemStats(**stats)


def _delete_result(counts: dict[str, int]) -> DeleteInstanceResult:
    return DeleteInstanceResult(
        instances_deleted=counts.get("instances", 0),
        executions_deleted=counts.get("executions", 0),
        events_deleted=counts.get("events", 0),
        queue_messages_deleted=counts.get("queue_messages", 0),
    )


def _waiting_reason(row: dict[str, Any]) -> str | None:
    """Why a running instance waits (a missing handler); a finished one waits for nothing."""
    return row.get("waiting_reason") if row["status"] == "Running" else None
