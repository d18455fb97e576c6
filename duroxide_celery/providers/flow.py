"""Flow control: per-key concurrency limits on activities, enforced by the store for every worker at once.

An activity with a limit (a `dx_limits` row, written by `Runtime.limit` on every runtime that registers it) is
inserted 'held': it waits in the store, is never published and cannot be claimed. Admission turns held rows into
'admitted' ones, which count against the limit from then until their row is deleted (completed, failed, cancelled,
expired, deleted with its instance), and the caller publishes them after its commit. Admission runs in the same
transaction as whatever may free or need a slot: a turn's commit (new work, cancelled work), an activity's
outcome, a claim-deadline expiry; the recovery sweep runs it too, as the safety net for every other way a row can
go (prune, delete, a limit raised or removed). Slots are counted from the rows themselves, never kept in a
counter, so no path can leak one.

Fairness: when a slot frees, it goes to the key with waiting work that least recently got a slot (keys that never
got one first, oldest waiting work first among them): round-robin across keys, so a busy key cannot starve a quiet
one. Within a key: higher priority first, then the order the work was scheduled.

Alternatives considered: admitting at claim time (publish everything; a worker that finds its key full gives the
message back) keeps the waiting work in the broker and in prefetch buffers, loops messages, and cannot be fair or
ordered; a running counter per key is one statement cheaper but leaks a slot on any path that forgets it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from .base import StoreBase, now_ms
from .dto import PendingActivity
from .schema import FLOW_ADMITTED as ADMITTED
from .schema import FLOW_HELD as HELD
from .schema import flow_keys, limits, sessions, work_items


@dataclass(frozen=True)
class ActivityLimit:
    """The limits of one activity, as stored: concurrent runs across all keys and per key (None: no such limit)."""

    name: str
    limit: int | None = None
    key_limit: int | None = None

    def describe(self) -> str:
        parts = [f"limit={self.limit}"] if self.limit is not None else []
        if self.key_limit is not None:
            parts.append(f"key_limit={self.key_limit}")
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
) -> list[str]:
    """Which keys get the free slots, one entry per slot, in the order they get them (pure: the store's admission
    and the unit tests share it).

    `free`: slots left across keys (None: no such limit); `running`: admitted rows per key; `waiting`: per key,
    (held rows, when its oldest was scheduled); `last_turn`: the admission number of each key's last slot. Keys
    take turns: the one that least recently got a slot goes first (never: first of all, oldest work first), and
    after a slot a key goes to the back of the line, so one key can never take every slot while another waits.
    """
    line = deque(sorted(waiting, key=lambda k: (last_turn.get(k, 0), waiting[k][1], k)))
    left = {k: count for k, (count, _) in waiting.items()}
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
#: The limits of activities (`names`, a list): which of a turn's activities are limited.
LIMITED_NAMES = select(limits.c.name).where(limits.c.name.in_(bindparam("names", expanding=True)))
#: One activity's limits (`name`) and its admission count; LIMIT_OF_LOCKED also locks the row until commit (on
#: PostgreSQL: admissions of one activity are serialized, so two never hand out the same slot).
LIMIT_OF = select(limits.c.max_running, limits.c.key_limit, limits.c.admissions).where(
    limits.c.name == bindparam("act")
)
LIMIT_OF_LOCKED = LIMIT_OF.with_for_update()
#: Admitted rows per key, and held rows per key with their oldest, of one activity (`name`).
RUNNING_BY_KEY = (
    select(work_items.c.flow_key, func.count())
    .where(_NAME, work_items.c.flow_state == ADMITTED)
    .group_by(work_items.c.flow_key)
)
WAITING_BY_KEY = (
    select(work_items.c.flow_key, func.count(), func.min(work_items.c.created_at))
    .where(_NAME, work_items.c.flow_state == HELD)
    .group_by(work_items.c.flow_key)
)
#: When these keys (`keys`, a list) of an activity (`name`) last got a slot.
LAST_TURNS = select(flow_keys.c.flow_key, flow_keys.c.last_turn).where(
    flow_keys.c.name == bindparam("act"), flow_keys.c.flow_key.in_(bindparam("keys", expanding=True))
)
_KEY_COLUMNS = (work_items.c.instance_id, work_items.c.execution_id, work_items.c.event_id)
#: The next `n` held rows of one key (`name`, `key`): priority first, then the order they were scheduled.
NEXT_HELD = (
    select(*_KEY_COLUMNS, work_items.c.session_id, work_items.c.tag)
    .where(_NAME, work_items.c.flow_state == HELD, work_items.c.flow_key == bindparam("key"))
    .order_by(work_items.c.priority.desc(), work_items.c.created_at, *_KEY_COLUMNS)
    .limit(bindparam("n"))
)
#: PostgreSQL: NEXT_HELD passing over rows another transaction is deleting (a cancel), instead of waiting on them.
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
SET_ADMISSIONS = update(limits).where(limits.c.name == bindparam("act")).values(admissions=bindparam("count"))
#: Activities with held rows (the sweep's admission pass).
NAMES_WITH_HELD = select(work_items.c.name).where(work_items.c.flow_state == HELD).distinct()


class FlowStore(StoreBase):
    """Limits, admission and the read of held work; the turn commit, activity outcomes and expiries call `admit`."""

    def set_limit(self, limit: ActivityLimit) -> list[PendingActivity]:
        """Store an activity's limits (replacing what was stored) and admit what they now allow; returns the rows
        to publish. Limits only apply to work scheduled after they are stored."""
        now = now_ms()
        with self.write() as conn:
            upsert = self.dialect.sql.insert(limits).values(
                name=limit.name, max_running=limit.limit, key_limit=limit.key_limit, admissions=0, updated_at=now
            )
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[limits.c.name],
                    set_={"max_running": limit.limit, "key_limit": limit.key_limit, "updated_at": now},
                )
            )
            return self.admit(conn, [limit.name], now)

    def remove_limit(self, name: str) -> list[PendingActivity]:
        """Drop an activity's limits: its held rows are all admitted (returned, to publish)."""
        with self.write() as conn:
            conn.execute(limits.delete().where(limits.c.name == name))
            return self.admit(conn, [name], now_ms())

    def get_limits(self) -> list[ActivityLimit]:
        with self.read() as conn:
            rows = conn.execute(
                select(limits.c.name, limits.c.max_running, limits.c.key_limit).order_by(limits.c.name)
            ).all()
        return [ActivityLimit(*r) for r in rows]

    def limited_names(self, conn: Connection, names: Iterable[str]) -> set[str]:
        """Which of these activities have limits (their new rows start held)."""
        wanted = sorted(set(names))
        if not wanted:
            return set()
        return {r[0] for r in conn.execute(LIMITED_NAMES, {"names": wanted}).all()}

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

    def _admit_one(self, conn: Connection, name: str, now: int) -> list[PendingActivity]:
        row = conn.execute(self.dialect.lock_rows(LIMIT_OF, LIMIT_OF_LOCKED), {"act": name}).first()
        max_running, key_limit, turn = row if row is not None else (None, None, 0)
        running: dict[str, int] = {}
        free = None
        if max_running is not None or key_limit is not None:
            running = dict(conn.execute(RUNNING_BY_KEY, {"act": name}).all())
            if max_running is not None:
                free = max_running - sum(running.values())
                if free <= 0:
                    return []  # the common case of a busy limit: two statements, nothing written
        waiting = {k: (count, oldest) for k, count, oldest in conn.execute(WAITING_BY_KEY, {"act": name}).all()}
        if not waiting:
            return []
        last_turn = dict(conn.execute(LAST_TURNS, {"act": name, "keys": sorted(waiting)}).all())
        plan = plan_admissions(free=free, key_limit=key_limit, running=running, waiting=waiting, last_turn=last_turn)
        if not plan:
            return []
        wanted: dict[str, int] = {}
        for key in plan:
            wanted[key] = wanted.get(key, 0) + 1
        next_held = self.dialect.lock_rows(NEXT_HELD, NEXT_HELD_SKIP_LOCKED)
        rows_of: dict[str, deque[PendingActivity]] = {}
        for key, n in wanted.items():
            rows = conn.execute(next_held, {"act": name, "key": key, "n": n}).all()
            taken: deque[PendingActivity] = deque()
            for iid, exec_id, eid, session_id, tag in rows:
                if conn.execute(ADMIT, {"iid": iid, "exec": exec_id, "eid": eid, "now": now}).rowcount:
                    taken.append(PendingActivity(iid, exec_id, eid, name, session_id, tag))
            rows_of[key] = taken
        admitted: list[PendingActivity] = []
        last: dict[str, int] = {}
        for key in plan:  # in the order the slots were given: the first admitted is published first
            if rows_of[key]:
                admitted.append(rows_of[key].popleft())
                turn += 1
                last[key] = turn
        if not admitted:
            return []
        if row is not None:
            conn.execute(SET_ADMISSIONS, {"act": name, "count": turn})
        for key, at in last.items():
            upsert = self.dialect.sql.insert(flow_keys).values(
                name=name, flow_key=key, last_turn=at, last_admitted_at=now
            )
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[flow_keys.c.name, flow_keys.c.flow_key],
                    set_={"last_turn": at, "last_admitted_at": now},
                )
            )
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
            .join_from(work_items, limits, limits.c.name == work_items.c.name, isouter=True)
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


__all__ = ["ADMITTED", "HELD", "ActivityLimit", "FlowStore", "HeldActivity", "plan_admissions"]
