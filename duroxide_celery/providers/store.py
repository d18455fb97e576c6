"""Every SQL statement of the engine, in one place (SQLAlchemy Core, parameterized).

Mutators that belong to a turn take the open connection so one turn commits in one transaction (DESIGN
invariant 2). What differs between SQLite and PostgreSQL lives in the store's `dialect` object (dialect.py):
this module never branches on the database.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.engine import Connection, Engine

from ..replay import events as ev
from ..replay.events import HistoryEvent, error_details
from ..types import TERMINAL_STATUSES
from . import hot_statements as hot
from .dialect import dialect_for
from .dto import (
    ClaimedWorkItem,
    HeldWorkItem,
    InstanceLease,
    LeaseLost,
    NewActivity,
    NewTimer,
    PendingActivity,
    PublishPlan,
    SessionBusy,
    SessionPolicy,
    TreeDeletion,
    TurnChanges,
    TurnLoad,
)
from .schema import executions, history, inbox, instances, kv, sessions, timers, work_items
from .turn_shapes import LeaseKeeper, TurnTransaction


def _delete_scheduled(conn: Connection, table: Any, instance_id: str, execution_id: int, event_ids: list[int]) -> None:
    """Delete an execution's activity rows or timers by their scheduled event ids (cancelled work)."""
    if event_ids:
        conn.execute(
            delete(table).where(
                table.c.instance_id == instance_id,
                table.c.execution_id == execution_id,
                table.c.event_id.in_(event_ids),
            )
        )


def inbox_pending(conn: Connection, instance_id: str) -> bool:
    """Whether the instance has inbox messages (on the caller's connection)."""
    return conn.execute(hot.INBOX_PENDING, {"iid": instance_id}).first() is not None


def _set_clause(values: dict[str, Any], **where: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The column names a prebuilt UPDATE sets (its cache key) and its parameters (`v_<column>`, plus `where`)."""
    columns = tuple(sorted(values))
    params = {f"v_{c}": values[c] for c in columns}
    params.update(where)
    return columns, params


def _work_item_params(key: tuple[str, int, int], owner: str, **more: Any) -> dict[str, Any]:
    """Parameters naming one activity row (hot_statements: `iid`, `exec`, `eid`) and the lease `owner`."""
    return {"iid": key[0], "exec": key[1], "eid": key[2], "owner": owner, **more}


def now_ms() -> int:
    return int(time.time() * 1000)


class _Refused(Exception):
    """Aborts a claim transaction (undoing its writes) with the reason."""

    def __init__(self, busy: SessionBusy):
        self.busy = busy


class Store:
    """Named queries over one SQLAlchemy engine; what differs per database is `self.dialect`'s (dialect.py).
    Thread-safe; create one per process (after fork)."""

    def __init__(self, engine: Engine, *, lease_engine: Engine | None = None, serialize_all: bool = False):
        self.engine = engine
        #: PostgreSQL: connections whose commits do not wait for the WAL flush, for lease-only transactions (see
        #: `lease_transaction`). Defaults to `engine`.
        self.lease_engine = lease_engine or engine
        #: `serialize_all`: an in-memory SQLite database is one shared connection, so reads queue like writes.
        self.dialect = dialect_for(engine, serialize_all=serialize_all)
        self._lease_keeper: LeaseKeeper | None = None
        self._keeper_lock = threading.Lock()

    # -- transactions -------------------------------------------------------------------------------------------
    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction (SQLite: behind the process's writer lock, `BEGIN IMMEDIATE`)."""
        return self.dialect.write(self.engine)

    @contextmanager
    def lease_transaction(self) -> Iterator[Connection]:
        """A write transaction that only takes or extends leases (and reads). On PostgreSQL its commit skips the
        wait for the WAL flush (synchronous_commit=off): a database crash can lose such a commit but never
        reorders it, and a lost lease is only a lease nobody holds, which the owner-guarded writes that follow
        (the turn's commit, an activity's completion) detect. Everything that records progress stays durable."""
        with self.dialect.write(self.lease_engine) as conn:
            yield conn

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection for several transactions in a row (the caller begins and ends them)."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.dialect.read_lock(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _reusing(self, conn: Connection | None, open_new: Callable[[], Any]) -> Iterator[Connection]:
        """The caller's connection (and transaction) when given one, else a new one from `open_new`."""
        if conn is not None:
            yield conn
        else:
            with open_new() as new_conn:
                yield new_conn

    def _writing(self, conn: Connection | None) -> Any:
        return self._reusing(conn, self.write)

    def _reading(self, conn: Connection | None) -> Any:
        return self._reusing(conn, self.read)

    # -- starting instances -------------------------------------------------------------------------------------
    def create_instance(
        self,
        conn: Connection,
        instance_id: str,
        name: str,
        input_json: str,
        version: str | None = None,
        parent: tuple[str, int, int] | None = None,
        now: int | None = None,
    ) -> bool:
        """Insert an instance, its first execution and its StartOrchestration message. False if the id exists
        (the first start wins)."""
        now = now or now_ms()
        payload: dict[str, Any] = {"name": name, "input": input_json, "version": version}
        if parent:
            payload.update(parent_instance_id=parent[0], parent_execution_id=parent[1], parent_event_id=parent[2])
        params = {
            "iid": instance_id,
            "name": name,
            "version": version,
            "parent": parent[0] if parent else None,
            "now": now,
            "payload": json.dumps(payload),
        }
        return self.dialect.create_instance(conn, params)

    def enqueue(
        self, conn: Connection, instance_id: str, kind: str, payload: dict[str, Any], now: int | None = None
    ) -> None:
        conn.execute(
            hot.INSERT_INBOX,
            {"instance_id": instance_id, "kind": kind, "payload": json.dumps(payload), "created_at": now or now_ms()},
        )

    def enqueue_many(self, conn: Connection, rows: list[tuple[str, str, dict[str, Any]]], now: int) -> None:
        if rows:
            conn.execute(
                hot.INSERT_INBOX,
                [{"instance_id": i, "kind": k, "payload": json.dumps(p), "created_at": now} for i, k, p in rows],
            )

    def enqueue_if_running(self, instance_id: str, kind: str, payload: dict[str, Any]) -> str | None:
        """Queue a message for a live instance and return its orchestration name (the wake-up's label); None
        (nothing written) if it is unknown or already ended."""
        with self.write() as conn:
            # FOR UPDATE (PostgreSQL): a concurrent delete_tree either sees this message or makes us see no row.
            row = conn.execute(
                select(instances.c.status, instances.c.orchestration_name)
                .where(instances.c.instance_id == instance_id)
                .with_for_update()
            ).first()
            if row is None or row[0] in TERMINAL_STATUSES:
                return None
            self.enqueue(conn, instance_id, kind, payload)
            return str(row[1])

    # -- turns --------------------------------------------------------------------------------------------------
    def begin_turn(self, instance_id: str, owner: str, lease_ms: int) -> TurnTransaction:
        """The transactions of one turn, shaped by the database (turn_shapes.py); use it as a context manager."""
        return self.dialect.begin_turn(self, instance_id, owner, lease_ms)

    @property
    def lease_keeper(self) -> LeaseKeeper:
        """Renews the leases of turns whose replay runs long outside a transaction (started on first use)."""
        if self._lease_keeper is None:
            with self._keeper_lock:
                if self._lease_keeper is None:
                    self._lease_keeper = LeaseKeeper(self.renew_instance)
        return self._lease_keeper

    def commit_turn(
        self, lease: InstanceLease, changes: TurnChanges, *, conn: Connection, check_more: bool = False
    ) -> PublishPlan:
        """Write everything a turn decided, in the caller's transaction (TurnTransaction.commit opens it); returns
        what to publish once it commits, and (`check_more`) whether more messages wait, read after the fence."""
        instance_id, exec_id = lease.instance_id, lease.execution_id
        now = now_ms()
        # First: the fence (LeaseLost unless the lease is still ours) and the instance row lock until commit.
        self.finish_instance(conn, instance_id, lease.owner, **changes.instance)
        self.append_history(conn, instance_id, exec_id, changes.history)
        more = self.delete_inbox(conn, changes.consumed, more_of=instance_id if check_more else None)
        activities = changes.activities
        self.add_work_items(
            conn, instance_id, exec_id, changes.orchestration, activities, now, changes.default_activity_ttl_ms
        )
        # Activities of a session some worker holds go straight to that worker's session queue.
        owners = self.session_owners(conn, (a.session_id for a in activities if a.session_id))
        self.delete_work_items(conn, instance_id, exec_id, changes.cancelled_activities)
        self.add_timers(conn, instance_id, exec_id, changes.timers)
        self.delete_timers(conn, instance_id, exec_id, changes.cancelled_timers)
        pokes = self._send_messages(conn, instance_id, exec_id, changes, now)
        self.apply_kv(conn, instance_id, changes.kv_ops)
        if changes.custom_status_changed:
            self.bump_custom_status(conn, instance_id, changes.custom_status)
        if changes.next_execution is not None:
            self.new_execution(conn, instance_id, exec_id + 1, changes.next_execution.kv_state, now)
            self.enqueue(conn, instance_id, ev.MSG_CONTINUE_AS_NEW, changes.next_execution.payload, now)
            pokes.append((instance_id, changes.orchestration[0] or None))  # the next execution starts now
        self.update_execution(conn, instance_id, exec_id, **changes.execution)
        return PublishPlan(
            activities=[
                PendingActivity(instance_id, exec_id, a.event_id, a.name, a.session_id, a.tag, owners.get(a.session_id))
                for a in activities
            ],
            pokes=pokes,
            first_timer_at=min((t.fire_at_ms for t in changes.timers), default=None),
            more=more,
        )

    def _send_messages(
        self, conn: Connection, instance_id: str, exec_id: int, changes: TurnChanges, now: int
    ) -> list[tuple[str, str | None]]:
        """A turn's child starts, cancels and parent notifications; returns the instances to wake for them."""
        pokes: list[tuple[str, str | None]] = []
        for child in changes.child_starts:
            parent = (instance_id, exec_id, child.parent_event_id) if child.parent_event_id is not None else None
            if self.create_instance(conn, child.instance_id, child.name, child.input, child.version, parent, now):
                pokes.append((child.instance_id, child.name))
            elif child.if_taken is not None:
                self.enqueue(conn, child.if_taken.instance_id, child.if_taken.kind, child.if_taken.payload, now)
                pokes.append((child.if_taken.instance_id, None))
        for cancel in changes.cancels:
            status = self.instance_status(conn, cancel.instance_id)
            if status is not None and status not in TERMINAL_STATUSES:
                self.enqueue(conn, cancel.instance_id, cancel.kind, cancel.payload, now)
                pokes.append((cancel.instance_id, None))
        for note in changes.parent_notifications:
            self.enqueue(conn, note.instance_id, note.kind, note.payload, now)
            # The parent's name makes this poke read `orch:<Parent>#<id>` in Flower (one primary-key read).
            pokes.append((note.instance_id, self.orchestration_name(conn, note.instance_id)))
        return pokes

    def acquire_instance(
        self, instance_id: str, owner: str, lease_ms: int, conn: Connection | None = None, require_inbox: bool = False
    ) -> InstanceLease | None:
        """Lease the instance for a turn; None if another worker holds it, it is backed off, or (`require_inbox`)
        it has no pending message, which spares a duplicate poke any write. The lease runs `lease_ms` from the
        database's clock, and only a lease expired by that clock can be taken over."""
        statement = hot.ACQUIRE_WITH_INBOX if require_inbox else hot.ACQUIRE
        params = {"iid": instance_id, "now": now_ms(), "owner": owner, "lease_ms": lease_ms}
        with self._writing(conn) as conn:
            row = conn.execute(statement, params).first()
        if row is None:
            return None
        return InstanceLease(instance_id, *row, owner=owner)

    def renew_instance(self, instance_id: str, owner: str, lease_ms: int) -> bool:
        """Extend a turn's instance lease (a turn that runs long); False when `owner` no longer holds it."""
        with self.lease_transaction() as conn:
            return bool(
                conn.execute(hot.RENEW_INSTANCE, {"iid": instance_id, "owner": owner, "lease_ms": lease_ms}).rowcount
            )

    def known_tags(self) -> list[str]:
        """Activity tags of pending work (workers with TagFilter.ANY consume each one's queue)."""
        with self.read() as conn:
            rows = conn.execute(select(work_items.c.tag).where(work_items.c.tag.is_not(None)).distinct()).all()
        return [r[0] for r in rows]

    def wake_backed_off(self, orchestration_names: list[str]) -> list[tuple[str, str]]:
        """End the unregistered-handler backoff of instances of these orchestrations; returns (id, name) of each."""
        now = now_ms()
        with self.write() as conn:
            rows = conn.execute(
                update(instances)
                .where(
                    instances.c.next_attempt_at > now,
                    instances.c.orchestration_name.in_(orchestration_names),
                    instances.c.status == "Running",
                )
                .values(next_attempt_at=0)
                .returning(instances.c.instance_id, instances.c.orchestration_name)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def count_failed_attempt(self, instance_id: str, cause: str | None = None) -> None:
        """Record a turn that crashed before committing, so a turn that always crashes ends as poison; `cause`
        (what it raised) is kept in `waiting_reason` for the poison decision to name."""
        with self.write() as conn:
            conn.execute(
                update(instances)
                .where(instances.c.instance_id == instance_id, instances.c.status == "Running")
                .values(attempt_count=instances.c.attempt_count + 1, waiting_reason=cause)
            )

    def release_instance(
        self,
        instance_id: str,
        owner: str,
        *,
        reset_attempts: bool,
        next_attempt_at: int = 0,
        waiting_reason: str | None = None,
        consumed_ids: Iterable[int] = (),
        conn: Connection | None = None,
        check_more: bool = False,
    ) -> bool:
        """Give the lease back without a turn; the consumed messages are deleted only while the lease is ours
        (LeaseLost otherwise: whoever took over reads them). With `check_more`: whether other messages wait.
        `waiting_reason` says why the instance waits (a backoff for a missing handler); any other release clears
        it in the same UPDATE."""
        with self._writing(conn) as conn:
            values: dict[str, Any] = {
                "lock_owner": None,
                "locked_until": 0,
                "next_attempt_at": next_attempt_at,
                "waiting_reason": waiting_reason,
            }
            if reset_attempts:
                values["attempt_count"] = 0
            released = conn.execute(
                update(instances)
                .where(instances.c.instance_id == instance_id, instances.c.lock_owner == owner)
                .values(**values)
            ).rowcount
            ids = list(consumed_ids)
            if ids and not released:
                raise LeaseLost(instance_id)
            return self.delete_inbox(conn, ids, more_of=instance_id if check_more else None)

    def load_turn(
        self, instance_id: str, execution_id: int, after_event_id: int = 0, conn: Connection | None = None
    ) -> TurnLoad:
        """History of the execution (events after `after_event_id`: the caller caches the prefix, which never
        changes), pending inbox messages (id, message) and the execution's KV snapshot."""
        with self._reading(conn) as conn:
            msgs = conn.execute(hot.INBOX_OF, {"iid": instance_id}).all()
            if not msgs:
                return [], [], {}
            events = conn.execute(
                hot.HISTORY_AFTER, {"iid": instance_id, "exec": execution_id, "after": after_event_id}
            ).all()
            snapshot_text = None
            if execution_id > 1:  # the first execution starts with no KV; later ones carry it from their predecessor
                snapshot_text = conn.execute(hot.KV_SNAPSHOT, {"iid": instance_id, "exec": execution_id}).scalar()
        messages = []
        for msg_id, kind, payload in msgs:
            body = json.loads(payload)
            body["kind"] = kind
            messages.append((msg_id, body))
        hist = [HistoryEvent(eid, kind, json.loads(data), src, ts) for eid, kind, data, src, ts in events]
        snapshot = {k: (v[0], v[1]) for k, v in json.loads(snapshot_text or "{}").items()}
        return hist, messages, snapshot

    def has_inbox(self, instance_id: str, conn: Connection | None = None) -> bool:
        with self._reading(conn) as conn:
            return inbox_pending(conn, instance_id)

    def orchestration_name(self, conn: Connection, instance_id: str) -> str | None:
        return conn.execute(
            select(instances.c.orchestration_name).where(instances.c.instance_id == instance_id)
        ).scalar()

    def instance_status(self, conn: Connection, instance_id: str) -> str | None:
        return conn.execute(select(instances.c.status).where(instances.c.instance_id == instance_id)).scalar()

    def append_history(self, conn: Connection, instance_id: str, execution_id: int, events: list[HistoryEvent]) -> None:
        if events:
            conn.execute(
                hot.INSERT_HISTORY,
                [
                    {
                        "instance_id": instance_id,
                        "execution_id": execution_id,
                        "event_id": e.event_id,
                        "kind": e.kind,
                        "source_event_id": e.source_event_id,
                        "timestamp_ms": e.timestamp_ms,
                        "data": json.dumps(e.data, separators=(",", ":")),
                    }
                    for e in events
                ],
            )

    def delete_inbox(self, conn: Connection, ids: list[int], more_of: str | None = None) -> bool:
        """Delete consumed messages. With `more_of` (an instance id): whether that instance has other messages,
        read after the delete (on PostgreSQL in the same statement); else False."""
        if more_of is None:
            if ids:
                conn.execute(hot.DELETE_INBOX, {"ids": ids})
            return False
        if ids:
            return self.dialect.consume_inbox_and_check(conn, ids, more_of)
        return inbox_pending(conn, more_of)

    def add_work_items(
        self,
        conn: Connection,
        instance_id: str,
        execution_id: int,
        orch: tuple[str, str],
        items: list[NewActivity],
        now: int,
        default_ttl_ms: int | None = None,
    ) -> None:
        """Insert the activities a turn scheduled; one with a ttl (its own, else the runtime default) gets a claim
        deadline, after which it fails unless a worker has claimed it."""
        if items:
            conn.execute(
                hot.INSERT_WORK_ITEMS,
                [
                    {
                        "instance_id": instance_id,
                        "execution_id": execution_id,
                        "event_id": a.event_id,
                        "name": a.name,
                        "input": a.input,
                        "session_id": a.session_id,
                        "tag": a.tag,
                        "orchestration_name": orch[0],
                        "orchestration_version": orch[1],
                        "locked_until": 0,
                        "attempt_count": 0,
                        "visible_at": 0,
                        "created_at": now,
                        "published_at": now,
                        "claim_deadline": now + ttl if (ttl := a.ttl_ms or default_ttl_ms) else 0,
                    }
                    for a in items
                ],
            )

    def session_owners(self, conn: Connection, session_ids: Iterable[str]) -> dict[str, str]:
        """The live owners (node ids) of these sessions; a session nobody holds is absent."""
        ids = sorted(set(session_ids))
        if not ids:
            return {}
        rows = conn.execute(
            select(sessions.c.session_id, sessions.c.owner).where(
                sessions.c.session_id.in_(ids), sessions.c.locked_until > now_ms()
            )
        ).all()
        return {r[0]: r[1] for r in rows}

    def delete_work_items(self, conn: Connection, instance_id: str, execution_id: int, event_ids: list[int]) -> None:
        _delete_scheduled(conn, work_items, instance_id, execution_id, event_ids)

    def add_timers(self, conn: Connection, instance_id: str, execution_id: int, items: list[NewTimer]) -> None:
        if items:
            conn.execute(
                insert(timers),
                [
                    {
                        "instance_id": instance_id,
                        "execution_id": execution_id,
                        "event_id": t.event_id,
                        "fire_at_ms": t.fire_at_ms,
                    }
                    for t in items
                ],
            )

    def delete_timers(self, conn: Connection, instance_id: str, execution_id: int, event_ids: list[int]) -> None:
        _delete_scheduled(conn, timers, instance_id, execution_id, event_ids)

    def apply_kv(self, conn: Connection, instance_id: str, ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            if op[0] == "set":
                _, key, value, stamp = op
                updated = conn.execute(
                    update(kv)
                    .where(kv.c.instance_id == instance_id, kv.c.key == key)
                    .values(value=value, last_updated_at_ms=stamp)
                ).rowcount
                if not updated:
                    conn.execute(
                        insert(kv).values(instance_id=instance_id, key=key, value=value, last_updated_at_ms=stamp)
                    )
            elif op[0] == "clear":
                conn.execute(delete(kv).where(kv.c.instance_id == instance_id, kv.c.key == op[1]))
            else:
                conn.execute(delete(kv).where(kv.c.instance_id == instance_id))

    def update_execution(self, conn: Connection, instance_id: str, execution_id: int, **values: Any) -> None:
        if values:  # most turns change nothing here: no statement for them
            columns, params = _set_clause(values, iid=instance_id, exec=execution_id)
            conn.execute(hot.update_execution(columns), params)

    def new_execution(
        self, conn: Connection, instance_id: str, execution_id: int, kv_state: dict[str, tuple[str, int]], now: int
    ) -> None:
        conn.execute(
            insert(executions).values(
                instance_id=instance_id,
                execution_id=execution_id,
                status="Running",
                started_at=now,
                event_count=0,
                kv_snapshot=json.dumps({k: list(v) for k, v in kv_state.items()}),
            )
        )

    def finish_instance(self, conn: Connection, instance_id: str, owner: str, **values: Any) -> None:
        """Write the instance's new state and release its lease: the first statement of every turn's commit, and
        its fence. It proves the lease is still ours (LeaseLost aborts the whole turn otherwise) and row-locks the
        instance until the commit, so a worker that takes over a lease that lapsed mid-turn waits for our commit
        instead of racing it. (A plain read as the fence once let a lapsed lease be taken between the check and
        the commit: tests/production/test_leases.py.)"""
        values["updated_at"] = now_ms()
        columns, params = _set_clause(values, iid=instance_id, owner=owner)
        finished = conn.execute(hot.finish_instance(columns), params).rowcount
        if not finished:
            raise LeaseLost(instance_id)

    def bump_custom_status(self, conn: Connection, instance_id: str, status: str | None) -> None:
        conn.execute(
            update(instances)
            .where(instances.c.instance_id == instance_id)
            .values(custom_status=status, custom_status_version=instances.c.custom_status_version + 1)
        )

    # -- activities ---------------------------------------------------------------------------------------------
    def claim_work_item(
        self,
        key: tuple[str, int, int],
        owner: str,
        lease_ms: int,
        policy: SessionPolicy | None = None,
        node: str | None = None,
    ) -> ClaimedWorkItem | SessionBusy | None:
        """Take the lease of an activity row for `owner` (one execution of it); None if it is done, cancelled,
        past its claim deadline, or held by a live lease. A session activity also claims (or renews) its session
        for the worker `node` (default: `owner`), in the same transaction; SessionBusy (and no claim) when another
        live worker owns the session, or when `node` already holds `policy.max_sessions` sessions."""
        now = now_ms()
        try:
            with self.lease_transaction() as conn:
                row = conn.execute(
                    hot.CLAIM_WORK_ITEM,
                    _work_item_params(key, owner, now=now, lease_ms=lease_ms),
                ).first()
                if row is None:
                    return None
                item = ClaimedWorkItem(key[0], key[1], key[2], *row, owner=owner)
                if item.session_id is not None and policy is not None:
                    busy = self._claim_session(conn, item.session_id, node or owner, now, policy)
                    if busy is not None:
                        busy.activity = PendingActivity(*key, item.name, item.session_id, item.tag, busy.owner)
                        raise _Refused(busy)
        except _Refused as refused:
            return refused.busy
        return item

    def _claim_session(
        self, conn: Connection, session_id: str, owner: str, now: int, policy: SessionPolicy
    ) -> SessionBusy | None:
        held = conn.execute(
            select(sessions.c.owner, sessions.c.locked_until).where(sessions.c.session_id == session_id)
        ).first()
        if held is not None and held[0] != owner and held[1] > now:
            return SessionBusy(held[0])
        if held is None or held[0] != owner:  # a session new to this worker counts against its cap
            # Two claims of new sessions by one worker at once must not both count below the cap and both win.
            self.dialect.lock_session_claims(conn, owner)
            owned = conn.execute(
                select(func.count()).where(sessions.c.owner == owner, sessions.c.locked_until > now)
            ).scalar()
            if owned >= policy.max_sessions:
                return SessionBusy(None)
        upsert = self.dialect.sql.insert(sessions).values(
            session_id=session_id, owner=owner, locked_until=now + policy.lock_ms, last_activity_at=now
        )
        won = conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[sessions.c.session_id],
                set_={"owner": owner, "locked_until": now + policy.lock_ms, "last_activity_at": now},
                # Only a free, expired or already-ours session: two workers claiming at once get one owner.
                where=or_(sessions.c.owner == owner, sessions.c.locked_until <= now),
            ).returning(sessions.c.owner)
        ).first()
        if won is None:
            winner = conn.execute(select(sessions.c.owner).where(sessions.c.session_id == session_id)).scalar()
            return SessionBusy(winner)
        return None

    def renew_sessions(self, owner: str, lock_ms: int, idle_ms: int, busy: Iterable[str] = ()) -> int:
        """Heartbeat of a worker's sessions: sessions with a running activity (`busy`) count as active now; the
        ones idle past `idle_ms` are released (their next activity may go to any worker); the rest are renewed.
        Returns how many sessions `owner` still holds."""
        now = now_ms()
        busy_ids = sorted(set(busy))
        with self.lease_transaction() as conn:
            if busy_ids:
                conn.execute(
                    update(sessions)
                    .where(sessions.c.owner == owner, sessions.c.session_id.in_(busy_ids))
                    .values(last_activity_at=now)
                )
            conn.execute(
                delete(sessions).where(sessions.c.owner == owner, sessions.c.last_activity_at <= now - idle_ms)
            )
            return conn.execute(
                update(sessions).where(sessions.c.owner == owner).values(locked_until=now + lock_ms)
            ).rowcount

    def release_sessions(self, owner: str) -> int:
        """Give up every session `owner` holds (a worker shutting down without a stable node id)."""
        with self.lease_transaction() as conn:
            return conn.execute(delete(sessions).where(sessions.c.owner == owner)).rowcount

    def renew_work_items(self, held: list[HeldWorkItem], lease_ms: int) -> set[HeldWorkItem]:
        """Extend the leases we hold, given as (activity row, its lease owner); returns those whose row is gone or
        was taken by another lease holder (cancelled or lost)."""
        lost: set[HeldWorkItem] = set()
        with self.lease_transaction() as conn:
            for key, owner in held:
                params = _work_item_params(key, owner, lease_ms=lease_ms)
                if not conn.execute(hot.RENEW_WORK_ITEM, params).rowcount:
                    lost.add((key, owner))
        return lost

    def owned_work_items(self, held: list[HeldWorkItem]) -> set[HeldWorkItem]:
        """Which of these (activity row, lease owner) still exist under that owner (a read: no lock taken)."""
        if not held:
            return set()
        instance_ids = sorted({key[0] for key, _ in held})
        owners = sorted({owner for _, owner in held})
        with self.read() as conn:
            rows = conn.execute(
                select(
                    work_items.c.instance_id, work_items.c.execution_id, work_items.c.event_id, work_items.c.lock_owner
                ).where(work_items.c.instance_id.in_(instance_ids), work_items.c.lock_owner.in_(owners))
            ).all()
        return {((r[0], r[1], r[2]), r[3]) for r in rows} & set(held)

    def complete_work_item(
        self,
        key: tuple[str, int, int],
        owner: str,
        result: str,
        session_id: str | None = None,
        node: str | None = None,
    ) -> bool:
        """Record an activity's result (JSON text) at most once: delete our leased row and queue ActivityCompleted,
        atomically. False when the row is gone or another lease holder has it (the outcome is dropped). `node`
        (default `owner`): the worker whose session's idle clock restarts."""
        return self._record_outcome(key, owner, ev.MSG_ACTIVITY_COMPLETED, {"result": result}, session_id, node)

    def fail_work_item(
        self,
        key: tuple[str, int, int],
        owner: str,
        details: dict[str, Any],
        session_id: str | None = None,
        node: str | None = None,
    ) -> bool:
        """Record an activity's failure (`details`, error_details' shape) at most once, as complete_work_item."""
        return self._record_outcome(key, owner, ev.MSG_ACTIVITY_FAILED, {"details": details}, session_id, node)

    def _record_outcome(
        self,
        key: tuple[str, int, int],
        owner: str,
        kind: str,
        payload: dict[str, Any],
        session_id: str | None,
        node: str | None,
    ) -> bool:
        params = _work_item_params(key, owner, now=now_ms())
        message = dict(payload, execution_id=key[1], event_id=key[2])
        with self.write() as conn:
            if not self.dialect.complete_work_item(conn, params, kind, message):
                return False
            if session_id is not None:  # the session's idle clock starts now
                conn.execute(
                    update(sessions)
                    .where(sessions.c.session_id == session_id, sessions.c.owner == (node or owner))
                    .values(last_activity_at=now_ms())
                )
            return True

    def abandon_work_item(
        self, key: tuple[str, int, int], owner: str, visible_at: int, waiting_reason: str | None = None
    ) -> None:
        """Give an activity row we hold back, visible again at `visible_at`. With `waiting_reason` (a backoff for
        a missing handler), the running instance says why it waits until its next turn clears it."""
        params = _work_item_params(key, owner, visible=visible_at)
        with self.write() as conn:
            abandoned = conn.execute(hot.ABANDON_WORK_ITEM, params).rowcount
            if abandoned and waiting_reason is not None:
                conn.execute(
                    update(instances)
                    .where(
                        instances.c.instance_id == key[0],
                        instances.c.current_execution_id == key[1],
                        instances.c.status == "Running",
                    )
                    .values(waiting_reason=waiting_reason)
                )

    # -- timers -------------------------------------------------------------------------------------------------
    def next_due(self) -> tuple[int | None, int | None]:
        """When the next durable timer fires and when the next unclaimed activity reaches its claim deadline, in
        one round trip: beat and the embedded scheduler ask this on every tick."""
        with self.read() as conn:
            timer, deadline = conn.execute(hot.NEXT_DUE).one()
        return timer, deadline

    def expire_unclaimed(self, limit: int = 500) -> list[tuple[str, str | None]]:
        """Fail the activities that no worker claimed before their claim deadline (ttl_ms): the rows are deleted
        (one statement) and an ActivityFailed queued for each instance, in one transaction; returns the instances
        to poke. A claim
        clears the deadline, and a row is deleted by one caller only, so this races safely with claims."""
        now = now_ms()
        is_due = and_(work_items.c.claim_deadline > 0, work_items.c.claim_deadline <= now)
        with self.read() as conn:  # the common case, nothing expired, takes no write lock (SQLite) to learn it
            if conn.execute(select(work_items.c.event_id).where(is_due).limit(1)).first() is None:
                return []
        key = (work_items.c.instance_id, work_items.c.execution_id, work_items.c.event_id)
        picked = self.dialect.skip_locked(select(*key).where(is_due).limit(limit))
        with self.write() as conn:
            expired = conn.execute(
                delete(work_items)
                .where(tuple_(*key).in_(picked), is_due)
                .returning(
                    *key,
                    work_items.c.name,
                    work_items.c.tag,
                    work_items.c.claim_deadline - work_items.c.created_at,
                    work_items.c.orchestration_name,
                )
            ).all()
            failed, messages = [], []
            for instance_id, execution_id, event_id, name, tag, ttl, orch_name in expired:
                served = f"tag '{tag}'" if tag else "untagged activities"
                message = (
                    f"activity '{name}' was not picked up by any worker within its ttl of {ttl} ms "
                    f"(no running worker serves {served})"
                )
                details = error_details(ev.APPLICATION, message, "NotPickedUp")  # catchable: the code may fall back
                payload = {"execution_id": execution_id, "event_id": event_id, "details": details}
                messages.append((instance_id, ev.MSG_ACTIVITY_FAILED, payload))
                failed.append((instance_id, orch_name))
            self.enqueue_many(conn, messages, now)
        return failed

    def fire_due_timers(self, limit: int = 500) -> tuple[list[tuple[str, str | None]], int]:
        """Move up to `limit` due timers into their instances' inboxes, in one transaction; returns the instances
        to poke, as (instance id, orchestration name) so the pokes show in Flower as `orch:<Name>#<id>`, not
        `orch:#<id>`, and how many timers fired. Idempotent: a timer row is deleted by exactly one firer, so it
        fires into history once."""
        with self.write() as conn:
            return self.dialect.fire_due_timers(conn, now_ms(), limit)

    # -- recovery -----------------------------------------------------------------------------------------------
    def stale_instances(self, older_than_ms: int, limit: int = 1000) -> list[tuple[str, str | None]]:
        """Instances with inbox messages older than the threshold whose lease is free or expired, as (instance id,
        orchestration name) for the pokes' Flower names."""
        now = now_ms()
        with self.read() as conn:
            rows = conn.execute(
                select(inbox.c.instance_id, instances.c.orchestration_name)
                .join(instances, instances.c.instance_id == inbox.c.instance_id, isouter=True)
                .where(
                    inbox.c.created_at <= now - older_than_ms,
                    or_(instances.c.lock_owner.is_(None), instances.c.locked_until < now),
                    or_(instances.c.next_attempt_at.is_(None), instances.c.next_attempt_at <= now),
                )
                .group_by(inbox.c.instance_id, instances.c.orchestration_name)
                .limit(limit)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def stale_work_items(self, older_than_ms: int, limit: int = 1000) -> list[PendingActivity]:
        """Activity rows that no live worker holds and that were last published before the threshold."""
        now = now_ms()
        with self.write() as conn:
            rows = conn.execute(
                select(
                    work_items.c.instance_id,
                    work_items.c.execution_id,
                    work_items.c.event_id,
                    work_items.c.name,
                    work_items.c.session_id,
                    work_items.c.tag,
                    sessions.c.owner,
                )
                # A session's live owner gets its work on its session queue; a dead owner's lease has expired,
                # so its sessions' work goes back to the claim path (nothing stays stranded in its queue).
                .join(
                    sessions,
                    and_(sessions.c.session_id == work_items.c.session_id, sessions.c.locked_until > now),
                    isouter=True,
                )
                .where(
                    work_items.c.published_at <= now - older_than_ms,
                    work_items.c.visible_at <= now,
                    or_(work_items.c.lock_owner.is_(None), work_items.c.locked_until < now),
                )
                .limit(limit)
            ).all()
            for r in rows:
                conn.execute(
                    update(work_items)
                    .where(
                        and_(
                            work_items.c.instance_id == r[0],
                            work_items.c.execution_id == r[1],
                            work_items.c.event_id == r[2],
                        )
                    )
                    .values(published_at=now)
                )
        return [PendingActivity(*r) for r in rows]

    # -- reads for the client -----------------------------------------------------------------------------------
    def get_instance(self, instance_id: str) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(hot.INSTANCE, {"iid": instance_id}).mappings().first()
        return dict(row) if row else None

    def list_executions(self, instance_id: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            event_count = (
                select(func.count())
                .where(
                    history.c.instance_id == executions.c.instance_id,
                    history.c.execution_id == executions.c.execution_id,
                )
                .scalar_subquery()
            )
            rows = (
                conn.execute(
                    select(*[c for c in executions.c if c.name != "event_count"], event_count.label("event_count"))
                    .where(executions.c.instance_id == instance_id)
                    .order_by(executions.c.execution_id)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def read_history(self, instance_id: str, execution_id: int) -> list[HistoryEvent]:
        with self.read() as conn:
            rows = conn.execute(
                select(
                    history.c.event_id,
                    history.c.kind,
                    history.c.data,
                    history.c.source_event_id,
                    history.c.timestamp_ms,
                )
                .where(history.c.instance_id == instance_id, history.c.execution_id == execution_id)
                .order_by(history.c.event_id)
            ).all()
        return [HistoryEvent(eid, kind, json.loads(data), src, ts) for eid, kind, data, src, ts in rows]

    def get_kv(self, instance_id: str, key: str, conn: Connection | None = None) -> str | None:
        with self._reading(conn) as conn:
            return conn.execute(select(kv.c.value).where(kv.c.instance_id == instance_id, kv.c.key == key)).scalar()

    def list_instances(self, status: str | None = None) -> list[str]:
        with self.read() as conn:
            query = select(instances.c.instance_id).order_by(instances.c.created_at, instances.c.instance_id)
            if status:
                query = query.where(instances.c.status == status)
            return [r[0] for r in conn.execute(query).all()]

    # -- management: trees, delete, prune, metrics ---------------------------------------------------------------
    def instance_tree(self, instance_id: str) -> list[str] | None:
        """The instance and its descendants (root first, then level by level); None if the id is unknown."""
        with self.read() as conn:
            if conn.execute(select(instances.c.instance_id).where(instances.c.instance_id == instance_id)).first():
                return self._tree(conn, instance_id, lock=False)
        return None

    def _tree(self, conn: Connection, root_id: str, *, lock: bool) -> list[str]:
        """Walk parent_instance_id downwards. With `lock` (PostgreSQL) every row is locked as it is found: a turn
        still committing a child waits for us or we for it, so a child created meanwhile is found, never left."""
        ids, seen, level = [root_id], {root_id}, [root_id]
        while level:
            found: list[tuple[int, str]] = []
            for chunk in _chunks(level):
                query = select(instances.c.created_at, instances.c.instance_id).where(
                    instances.c.parent_instance_id.in_(chunk)
                )
                if lock:
                    query = query.with_for_update()
                found.extend((r[0], r[1]) for r in conn.execute(query).all() if r[1] not in seen)
            level = [i for _, i in sorted(found)]
            seen.update(level)
            ids.extend(level)
        return ids

    def delete_tree(self, instance_id: str, *, force: bool) -> TreeDeletion:
        """Delete a root instance and all its descendants with every row they own, in one transaction.

        Refuses (nothing written) when the id is unknown, is a sub-orchestration, or when any member is still
        running and not `force`. Rows go in an order that closes races on PostgreSQL: instance rows are locked
        first (turns and signals fence on them), timers and work items go before the inbox, so a timer firing or
        an activity completing concurrently has either committed its inbox message (deleted here) or finds its
        row gone (and writes nothing)."""
        with self.write() as conn:
            row = conn.execute(
                select(instances.c.parent_instance_id).where(instances.c.instance_id == instance_id).with_for_update()
            ).first()
            if row is None:
                return TreeDeletion("not_found")
            if row[0] is not None:
                return TreeDeletion("sub_orchestration", parent_id=row[0])
            ids = self._tree(conn, instance_id, lock=True)
            if not force:
                running: list[str] = []
                for chunk in _chunks(ids):
                    running.extend(
                        r[0]
                        for r in conn.execute(
                            select(instances.c.instance_id).where(
                                instances.c.instance_id.in_(chunk), instances.c.status.not_in(TERMINAL_STATUSES)
                            )
                        ).all()
                    )
                if running:
                    return TreeDeletion("running", running_ids=sorted(running))
            counts = dict.fromkeys(("instances", "executions", "events", "queue_messages", "kv"), 0)
            for table, counter in (
                (timers, "queue_messages"),
                (work_items, "queue_messages"),
                (inbox, "queue_messages"),
                (history, "events"),
                (executions, "executions"),
                (kv, "kv"),
                (instances, "instances"),
            ):
                for chunk in _chunks(ids):
                    counts[counter] += conn.execute(delete(table).where(table.c.instance_id.in_(chunk))).rowcount
            return TreeDeletion("deleted", deleted_ids=ids, counts=counts)

    def select_instances(
        self,
        *,
        terminal_roots_only: bool,
        instance_ids: Iterable[str] | None,
        completed_before: int | None,
        limit: int,
    ) -> list[str]:
        """Ids for the bulk operations, oldest first: optionally only finished roots, only the given ids, only
        those whose current execution completed before `completed_before`; at most `limit`."""
        current = and_(
            executions.c.instance_id == instances.c.instance_id,
            executions.c.execution_id == instances.c.current_execution_id,
        )
        query = select(instances.c.created_at, instances.c.instance_id).select_from(
            instances.join(executions, current, isouter=True)
        )
        if terminal_roots_only:
            query = query.where(instances.c.parent_instance_id.is_(None), instances.c.status.in_(TERMINAL_STATUSES))
        if completed_before is not None:
            query = query.where(executions.c.completed_at < completed_before)
        query = query.order_by(instances.c.created_at, instances.c.instance_id).limit(limit)
        with self.read() as conn:
            if instance_ids is None:
                rows = conn.execute(query).all()
            else:
                rows = []
                for chunk in _chunks(sorted(set(instance_ids))):
                    rows.extend(conn.execute(query.where(instances.c.instance_id.in_(chunk))).all())
        return [r[1] for r in sorted(rows)[:limit]]

    def prune_executions(
        self, instance_id: str, *, keep_last: int, completed_before: int | None
    ) -> tuple[int, int] | None:
        """Delete old executions of an instance (with their history, timers and activity rows); returns
        (executions, events) deleted, or None if the id is unknown. Never touches the current execution or a
        running one; keeps the `keep_last` newest (at least 1); with `completed_before`, only older ones go."""
        with self.write() as conn:
            current = conn.execute(
                select(instances.c.current_execution_id).where(instances.c.instance_id == instance_id).with_for_update()
            ).scalar()
            if current is None:
                return None
            rows = conn.execute(
                select(executions.c.execution_id, executions.c.status, executions.c.completed_at)
                .where(executions.c.instance_id == instance_id)
                .order_by(executions.c.execution_id.desc())
            ).all()
            doomed = [
                execution_id
                for position, (execution_id, status, completed_at) in enumerate(rows)
                if position >= max(keep_last, 1)
                and execution_id != current
                and status != "Running"
                and (completed_before is None or (completed_at is not None and completed_at < completed_before))
            ]
            deleted_executions = deleted_events = 0
            for chunk in _chunks(doomed):
                for table in (timers, work_items):
                    conn.execute(
                        delete(table).where(table.c.instance_id == instance_id, table.c.execution_id.in_(chunk))
                    )
                deleted_events += conn.execute(
                    delete(history).where(history.c.instance_id == instance_id, history.c.execution_id.in_(chunk))
                ).rowcount
                deleted_executions += conn.execute(
                    delete(executions).where(
                        executions.c.instance_id == instance_id, executions.c.execution_id.in_(chunk)
                    )
                ).rowcount
            return deleted_executions, deleted_events

    def system_metrics(self) -> dict[str, int]:
        with self.read() as conn:
            by_status = dict(conn.execute(select(instances.c.status, func.count()).group_by(instances.c.status)).all())
            total_executions = conn.execute(select(func.count()).select_from(executions)).scalar() or 0
            total_events = conn.execute(select(func.count()).select_from(history)).scalar() or 0
        return {
            "total_instances": sum(by_status.values()),
            "total_executions": total_executions,
            "running_instances": by_status.get("Running", 0),
            "completed_instances": by_status.get("Completed", 0),
            "failed_instances": by_status.get("Failed", 0),
            "total_events": total_events,
        }

    def queue_depths(self) -> dict[str, int]:
        """Pending work nobody holds: inbox messages of instances with a free or expired lease, activity rows
        with no live lease, and timers."""
        now = now_ms()
        with self.read() as conn:
            orchestrator = conn.execute(
                select(func.count())
                .select_from(inbox.join(instances, instances.c.instance_id == inbox.c.instance_id, isouter=True))
                .where(or_(instances.c.lock_owner.is_(None), instances.c.locked_until < now))
            ).scalar()
            worker = conn.execute(
                select(func.count())
                .select_from(work_items)
                .where(or_(work_items.c.lock_owner.is_(None), work_items.c.locked_until < now))
            ).scalar()
            timer = conn.execute(select(func.count()).select_from(timers)).scalar()
        return {"orchestrator_queue": orchestrator or 0, "worker_queue": worker or 0, "timer_queue": timer or 0}

    def orchestration_stats(self, instance_id: str) -> dict[str, int] | None:
        with self.read() as conn:
            current = conn.execute(
                select(instances.c.current_execution_id).where(instances.c.instance_id == instance_id)
            ).scalar()
            if current is None:
                return None
            events, history_bytes = conn.execute(
                select(func.count(), func.coalesce(func.sum(self.dialect.byte_length(history.c.data)), 0)).where(
                    history.c.instance_id == instance_id, history.c.execution_id == current
                )
            ).one()
            pending = conn.execute(select(func.count()).where(inbox.c.instance_id == instance_id)).scalar()
            keys, kv_bytes = conn.execute(
                select(func.count(), func.coalesce(func.sum(self.dialect.byte_length(kv.c.value)), 0)).where(
                    kv.c.instance_id == instance_id
                )
            ).one()
        return {
            "history_event_count": int(events),
            "history_size_bytes": int(history_bytes),
            "queue_pending_count": int(pending or 0),
            "kv_user_key_count": int(keys),
            "kv_total_value_bytes": int(kv_bytes),
        }


#: Ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
