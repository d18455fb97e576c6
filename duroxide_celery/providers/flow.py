"""Flow control: concurrency and rate limits on activities, across keys and per key, enforced by the store for every
worker at once.

An activity with a limit (a `dx_limits` row, written by `Runtime.limit` on every runtime that registers it) is
inserted 'held': it waits in the store, is never published and cannot be claimed. Admission turns held rows into
'admitted' ones, which count against the limit from then until their row is deleted (completed, failed, cancelled,
expired, deleted with its instance), and the caller publishes them after its commit. Admission runs in the same
transaction as whatever may free or need a slot: a turn's commit (new work, cancelled work), an activity's
outcome, a claim-deadline expiry; the recovery sweep runs it too, as the safety net for every other way a row can
go (prune, delete, a limit raised or removed). Slots are counted from the rows themselves, never kept in a
counter, so no path can leak one. Rates count recent admissions (dx_admissions); work a rate holds back gets a time
(dx_limits.next_admit_at) at which the due-work loop admits it (`admit_due`).

Fairness: when a slot frees, it goes to the key with waiting work that least recently got a slot (keys that never
got one first, oldest waiting work first among them): round-robin across keys, so a busy key cannot starve a quiet
one. Within a key: higher priority first, then the order the work was scheduled.

Alternatives considered: admitting at claim time (publish everything; a worker that finds its key full gives the
message back) keeps the waiting work in the broker and in prefetch buffers, loops messages, and cannot be fair or
ordered; a running counter per key is one statement cheaper but leaks a slot on any path that forgets it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from .base import StoreBase, now_ms
from .dto import CreatedInstance, PendingActivity
from .schema import FLOW_ADMITTED as ADMITTED
from .schema import FLOW_HELD as HELD
from .schema import LIMIT_ACTIVITY as ACTIVITY
from .schema import LIMIT_ORCHESTRATION as ORCHESTRATION
from .schema import admissions, flow_keys, instances, limits, sessions, work_items

#: A rate: (admissions, per period in ms), e.g. (10, 1000) for "10/s".
Rate = tuple[int, int]
_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000}
#: The most admissions a rate may allow per period (each is a row of dx_admissions while it is in the window).
MAX_RATE_COUNT = 100_000


_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


def parse_rate(text: object, what: str = "rate") -> Rate:
    """ "N/s", "N/m" or "N/h" (N from 1 to MAX_RATE_COUNT) as (N, period in ms)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string like '10/s' (per second, /m minute, /h hour), got {text!r}")
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{what} must read 'N/s', 'N/m' or 'N/h' (e.g. '10/s'), got {text!r}")
    count = int(match.group(1))
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"{what} allows from 1 to {MAX_RATE_COUNT} admissions per period, got {count}")
    return count, _UNITS[match.group(2)]


def show_rate(rate: Rate) -> str:
    count, period = rate
    unit = next(u for u, ms in _UNITS.items() if ms == period)
    return f"{count}/{unit}"


@dataclass(frozen=True)
class ActivityLimit:
    """The limits of one activity, as stored (None: no such limit): concurrent runs across all keys (`limit`) and
    per key (`key_limit`), admissions per period across all keys (`rate`) and per key (`key_rate`)."""

    name: str
    limit: int | None = None
    key_limit: int | None = None
    rate: Rate | None = None
    key_rate: Rate | None = None

    def describe(self) -> str:
        parts = [f"{what}={value}" for what, value in (("limit", self.limit), ("key_limit", self.key_limit)) if value]
        parts += [f"{what}='{show_rate(r)}'" for what, r in (("rate", self.rate), ("key_rate", self.key_rate)) if r]
        return f"{self.name}({', '.join(parts) or 'removed'})"


@dataclass(frozen=True)
class HeldActivity:
    """An activity row waiting in the store for a slot of its activity's limit (what get_waits reports)."""

    instance_id: str
    execution_id: int
    event_id: int
    name: str
    key: str | None
    priority: int
    #: Since when it waits (epoch ms: when its turn scheduled it).
    since_ms: int
    #: The limit holding it, e.g. "CallApi(limit=2, key_limit=1)".
    limit: str

    @property
    def reason(self) -> str:
        key = f" for key {self.key!r}" if self.key is not None else ""
        return f"held by limit {self.limit}{key}"


def plan_admissions(
    *,
    free: int | None,
    key_limit: int | None,
    running: Mapping[str, int],
    waiting: Mapping[str, tuple[int, int]],
    last_turn: Mapping[str, int],
    key_room: Mapping[str, int] | None = None,
) -> list[str]:
    """Which keys get the free slots, one entry per slot, in the order they get them (pure: the store's admission
    and the unit tests share it).

    `free`: slots left across keys (None: no such limit); `running`: admitted rows per key; `waiting`: per key,
    (held rows, when its oldest was scheduled); `last_turn`: the admission number of each key's last slot;
    `key_room`: how many more admissions each key's rate allows now (absent: no per-key rate). Keys
    take turns: the one that least recently got a slot goes first (never: first of all, oldest work first), and
    after a slot a key goes to the back of the line, so one key can never take every slot while another waits.
    """
    line = deque(sorted(waiting, key=lambda k: (last_turn.get(k, 0), waiting[k][1], k)))
    left = {k: count for k, (count, _) in waiting.items()}
    if key_room is not None:
        left = {k: min(n, max(0, key_room.get(k, n))) for k, n in left.items()}
        line = deque(k for k in line if left[k] > 0)
    counts = dict(running)
    plan: list[str] = []
    while line and (free is None or len(plan) < free):
        key = line.popleft()
        if key_limit is not None and counts.get(key, 0) >= key_limit:
            continue  # full: it gets no more slots in this round (a completion of its own re-runs admission)
        plan.append(key)
        counts[key] = counts.get(key, 0) + 1
        left[key] -= 1
        if left[key] > 0:
            line.append(key)
    return plan


_NAME = work_items.c.name == bindparam("act")
#: One activity's limits (`act`) and its admission count; LIMIT_OF_LOCKED also locks the row until commit (on
#: PostgreSQL: admissions of one activity are serialized, so two never hand out the same slot).
LIMIT_OF = select(
    limits.c.max_running,
    limits.c.key_limit,
    limits.c.admissions,
    limits.c.rate_count,
    limits.c.rate_period_ms,
    limits.c.key_rate_count,
    limits.c.key_rate_period_ms,
).where(limits.c.kind == bindparam("lkind"), limits.c.name == bindparam("act"))

LIMIT_OF_LOCKED = LIMIT_OF.with_for_update()
#: Admitted rows per key, of one activity (`act`).
RUNNING_BY_KEY = (
    select(work_items.c.flow_key, func.count())
    .where(_NAME, work_items.c.flow_state == ADMITTED)
    .group_by(work_items.c.flow_key)
)
#: Per key and state (admitted, held), the rows of one activity (`act`) and the oldest: one read per admission.
FLOW_BY_KEY = (
    select(work_items.c.flow_key, work_items.c.flow_state, func.count(), func.min(work_items.c.created_at))
    .where(_NAME, work_items.c.flow_state.is_not(None))
    .group_by(work_items.c.flow_key, work_items.c.flow_state)
)
#: When these keys (`keys`, a list) of an activity (`act`) last got a slot.
LAST_TURNS = select(flow_keys.c.flow_key, flow_keys.c.last_turn).where(
    flow_keys.c.kind == bindparam("lkind"),
    flow_keys.c.name == bindparam("act"),
    flow_keys.c.flow_key.in_(bindparam("keys", expanding=True)),
)
_KEY_COLUMNS = (work_items.c.instance_id, work_items.c.execution_id, work_items.c.event_id)
#: The next `n` held rows of one key (`act`, `key`): priority first, then the order they were scheduled.
NEXT_HELD = (
    select(*_KEY_COLUMNS, work_items.c.session_id, work_items.c.tag)
    .where(_NAME, work_items.c.flow_state == HELD, work_items.c.flow_key == bindparam("key"))
    .order_by(work_items.c.priority.desc(), work_items.c.created_at, *_KEY_COLUMNS)
    .limit(bindparam("n"))
)
#: PostgreSQL: NEXT_HELD passing over rows another transaction is deleting (a cancel), instead of waiting on them.
#: (Kept apart from the UPDATE below: PostgreSQL may evaluate a LIMIT sub-select of an UPDATE more than once, which
#: admitted more rows than the limit allowed in a test.)
NEXT_HELD_SKIP_LOCKED = NEXT_HELD.with_for_update(skip_locked=True)
#: Admit one held row (`iid`, `exec`, `eid`); published from `now` (the sweep republishes it if that is lost).
ADMIT = (
    update(work_items)
    .where(
        work_items.c.instance_id == bindparam("iid"),
        work_items.c.execution_id == bindparam("exec"),
        work_items.c.event_id == bindparam("eid"),
        work_items.c.flow_state == HELD,
    )
    .values(flow_state=ADMITTED, published_at=bindparam("now"))
)
SET_ADMISSIONS = (
    update(limits)
    .where(limits.c.kind == bindparam("lkind"), limits.c.name == bindparam("act"))
    .values(admissions=bindparam("count"))
)
SET_NEXT_ADMIT = (
    update(limits)
    .where(limits.c.kind == bindparam("lkind"), limits.c.name == bindparam("act"))
    .values(next_admit_at=bindparam("at"))
)
#: Rate-limited activities whose held work may be admitted again at `now` (the due-work loop's pass).
DUE_LIMITS = select(limits.c.name).where(
    limits.c.kind == ACTIVITY, limits.c.next_admit_at > 0, limits.c.next_admit_at <= bindparam("now")
)
CLEAR_DUE = (
    update(limits)
    .where(limits.c.kind == ACTIVITY, limits.c.name.in_(bindparam("names", expanding=True)))
    .values(next_admit_at=0)
)
#: Admissions of an activity (`act`) since `since` (exclusive): across keys, and per key, with the oldest.
ADMITTED_SINCE = select(func.count(), func.min(admissions.c.admitted_at)).where(
    admissions.c.name == bindparam("act"), admissions.c.admitted_at > bindparam("since")
)
ADMITTED_SINCE_BY_KEY = (
    select(admissions.c.flow_key, func.count(), func.min(admissions.c.admitted_at))
    .where(admissions.c.name == bindparam("act"), admissions.c.admitted_at > bindparam("since"))
    .group_by(admissions.c.flow_key)
)
#: Forget an activity's admissions up to `until` (inclusive), and record new ones (column names).
PRUNE_ADMISSIONS = admissions.delete().where(
    admissions.c.name == bindparam("act"), admissions.c.admitted_at <= bindparam("until")
)
INSERT_ADMISSIONS = admissions.insert()
#: How long admissions are kept at least (longer for a longer rate period): a record worth reading.
ADMISSIONS_KEPT_MS = 60_000
#: Activities with held rows (the sweep's admission pass).
NAMES_WITH_HELD = select(work_items.c.name).where(work_items.c.flow_state == HELD).distinct()


# -- starts (Runtime.limit_starts) --------------------------------------------------------------------------------
#: Per key and state, the instances of an orchestration (`act`) that count: admitted and still Running, and held.
START_FLOW_BY_KEY = (
    select(instances.c.flow_key, instances.c.flow_state, func.count(), func.min(instances.c.created_at))
    .where(
        instances.c.orchestration_name == bindparam("act"),
        or_(and_(instances.c.flow_state == ADMITTED, instances.c.status == "Running"), instances.c.flow_state == HELD),
    )
    .group_by(instances.c.flow_key, instances.c.flow_state)
)
#: The next `n` held starts of one key (`act`, `key`), oldest first.
NEXT_HELD_START = (
    select(instances.c.instance_id)
    .where(
        instances.c.orchestration_name == bindparam("act"),
        instances.c.flow_state == HELD,
        instances.c.flow_key == bindparam("key"),
    )
    .order_by(instances.c.created_at, instances.c.instance_id)
    .limit(bindparam("n"))
)
NEXT_HELD_START_SKIP_LOCKED = NEXT_HELD_START.with_for_update(skip_locked=True)
#: Admit a held start (`iid`): its first turn may run now; it no longer waits for anything.
ADMIT_START = (
    update(instances)
    .where(instances.c.instance_id == bindparam("iid"), instances.c.flow_state == HELD)
    .values(flow_state=ADMITTED, waiting_reason=None)
)
#: Hold a new instance (`iid`) for its orchestration's start limit, under `fkey`, saying why it waits (`why`).
HOLD_START = (
    update(instances)
    .where(instances.c.instance_id == bindparam("iid"))
    .values(flow_state=HELD, flow_key=bindparam("fkey"), waiting_reason=bindparam("why"))
)
#: Orchestrations with held starts (the sweep's admission pass).
ORCHESTRATIONS_WITH_HELD = select(instances.c.orchestration_name).where(instances.c.flow_state == HELD).distinct()


class FlowStore(StoreBase):
    """Limits, admission and the read of held work; the turn commit, activity outcomes and expiries call `admit`."""

    def set_limit(self, limit: ActivityLimit) -> list[PendingActivity]:
        """Store an activity's limits (replacing what was stored) and admit what they now allow; returns the rows
        to publish. Limits only apply to work scheduled after they are stored."""
        now = now_ms()
        values = {
            "max_running": limit.limit,
            "key_limit": limit.key_limit,
            "rate_count": limit.rate[0] if limit.rate else None,
            "rate_period_ms": limit.rate[1] if limit.rate else None,
            "key_rate_count": limit.key_rate[0] if limit.key_rate else None,
            "key_rate_period_ms": limit.key_rate[1] if limit.key_rate else None,
            "updated_at": now,
        }
        with self.write() as conn:
            upsert = self.dialect.sql.insert(limits).values(
                kind=ACTIVITY, name=limit.name, admissions=0, next_admit_at=0, **values
            )
            conn.execute(upsert.on_conflict_do_update(index_elements=[limits.c.kind, limits.c.name], set_=values))
            return self.admit(conn, [limit.name], now)

    def remove_limit(self, name: str) -> list[PendingActivity]:
        """Drop an activity's limits: its held rows are all admitted (returned, to publish)."""
        with self.write() as conn:
            conn.execute(limits.delete().where(limits.c.kind == ACTIVITY, limits.c.name == name))
            return self.admit(conn, [name], now_ms())

    def get_limits(self) -> list[ActivityLimit]:
        with self.read() as conn:
            rows = conn.execute(
                select(
                    limits.c.name,
                    limits.c.max_running,
                    limits.c.key_limit,
                    limits.c.rate_count,
                    limits.c.rate_period_ms,
                    limits.c.key_rate_count,
                    limits.c.key_rate_period_ms,
                )
                .where(limits.c.kind == ACTIVITY)
                .order_by(limits.c.name)
            ).all()
        return [_limit_of(*r) for r in rows]

    def admit(self, conn: Connection, names: Iterable[str], now: int) -> list[PendingActivity]:
        """Admit the held rows of these activities that their limits now allow, in the caller's transaction;
        returns them (to publish after the commit), routed to their session's live owner when it has one. Names
        are taken in sorted order: two transactions lock the activities' limit rows in one order (no deadlock)."""
        admitted: list[PendingActivity] = []
        for name in sorted(set(names)):
            admitted.extend(self._admit_one(conn, name, now))
        if admitted:
            owned = sorted({a.session_id for a in admitted if a.session_id})
            if owned:
                rows = conn.execute(
                    select(sessions.c.session_id, sessions.c.owner).where(
                        sessions.c.session_id.in_(owned), sessions.c.locked_until > now
                    )
                ).all()
                owners = {r[0]: r[1] for r in rows}
                for a in admitted:
                    a.node = owners.get(a.session_id) if a.session_id else None
        return admitted

    def _admit_one(self, conn: Connection, name: str, now: int) -> list[_Admitted]:
        row = conn.execute(self.dialect.lock_rows(LIMIT_OF, LIMIT_OF_LOCKED), {"lkind": ACTIVITY, "act": name}).first()
        stored = _limit_of(name, *row[:2], *row[3:]) if row is not None else ActivityLimit(name)
        turn = row[2] if row is not None else 0
        running: dict[str, int] = {}
        waiting: dict[str, tuple[int, int]] = {}
        for key, state, count, oldest in conn.execute(FLOW_BY_KEY, {"act": name}).all():
            if state == ADMITTED:
                running[key] = count
            elif state == HELD:
                waiting[key] = (count, oldest)
        free = None if stored.limit is None else stored.limit - sum(running.values())
        if not waiting or (free is not None and free <= 0):
            return []  # the common cases (nothing waits, or a busy limit): two statements, nothing written
        window = _RateWindow(conn, stored, now) if stored.rate or stored.key_rate else None
        if window is not None and window.free is not None:
            free = window.free if free is None else min(free, window.free)
        # One waiting key needs no turn order (the common case of one busy key): one statement saved.
        last_turn = (
            dict(conn.execute(LAST_TURNS, {"lkind": ACTIVITY, "act": name, "keys": sorted(waiting)}).all())
            if len(waiting) > 1
            else {}
        )
        plan = plan_admissions(
            free=free,
            key_limit=stored.key_limit,
            running=running,
            waiting=waiting,
            last_turn=last_turn,
            key_room=window.key_room(waiting) if window is not None else None,
        )
        admitted = self._take(conn, name, plan, now) if plan else []
        if row is not None and admitted:
            turn += len(admitted)
            conn.execute(SET_ADMISSIONS, {"lkind": ACTIVITY, "act": name, "count": turn})
            self._record_turns(conn, ACTIVITY, name, [a.flow_key for a in admitted], turn, now)
        if window is not None:
            window.record(admitted)
            conn.execute(
                SET_NEXT_ADMIT, {"lkind": ACTIVITY, "act": name, "at": window.next_admit_at(waiting, admitted)}
            )
        return admitted

    def _take(self, conn: Connection, name: str, plan: list[str], now: int) -> list[_Admitted]:
        """Admit, per key, its next held rows (as many as the plan gives it); returned in the plan's order, so the
        first admitted is published first."""
        wanted: dict[str, int] = {}
        for key in plan:
            wanted[key] = wanted.get(key, 0) + 1
        next_held = self.dialect.lock_rows(NEXT_HELD, NEXT_HELD_SKIP_LOCKED)
        rows_of: dict[str, deque[_Admitted]] = {}
        for key, n in wanted.items():
            taken: deque[_Admitted] = deque()
            for iid, exec_id, eid, session_id, tag in conn.execute(next_held, {"act": name, "key": key, "n": n}).all():
                if conn.execute(ADMIT, {"iid": iid, "exec": exec_id, "eid": eid, "now": now}).rowcount:
                    taken.append(_Admitted(iid, exec_id, eid, name, session_id, tag, flow_key=key))
            rows_of[key] = taken
        return [rows_of[key].popleft() for key in plan if rows_of[key]]

    def _record_turns(self, conn: Connection, kind: str, name: str, keys: list[str], turn: int, now: int) -> None:
        """Each key's last slot, numbered by the activity's admission count (the order fairness goes by)."""
        first = turn - len(keys)
        last = {key: first + i + 1 for i, key in enumerate(keys)}
        for key, at in last.items():
            upsert = self.dialect.sql.insert(flow_keys).values(
                kind=kind, name=name, flow_key=key, last_turn=at, last_admitted_at=now
            )
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[flow_keys.c.kind, flow_keys.c.name, flow_keys.c.flow_key],
                    set_={"last_turn": at, "last_admitted_at": now},
                )
            )

    def admit_due(self) -> list[PendingActivity]:
        """The due-work loop's pass: admit the held work of activities whose rate allows more again (their
        next_admit_at has come); returns the rows to publish."""
        now = now_ms()
        with self.write() as conn:
            names = [r[0] for r in conn.execute(DUE_LIMITS, {"now": now}).all()]
            if not names:
                return []
            conn.execute(CLEAR_DUE, {"names": names})  # admission sets it again while work still waits on a rate
            return self.admit(conn, names, now)

    # -- starts ---------------------------------------------------------------------------------------------------
    def set_start_limit(self, name: str, limit: int | None, key_limit: int | None) -> list[tuple[str, str]]:
        """Store an orchestration's start limits (instances Running at once, in all and per key) and admit the held
        starts they now allow; returns the instances to wake (id, orchestration name)."""
        now = now_ms()
        values = {"max_running": limit, "key_limit": key_limit, "updated_at": now}
        with self.write() as conn:
            upsert = self.dialect.sql.insert(limits).values(kind=ORCHESTRATION, name=name, admissions=0, **values)
            conn.execute(upsert.on_conflict_do_update(index_elements=[limits.c.kind, limits.c.name], set_=values))
            return self.admit_starts(conn, name, now)

    def get_start_limits(self) -> list[ActivityLimit]:
        """The stored start limits, as (orchestration name, limit, key_limit)."""
        with self.read() as conn:
            rows = conn.execute(
                select(limits.c.name, limits.c.max_running, limits.c.key_limit)
                .where(limits.c.kind == ORCHESTRATION)
                .order_by(limits.c.name)
            ).all()
        return [ActivityLimit(*r) for r in rows]

    def hold_start(
        self, conn: Connection, instance_id: str, name: str, key: str | None, created: CreatedInstance | None = None
    ) -> list[tuple[str, str]]:
        """A new instance (created in the caller's transaction): when its orchestration has a start limit, hold it
        and admit what the limit allows (maybe this one); returns the instances to wake. Without a limit: the
        instance alone, as before. `created`: what create_instance returned (the limit, if its statement read it)."""
        if created is not None and created.limit_read:
            limit = created.start_limit
        else:
            row = conn.execute(LIMIT_OF, {"lkind": ORCHESTRATION, "act": name}).first()
            limit = (row[0], row[1]) if row is not None else None
        if limit is None:
            return [(instance_id, name)]
        why = _held_start_reason(name, limit[0], limit[1], key)
        conn.execute(HOLD_START, {"iid": instance_id, "fkey": key or "", "why": why})
        return self.admit_starts(conn, name, now_ms())

    def hold_starts(self, conn: Connection, starts: Sequence[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
        """`hold_start` for many new instances (id, orchestration name, key) of one transaction: the starts of
        limited orchestrations are held in one statement, then each such orchestration admits once; returns the
        instances to wake (the unlimited ones in the order given)."""
        limited: dict[str, tuple[int | None, int | None]] = {}
        for name in sorted({name for _, name, _ in starts}):
            row = conn.execute(LIMIT_OF, {"lkind": ORCHESTRATION, "act": name}).first()
            if row is not None:
                limited[name] = (row[0], row[1])
        held = [
            {
                "iid": iid,
                "fkey": key or "",
                "why": _held_start_reason(name, *limited[name], key),
            }
            for iid, name, key in starts
            if name in limited
        ]
        if held:
            conn.execute(HOLD_START, held)
        woken = [(iid, name) for iid, name, _ in starts if name not in limited]
        now = now_ms()
        for name in limited:
            woken.extend(self.admit_starts(conn, name, now))
        return woken

    def admit_starts(self, conn: Connection, name: str, now: int) -> list[tuple[str, str]]:
        """Admit the held starts of an orchestration that its limits allow, fairly across keys (as activities),
        oldest first within a key; returns them to wake. Serialized per orchestration by its limit row's lock."""
        row = conn.execute(
            self.dialect.lock_rows(LIMIT_OF, LIMIT_OF_LOCKED), {"lkind": ORCHESTRATION, "act": name}
        ).first()
        max_running, key_limit, turn = row[:3] if row is not None else (None, None, 0)
        running: dict[str, int] = {}
        waiting: dict[str, tuple[int, int]] = {}
        for key, state, count, oldest in conn.execute(START_FLOW_BY_KEY, {"act": name}).all():
            if state == ADMITTED:
                running[key] = count
            else:
                waiting[key] = (count, oldest)
        free = None if max_running is None else max_running - sum(running.values())
        if not waiting or (free is not None and free <= 0):
            return []
        last_turn = (
            dict(conn.execute(LAST_TURNS, {"lkind": ORCHESTRATION, "act": name, "keys": sorted(waiting)}).all())
            if len(waiting) > 1
            else {}
        )
        plan = plan_admissions(free=free, key_limit=key_limit, running=running, waiting=waiting, last_turn=last_turn)
        wanted: dict[str, int] = {}
        for key in plan:
            wanted[key] = wanted.get(key, 0) + 1
        next_held = self.dialect.lock_rows(NEXT_HELD_START, NEXT_HELD_START_SKIP_LOCKED)
        admitted: list[tuple[str, str]] = []
        keys: list[str] = []
        for key, n in wanted.items():
            for (iid,) in conn.execute(next_held, {"act": name, "key": key, "n": n}).all():
                if conn.execute(ADMIT_START, {"iid": iid}).rowcount:
                    admitted.append((iid, name))
                    keys.append(key)
        if row is not None and admitted:
            turn += len(admitted)
            conn.execute(SET_ADMISSIONS, {"lkind": ORCHESTRATION, "act": name, "count": turn})
            self._record_turns(conn, ORCHESTRATION, name, keys, turn, now)
        return admitted

    def admit_waiting(self) -> list[PendingActivity]:
        """The sweep's pass: admit held work wherever its limit allows (a slot freed by a path that does not admit,
        such as a prune, a deleted instance or a limit raised by a restarted runtime); returns the rows to publish."""
        with self.read() as conn:
            names = [r[0] for r in conn.execute(NAMES_WITH_HELD).all()]
        if not names:
            return []
        with self.write() as conn:
            return self.admit(conn, names, now_ms())

    def admit_waiting_starts(self) -> list[tuple[str, str]]:
        """The sweep's pass for starts: admit held starts wherever their limit has room (an instance deleted or
        failed by a path that does not admit, a limit raised); returns the instances to wake."""
        with self.read() as conn:
            names = [r[0] for r in conn.execute(ORCHESTRATIONS_WITH_HELD).all()]
        woken: list[tuple[str, str]] = []
        for name in sorted(names):
            with self.write() as conn:
                woken.extend(self.admit_starts(conn, name, now_ms()))
        return woken

    def held_activities(self, instance_id: str | None = None, limit: int = 1000) -> list[HeldActivity]:
        """Activity rows waiting for a slot (of one instance, or all), oldest first, with the limit holding each:
        what `Client.get_waits` reports as "held by limit X"."""
        query = (
            select(
                *_KEY_COLUMNS,
                work_items.c.name,
                work_items.c.flow_key,
                work_items.c.priority,
                work_items.c.created_at,
                limits.c.max_running,
                limits.c.key_limit,
            )
            .join_from(
                work_items,
                limits,
                and_(limits.c.kind == ACTIVITY, limits.c.name == work_items.c.name),
                isouter=True,
            )
            .where(work_items.c.flow_state == HELD)
            .order_by(work_items.c.created_at, *_KEY_COLUMNS)
            .limit(limit)
        )
        if instance_id is not None:
            query = query.where(work_items.c.instance_id == instance_id)
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [
            HeldActivity(iid, exec_id, eid, name, key or None, priority, since, ActivityLimit(name, mx, kl).describe())
            for iid, exec_id, eid, name, key, priority, since, mx, kl in rows
        ]

    def running_by_key(self, name: str) -> dict[str, int]:
        """Admitted (running or about to run) rows of an activity per key ('' for no key): an operator's view."""
        with self.read() as conn:
            return dict(conn.execute(RUNNING_BY_KEY, {"act": name}).all())


def _held_start_reason(name: str, max_running: int | None, key_limit: int | None, key: str | None) -> str:
    """A held start's waiting reason: the limit that holds it, and its key when it has one."""
    why = f"held by limit {ActivityLimit(name, max_running, key_limit).describe()}"
    return why + (f" for key {key!r}" if key is not None else "")


@dataclass
class _Admitted(PendingActivity):
    """A row admitted by this transaction, with its key (for fairness and the rate window)."""

    flow_key: str = ""


def _limit_of(
    name: str,
    limit: int | None,
    key_limit: int | None,
    rate_count: int | None = None,
    rate_period: int | None = None,
    key_rate_count: int | None = None,
    key_rate_period: int | None = None,
) -> ActivityLimit:
    rate = (rate_count, rate_period) if rate_count and rate_period else None
    key_rate = (key_rate_count, key_rate_period) if key_rate_count and key_rate_period else None
    return ActivityLimit(name, limit, key_limit, rate, key_rate)


class _RateWindow:
    """An activity's recent admissions, read once per admission pass: how many more its rates allow now, and when
    held work blocked by a rate may go next. Sliding windows: at most N admissions in any period."""

    def __init__(self, conn: Connection, limit: ActivityLimit, now: int):
        self.conn, self.limit, self.now = conn, limit, now
        periods = [r[1] for r in (limit.rate, limit.key_rate) if r]
        conn.execute(PRUNE_ADMISSIONS, {"act": limit.name, "until": now - max(*periods, ADMISSIONS_KEPT_MS)})
        self.free: int | None = None
        self.total_count: int = 0
        self.total_oldest: int | None = None
        if limit.rate:
            count, oldest = conn.execute(ADMITTED_SINCE, {"act": limit.name, "since": now - limit.rate[1]}).one()
            self.total_count, self.total_oldest = count, oldest
            self.free = max(0, limit.rate[0] - count)
        self.by_key: dict[str, tuple[int, int]] = {}
        if limit.key_rate:
            params = {"act": limit.name, "since": now - limit.key_rate[1]}
            self.by_key = {k: (c, o) for k, c, o in conn.execute(ADMITTED_SINCE_BY_KEY, params).all()}

    def key_room(self, waiting: Mapping[str, tuple[int, int]]) -> dict[str, int] | None:
        if not self.limit.key_rate:
            return None
        return {k: self.limit.key_rate[0] - self.by_key.get(k, (0, 0))[0] for k in waiting}

    def record(self, admitted: list[_Admitted]) -> None:
        if admitted:
            rows = [{"name": self.limit.name, "flow_key": a.flow_key, "admitted_at": self.now} for a in admitted]
            self.conn.execute(INSERT_ADMISSIONS, rows)

    def next_admit_at(self, waiting: Mapping[str, tuple[int, int]], admitted: list[_Admitted]) -> int:
        """When held work left waiting on a rate may go (the oldest admission in its window leaves it); 0 if none
        waits on a rate. A later pass that finds it still blocked (a lowered rate) computes the next time."""
        taken: dict[str, int] = {}
        for a in admitted:
            taken[a.flow_key] = taken.get(a.flow_key, 0) + 1
        left = {k: n - taken.get(k, 0) for k, (n, _) in waiting.items() if n > taken.get(k, 0)}
        if not left:
            return 0
        times: list[int] = []
        if self.limit.rate and self.total_count + len(admitted) >= self.limit.rate[0]:
            oldest = self.total_oldest if self.total_oldest is not None else self.now
            times.append(oldest + self.limit.rate[1])
        if self.limit.key_rate:
            count, period = self.limit.key_rate
            for key in left:
                seen, oldest = self.by_key.get(key, (0, self.now))
                if seen + taken.get(key, 0) >= count:
                    times.append((oldest if seen else self.now) + period)
        return min(times, default=0)


__all__ = [
    "ACTIVITY",
    "ADMITTED",
    "HELD",
    "ActivityLimit",
    "FlowStore",
    "HeldActivity",
    "ORCHESTRATION",
    "Rate",
    "plan_admissions",
    "parse_rate",
    "show_rate",
]
