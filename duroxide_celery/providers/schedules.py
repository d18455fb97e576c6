"""Durable schedules in the store: every statement on dx_schedules and dx_schedule_runs, and the firing of due
ticks (called by the timer loop through `tasks/recovery.fire_due_schedules`).

A round takes each due schedule in its own transaction: the row is locked (PostgreSQL: FOR UPDATE SKIP LOCKED, so
two beats split the due schedules; SQLite: the one writer) and its due time checked again, then the plan of
`duroxide_celery.schedules.plan_round` is applied in that same transaction: the instances created through
`Store.create_instance` (create-if-absent, on deterministic ids), the run records written, the next tick stored.
Two beats, or a beat restarted mid-round, therefore start each tick's instance once. The wake-ups are returned to
the caller, to publish after the commit.

Cost when idle: one indexed `min(due_at)` read, at most once a second per process (`POLL_S`) unless the earliest
known due time has come, or a schedule was written through this process's store.

Alternatives considered: Celery beat entries (beat keeps no durable state, and every beat would send its own);
a durable timer row per tick in dx_timers (timers belong to an instance's history, a schedule has none); a
conditional UPDATE of next_fire_at as the claim (it would need the plan decided before the claim, while the
overlap policy needs the previous run's status read in the same transaction: the row lock gives both).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from .. import schedules as rules
from ..errors import ScheduleAlreadyExists, ScheduleNotFound
from ..replay import events as ev
from ..replay.events import loads
from ..schedules import Cadence, Plan, ScheduleSpec
from ..types import TERMINAL_STATUSES, ScheduleInfo, ScheduleRun
from .schema import instances, schedule_runs, schedules
from .store import Store, now_ms

log = logging.getLogger(__name__)

#: Run records kept per schedule (older ones are deleted as new ones come).
KEEP_RUNS = 50
#: How often (seconds) the timer loop reads the earliest due time when it knows of nothing due sooner: a schedule
#: created or resumed by another process fires at most this late.
POLL_S = 1.0
#: Due schedules taken per query, and queries per call (a catch-up that needs more continues at the next call).
BATCH = 100
MAX_BATCHES = 10
#: A schedule whose round fails (e.g. its time zone vanished from the system's database) is looked at again after.
FAILED_ROUND_RETRY_MS = 60_000

#: (instance id, orchestration name) pairs to wake after the commit.
Pokes = list[tuple[str, str | None]]


def _spec(row: Any) -> ScheduleSpec:
    return ScheduleSpec(
        schedule_id=row.schedule_id,
        orchestration=row.orchestration_name,
        input=row.input,
        cron=row.cron,
        every_ms=row.every_ms,
        timezone=row.timezone,
        overlap=row.overlap,
        catchup_window_ms=row.catchup_window_ms,
        jitter_ms=row.jitter_ms,
        start_at=row.start_at,
        end_at=row.end_at,
        version=row.orchestration_version,
    )


def _spec_columns(spec: ScheduleSpec) -> dict[str, Any]:
    return {
        "orchestration_name": spec.orchestration,
        "orchestration_version": spec.version,
        "input": spec.input,
        "cron": spec.cron,
        "every_ms": spec.every_ms,
        "timezone": spec.timezone,
        "overlap": spec.overlap,
        "catchup_window_ms": spec.catchup_window_ms,
        "jitter_ms": spec.jitter_ms,
        "start_at": spec.start_at,
        "end_at": spec.end_at,
    }


def _due_at(spec: ScheduleSpec, next_fire_at: int | None, buffered: int | None, paused: bool, now: int) -> int | None:
    if paused:
        return None
    candidates = [] if next_fire_at is None else [Cadence(spec).due(next_fire_at)]
    if buffered is not None:
        candidates.append(now + rules.BUFFER_RECHECK_MS)
    return min(candidates, default=None)


class ScheduleStore:
    """Named queries for schedules over a Store (its engine and transactions). One per Store: `for_store`."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        #: time.monotonic() before which the timer loop need not read the due index (unless `_known_due` came).
        self._look_after = 0.0
        self._known_due: int | None = None
        #: Bumped by every write through this process, so a round that overlapped one does not cache past it.
        self._writes = 0

    def _changed(self) -> None:
        """A schedule was written through this process: the next timer-loop round reads the due index."""
        with self._lock:
            self._look_after = 0.0
            self._writes += 1

    def _locked(self, conn: Connection, schedule_id: str, *, skip_locked: bool = False) -> Any:
        # PostgreSQL locks the row; SQLite renders no FOR UPDATE: its write transaction excludes every other writer.
        query = select(schedules).where(schedules.c.schedule_id == schedule_id)
        return conn.execute(query.with_for_update(skip_locked=skip_locked)).first()

    # -- definitions --------------------------------------------------------------------------------------------
    def create(self, spec: ScheduleSpec, paused: bool, now: int | None = None) -> None:
        """Insert a schedule whose first tick is the first one after now; ScheduleAlreadyExists if the id is taken."""
        now = now_ms() if now is None else now
        next_fire_at = Cadence(spec).after(now)
        values = {
            "schedule_id": spec.schedule_id,
            **_spec_columns(spec),
            "paused": bool(paused),
            "next_fire_at": next_fire_at,
            "due_at": _due_at(spec, next_fire_at, None, paused, now),
            "skipped_count": 0,
            "created_at": now,
            "updated_at": now,
        }
        exists = ScheduleAlreadyExists(f"schedule {spec.schedule_id!r} already exists (delete it first)")
        try:
            with self.store.write() as conn:
                if self._locked(conn, spec.schedule_id) is not None:
                    raise exists
                conn.execute(insert(schedules).values(values))
        except IntegrityError:  # created concurrently since the check
            raise exists from None
        self._changed()

    def update(self, schedule_id: str, merge: Callable[[ScheduleSpec], ScheduleSpec], now: int | None = None) -> None:
        """Replace the spec with `merge(current spec)` (which validates it), atomically. A change of cadence (cron,
        every_ms, timezone, jitter, start or end) plans the next tick afresh from now; ticks missed until now are
        not caught up. Leaving buffer_one drops a buffered tick."""
        now = now_ms() if now is None else now
        with self.store.write() as conn:
            row = self._require(conn, schedule_id)
            old = _spec(row)
            new = merge(old)
            next_fire_at = row.next_fire_at
            if any(getattr(old, name) != getattr(new, name) for name in rules.CADENCE_FIELDS):
                next_fire_at = Cadence(new).after(now)
            buffered = row.buffered_fire_at if new.overlap == "buffer_one" else None
            values = {
                **_spec_columns(new),
                "next_fire_at": next_fire_at,
                "buffered_fire_at": buffered,
                "due_at": _due_at(new, next_fire_at, buffered, row.paused, now),
                "updated_at": now,
            }
            conn.execute(update(schedules).where(schedules.c.schedule_id == schedule_id).values(values))
        self._changed()

    def set_paused(self, schedule_id: str, paused: bool, now: int | None = None) -> None:
        """Pause (no tick falls due) or resume: a resumed schedule's next tick is the first one after now (the
        ticks of the pause are not caught up). Pausing a paused schedule, or resuming a running one, changes
        nothing."""
        now = now_ms() if now is None else now
        with self.store.write() as conn:
            row = self._require(conn, schedule_id)
            if bool(row.paused) == paused:
                return
            spec = _spec(row)
            next_fire_at = row.next_fire_at if paused else Cadence(spec).after(now)
            values = {
                "paused": paused,
                "next_fire_at": next_fire_at,
                "due_at": _due_at(spec, next_fire_at, row.buffered_fire_at, paused, now),
                "updated_at": now,
            }
            conn.execute(update(schedules).where(schedules.c.schedule_id == schedule_id).values(values))
        self._changed()

    def delete(self, schedule_id: str) -> None:
        """Delete the schedule and its run records (the instances it started stay); ScheduleNotFound if unknown."""
        with self.store.write() as conn:
            self._require(conn, schedule_id)
            conn.execute(delete(schedule_runs).where(schedule_runs.c.schedule_id == schedule_id))
            conn.execute(delete(schedules).where(schedules.c.schedule_id == schedule_id))
        self._changed()

    def _require(self, conn: Connection, schedule_id: str) -> Any:
        row = self._locked(conn, schedule_id)
        if row is None:
            raise ScheduleNotFound(f"schedule {schedule_id!r} not found")
        return row

    # -- reads --------------------------------------------------------------------------------------------------
    def get(self, schedule_id: str) -> ScheduleInfo | None:
        with self.store.read() as conn:
            row = conn.execute(select(schedules).where(schedules.c.schedule_id == schedule_id)).first()
            if row is None:
                return None
            runs = conn.execute(
                select(schedule_runs)
                .where(schedule_runs.c.schedule_id == schedule_id)
                .order_by(schedule_runs.c.id.desc())
                .limit(KEEP_RUNS)
            ).all()
            ids = sorted({r.instance_id for r in runs if r.instance_id})
            statuses = dict(
                conn.execute(
                    select(instances.c.instance_id, instances.c.status).where(instances.c.instance_id.in_(ids))
                ).all()
            )
        recent = [
            ScheduleRun(
                fire_at=r.fire_at,
                action=r.action,
                instance_id=r.instance_id,
                status=statuses.get(r.instance_id, "NotFound") if r.instance_id else None,
                ticks=r.ticks,
                detail=r.detail,
                recorded_at=r.recorded_at,
            )
            for r in runs
        ]
        return _info(row, recent)

    def list(self) -> list[ScheduleInfo]:
        with self.store.read() as conn:
            rows = conn.execute(select(schedules).order_by(schedules.c.schedule_id)).all()
        return [_info(row, [], next_count=1) for row in rows]

    def next_due(self) -> int | None:
        """When the earliest schedule falls due (epoch ms), or None: one read of the due_at index."""
        with self.store.read() as conn:
            return conn.execute(select(func.min(schedules.c.due_at))).scalar()

    # -- firing -------------------------------------------------------------------------------------------------
    def fire_due(self, poke: Callable[[Pokes], None], now: int | None = None) -> int | None:
        """Fire the ticks due by `now` (epoch ms; default the clock) and return when the next one falls due, or
        None. `poke` gets each schedule's wake-ups after its commit; a failed poke is logged (the recovery sweep
        delivers the instance)."""
        wall = now_ms() if now is None else now
        with self._lock:
            if time.monotonic() < self._look_after and (self._known_due is None or self._known_due > wall):
                return self._known_due
            writes = self._writes
        due = self.next_due()
        batches = 0
        while due is not None and due <= wall and batches < MAX_BATCHES:
            batches += 1
            with self.store.read() as conn:
                ids = conn.execute(
                    select(schedules.c.schedule_id)
                    .where(schedules.c.due_at <= wall)
                    .order_by(schedules.c.due_at)
                    .limit(BATCH)
                ).scalars()
                due_ids = list(ids)
            for schedule_id in due_ids:
                pokes = self._fire_one(schedule_id, wall)
                if pokes:
                    try:
                        poke(pokes)
                    except Exception as exc:  # noqa: BLE001 - the rows are committed; the sweep delivers them
                        log.warning("schedule %s: could not publish %d wake-ups: %s", schedule_id, len(pokes), exc)
            due = self.next_due()
        with self._lock:
            if self._writes == writes:  # else a write came meanwhile: look again at the next round
                self._known_due = due
                self._look_after = time.monotonic() + POLL_S
        return due

    def _fire_one(self, schedule_id: str, now: int) -> Pokes:
        try:
            with self.store.write() as conn:
                row = self._locked(conn, schedule_id, skip_locked=True)
                if row is None or row.due_at is None or row.due_at > now:
                    return []  # another firer took it, or it changed since the due query
                spec = _spec(row)
                running = self._running(conn, row.last_instance_id)
                plan = rules.plan_round(spec, row.next_fire_at, row.buffered_fire_at, running, now)
                return self._apply(conn, row, spec, plan, running, now)
        except DBAPIError:
            raise  # the database's trouble, not this schedule's: the loop retries the round after its backoff
        except Exception:
            # One broken schedule must not stop the others, nor be retried at every tick of the loop.
            log.exception("schedule %s: firing failed; retrying in %d s", schedule_id, FAILED_ROUND_RETRY_MS // 1000)
            with self.store.write() as conn:
                conn.execute(
                    update(schedules)
                    .where(schedules.c.schedule_id == schedule_id)
                    .values(due_at=now + FAILED_ROUND_RETRY_MS)
                )
            return []

    def trigger(self, schedule_id: str, overlap: str | None, now: int | None = None) -> tuple[str | None, Pokes]:
        """Run the schedule now (see Client.trigger_schedule): returns the started instance id (None when the
        overlap policy skipped or buffered it) and the wake-ups to publish."""
        now = now_ms() if now is None else now
        with self.store.write() as conn:
            row = self._require(conn, schedule_id)
            spec = _spec(row)
            running = self._running(conn, row.last_instance_id)
            plan = rules.plan_trigger(spec, row.next_fire_at, row.buffered_fire_at, running, now, overlap)
            plan.due_at = _due_at(spec, plan.next_fire_at, plan.buffered_fire_at, row.paused, now)
            pokes = self._apply(conn, row, spec, plan, running, now)
        self._changed()
        started = rules.instance_id_for(schedule_id, now) if plan.starts else None
        return started, pokes

    @staticmethod
    def _running(conn: Connection, instance_id: str | None) -> str | None:
        """The schedule's previous run, if it is still running."""
        if instance_id is None:
            return None
        status = conn.execute(select(instances.c.status).where(instances.c.instance_id == instance_id)).scalar()
        return instance_id if status is not None and status not in TERMINAL_STATUSES else None

    def _apply(
        self, conn: Connection, row: Any, spec: ScheduleSpec, plan: Plan, running: str | None, now: int
    ) -> Pokes:
        """Write a plan in the caller's transaction: cancel, instances, run records, schedule state."""
        pokes: Pokes = []
        if plan.cancel_previous and running is not None:
            # Locked as Client.cancel_instance does: a concurrent delete sees the message or makes us see no row.
            query = select(instances.c.status, instances.c.orchestration_name).where(instances.c.instance_id == running)
            previous = conn.execute(query.with_for_update()).first()
            if previous is not None and previous.status not in TERMINAL_STATUSES:
                reason = f"schedule {spec.schedule_id}: overlap=cancel_previous"
                self.store.enqueue(conn, running, ev.MSG_CANCEL, {"reason": reason}, now)
                pokes.append((running, previous.orchestration_name))
        last_fire, last_instance = row.last_fire_at, row.last_instance_id
        records = []
        for step in plan.steps:
            instance_id, detail = None, step.detail
            if step.action in (rules.STARTED, rules.TRIGGERED):
                instance_id = rules.instance_id_for(spec.schedule_id, step.fire_at)
                if self.store.create_instance(conn, instance_id, spec.orchestration, spec.input, spec.version, now=now):
                    pokes.append((instance_id, spec.orchestration))
                else:  # the deterministic id is taken (e.g. by a schedule of the same id deleted before)
                    detail = "; ".join(filter(None, [detail, "instance existed already: not started again"]))
                last_fire, last_instance = step.fire_at, instance_id
            records.append(
                {
                    "schedule_id": spec.schedule_id,
                    "fire_at": step.fire_at,
                    "action": step.action,
                    "instance_id": instance_id,
                    "ticks": step.count,
                    "detail": detail,
                    "recorded_at": now,
                }
            )
        if records:
            conn.execute(insert(schedule_runs), records)
            self._trim_runs(conn, spec.schedule_id)
        skipped = sum(step.count for step in plan.steps if step.action == rules.SKIPPED)
        conn.execute(
            update(schedules)
            .where(schedules.c.schedule_id == spec.schedule_id)
            .values(
                next_fire_at=plan.next_fire_at,
                buffered_fire_at=plan.buffered_fire_at,
                due_at=None if row.paused else plan.due_at,
                last_fire_at=last_fire,
                last_instance_id=last_instance,
                skipped_count=schedules.c.skipped_count + skipped,
                updated_at=now,
            )
        )
        return pokes

    @staticmethod
    def _trim_runs(conn: Connection, schedule_id: str) -> None:
        cutoff = conn.execute(
            select(schedule_runs.c.id)
            .where(schedule_runs.c.schedule_id == schedule_id)
            .order_by(schedule_runs.c.id.desc())
            .offset(KEEP_RUNS)
            .limit(1)
        ).scalar()
        if cutoff is not None:
            conn.execute(
                delete(schedule_runs).where(schedule_runs.c.schedule_id == schedule_id, schedule_runs.c.id <= cutoff)
            )


def _info(row: Any, runs: list[ScheduleRun], next_count: int = rules.NEXT_FIRE_TIMES) -> ScheduleInfo:
    try:
        upcoming = rules.next_fire_times(_spec(row), row.next_fire_at, next_count)
    except (KeyError, ValueError):  # a zone or cron this system no longer reads: the schedule still shows
        upcoming = []
    return ScheduleInfo(
        schedule_id=row.schedule_id,
        orchestration_name=row.orchestration_name,
        input=loads(row.input),
        version=row.orchestration_version,
        cron=row.cron,
        every_ms=row.every_ms,
        timezone=row.timezone,
        overlap=row.overlap,
        catchup_window_ms=row.catchup_window_ms,
        jitter_ms=row.jitter_ms,
        start_at=row.start_at,
        end_at=row.end_at,
        paused=bool(row.paused),
        next_fire_times=upcoming,
        buffered_fire_at=row.buffered_fire_at,
        last_fire_at=row.last_fire_at,
        last_instance_id=row.last_instance_id,
        skipped_count=row.skipped_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
        recent_runs=runs,
    )


_by_store: WeakKeyDictionary[Store, ScheduleStore] = WeakKeyDictionary()
_by_store_lock = threading.Lock()


def for_store(store: Store) -> ScheduleStore:
    """The process's ScheduleStore of a Store (so the Client's writes and the timer loop share the poll state)."""
    with _by_store_lock:
        found = _by_store.get(store)
        if found is None:
            found = _by_store[store] = ScheduleStore(store)
        return found
