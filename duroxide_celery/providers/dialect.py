"""What differs between SQLite and PostgreSQL, in one object per database (the store itself never branches on it).

A dialect owns: how a write transaction begins and is serialized (SQLite: one writer, `BEGIN IMMEDIATE` behind
a fair process-local lock; PostgreSQL: row locks), the operations PostgreSQL does in one statement that SQLite
does in several (no data-modifying WITH there), row locking (`FOR UPDATE SKIP LOCKED`, advisory locks), and the
shape of a turn's transactions (`turn_shapes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import LargeBinary, cast, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from ..replay.events import HistoryEvent
from ..types import TERMINAL_STATUSES
from . import direct_sql
from . import hot_statements as hot
from .dto import CreatedInstance, TurnFence
from .fair_lock import FairRLock
from .schema import instances, timers
from .turn_shapes import LeaseThenCommitTurn, OneTransactionTurn, TurnOps, TurnTransaction

#: (instance id, orchestration name) of an instance to wake.
Wake = tuple[str, str | None]


class Dialect:
    """The narrow hooks the store calls where the databases differ; subclasses implement them."""

    #: SQLAlchemy's dialect module (its `insert` has `on_conflict_do_*`).
    sql: Any = None
    #: The INSERT of a new instance row that skips an existing id and returns the id it inserted.
    insert_new_instance: Any = None
    #: The shape of a turn's transactions (`turn_shapes`).
    turn_shape: type[TurnTransaction] = TurnTransaction
    #: Whether the commit that ends an instance tells other processes' waits (a NOTIFY from fence_turn, endings.py).
    notifies_endings = False

    def write(self, engine: Engine) -> AbstractContextManager[Connection]:
        """A write transaction on `engine` (committed when the block ends, rolled back on an exception)."""
        raise NotImplementedError

    def one_statement_write(self, engine: Engine) -> AbstractContextManager[Connection]:
        """A connection for one write statement that commits as it runs (callers run exactly one): a write
        transaction here."""
        return self.write(engine)

    def read_lock(self) -> AbstractContextManager[Any]:
        """Held around a read connection (a database of one shared connection queues its reads too)."""
        return nullcontext()

    def single_read(self, engine: Engine) -> AbstractContextManager[Connection]:
        """A connection for one read statement (callers run exactly one): a plain connection here."""
        return engine.connect()

    def create_instance(self, conn: Connection, params: dict[str, Any]) -> CreatedInstance | None:
        """Insert an instance (`iid`, `name`, `version`, `parent`, `now`), its first execution and its
        StartOrchestration message (`payload`); None if the id exists."""
        raise NotImplementedError

    def fence_turn(self, conn: Connection, fence: TurnFence) -> tuple[set[str], bool] | None:
        """The first writes of a turn's commit, only while `fence.owner` holds the lease (None, and nothing
        written, otherwise); the instance row stays locked until the commit. Returns which of the turn's activities
        have limits, and whether a poke was refused while the lease was held (messages may wait)."""
        raise NotImplementedError

    def create_instances(self, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Many `create_instance`s (its `params`, one dict per instance) in three multi-row INSERTs (SQLAlchemy
        sends a list of parameters to one INSERT as one statement): the ids that were new."""
        created = {row[0] for row in conn.execute(self.insert_new_instance, rows)}
        new = [row for row in rows if row["iid"] in created]
        if new:
            conn.execute(
                hot.INSERT_EXECUTION,
                [
                    {
                        "instance_id": row["iid"],
                        "execution_id": 1,
                        "status": "Running",
                        "started_at": row["now"],
                        "event_count": 0,
                        "kv_snapshot": "{}",
                    }
                    for row in new
                ],
            )
            conn.execute(
                hot.INSERT_INBOX,
                [
                    {
                        "instance_id": row["iid"],
                        "kind": "StartOrchestration",
                        "payload": row["payload"],
                        "created_at": row["now"],
                    }
                    for row in new
                ],
            )
        return created

    def complete_work_item(
        self, conn: Connection, params: dict[str, Any], kind: str, message: dict[str, Any]
    ) -> tuple[str, str | None, bool, bool] | None:
        """Delete the activity row its lease holder names (`params`) and queue its outcome; the row's (name, flow
        state), whether the instance has other activity rows and whether the caller must wake the instance (False: a
        turn holding its lease will drain again and take this outcome), or None if it is gone."""
        raise NotImplementedError

    def fire_due_timers(self, conn: Connection, now: int, due_by: int, limit: int) -> tuple[list[Wake], int]:
        """Move the timers due by `due_by` into their inboxes (messages created at `now`); the instances to wake,
        and how many timers fired."""
        raise NotImplementedError

    def lock_session_claims(self, conn: Connection, owner: str) -> None:
        """Serialize, until commit, the claims of new sessions by one owner (the per-worker cap counts them)."""

    def skip_locked(self, query: Select[Any]) -> Select[Any]:
        """`query` made to pass over rows another transaction holds (two callers take disjoint rows)."""
        return query

    def lock_rows(self, plain: Any, locking: Any) -> Any:
        """Of two prebuilt statements, the one that locks the rows it reads until commit where the database locks
        rows (PostgreSQL: `locking`); SQLite's single writer already serializes the transaction (`plain`)."""
        return plain

    def byte_length(self, column: Any) -> Any:
        """Length in bytes (UTF-8) of a text column."""
        raise NotImplementedError

    def starts_with(self, column: Any, prefix: str) -> Any:
        """A condition: the text `column` starts with `prefix` (not empty), case-sensitive, using its index."""
        raise NotImplementedError

    def begin_turn(
        self, ops: TurnOps, instance_id: str, owner: str, lease_ms: int, prefix: tuple[int, int] | None = None
    ) -> TurnTransaction:
        """The transactions of one turn (`turn_shape`): leased at `__enter__`, committed by `commit`. `prefix`:
        (execution id, event id) of the history the caller holds already."""
        return self.turn_shape(ops, instance_id, owner, lease_ms, prefix)


class SqliteDialect(Dialect):
    """One writer at a time: writes queue on a fair process-local lock, then `BEGIN IMMEDIATE`."""

    sql = sqlite_dialect
    insert_new_instance = hot.INSERT_NEW_INSTANCE
    turn_shape = OneTransactionTurn

    def __init__(self, *, serialize_all: bool = False):
        self._write_lock = FairRLock()
        #: An in-memory database is one shared connection: its reads take the writers' lock too.
        self._serialize_all = serialize_all

    @contextmanager
    def write(self, engine: Engine) -> Iterator[Connection]:
        with self._write_lock:
            with engine.connect() as conn:
                conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    yield conn

    def read_lock(self) -> AbstractContextManager[Any]:
        return self._write_lock if self._serialize_all else nullcontext()

    def create_instance(self, conn: Connection, params: dict[str, Any]) -> CreatedInstance | None:
        if direct_sql.run(conn, hot.INSERT_NEW_INSTANCE, params).first() is None:
            return None
        direct_sql.run(
            conn,
            hot.INSERT_EXECUTION,
            {
                "instance_id": params["iid"],
                "execution_id": 1,
                "status": "Running",
                "started_at": params["now"],
                "event_count": 0,
                "kv_snapshot": "{}",
            },
        )
        direct_sql.run(
            conn,
            hot.INSERT_INBOX,
            {
                "instance_id": params["iid"],
                "kind": "StartOrchestration",
                "payload": params["payload"],
                "created_at": params["now"],
            },
        )
        return CreatedInstance()  # its start limit is read by hold_start

    def fence_turn(self, conn: Connection, fence: TurnFence) -> tuple[set[str], bool] | None:
        # Nobody can write a message while a turn holds SQLite's only write transaction: none waits.
        columns, params = hot.set_clause(fence.instance, iid=fence.instance_id, owner=fence.owner)
        if not direct_sql.run(conn, hot.finish_instance(columns), params).rowcount:
            return None  # first: the fence; nothing else is written for a lease that is no longer ours
        if fence.history:
            direct_sql.run(
                conn, hot.INSERT_HISTORY, _history_rows(fence.instance_id, fence.execution_id, fence.history)
            )
        if fence.consumed:
            conn.execute(hot.DELETE_INBOX, {"ids": fence.consumed})
        if fence.execution:  # most turns change nothing here: no statement for them
            columns, params = hot.set_clause(fence.execution, iid=fence.instance_id, exec=fence.execution_id)
            conn.execute(hot.update_execution(columns), params)
        if not fence.activity_names:
            return set(), False
        return {r[0] for r in conn.execute(hot.LIMITED_NAMES, {"names": fence.activity_names}).all()}, False

    def complete_work_item(
        self, conn: Connection, params: dict[str, Any], kind: str, message: dict[str, Any]
    ) -> tuple[str, str | None, bool, bool] | None:
        done = direct_sql.run(conn, hot.DELETE_LEASED_WORK_ITEM, params).first()
        if done is None:
            return None
        direct_sql.run(
            conn,
            hot.INSERT_INBOX,
            {"instance_id": params["iid"], "kind": kind, "payload": json.dumps(message), "created_at": params["now"]},
        )
        others = direct_sql.run(conn, hot.WORK_ITEM_OF, {"iid": params["iid"]}).first() is not None
        return done[0], done[1], others, True  # SQLite: the embedded runtime coalesces pokes in memory

    def fire_due_timers(self, conn: Connection, now: int, due_by: int, limit: int) -> tuple[list[Wake], int]:
        due = conn.execute(hot.DUE_TIMERS, {"due_by": due_by, "limit": limit}).all()
        if not due:
            return [], 0
        conn.execute(
            delete(timers).where(
                tuple_(timers.c.instance_id, timers.c.execution_id, timers.c.event_id).in_(
                    [(i, e, ev_id) for i, e, ev_id, _ in due]
                )
            )
        )
        conn.execute(
            hot.INSERT_INBOX,
            [
                {
                    "instance_id": i,
                    "kind": "TimerFired",
                    "payload": json.dumps({"execution_id": e, "event_id": ev_id, "fire_at_ms": fire_at}),
                    "created_at": now,
                }
                for i, e, ev_id, fire_at in due
            ],
        )
        fired = sorted({row[0] for row in due})
        rows = conn.execute(
            select(instances.c.instance_id, instances.c.orchestration_name).where(instances.c.instance_id.in_(fired))
        ).all()
        names: dict[str, str | None] = {r[0]: r[1] for r in rows}
        return [(i, names.get(i)) for i in fired], len(due)

    def byte_length(self, column: Any) -> Any:
        # SQLite < 3.43 has no octet_length: the length of the text cast to a blob is its UTF-8 byte count.
        return func.length(cast(column, LargeBinary))

    def starts_with(self, column: Any, prefix: str) -> Any:
        # SQLite's LIKE ignores ASCII case; a range on the column compares code points, as ids do.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if ord(prefix[-1]) < 0x10FFFF else None
        cond = column >= prefix
        return cond if upper is None else cond & (column < upper)


class PostgresDialect(Dialect):
    """Row locks and one-statement operations (data-modifying WITH), a lease-only engine without WAL waits."""

    sql = pg_dialect
    insert_new_instance = hot.INSERT_NEW_INSTANCE_PG
    turn_shape = LeaseThenCommitTurn
    notifies_endings = True

    @contextmanager
    def write(self, engine: Engine) -> Iterator[Connection]:
        with engine.begin() as conn:
            yield conn

    def single_read(self, engine: Engine) -> AbstractContextManager[Connection]:
        # Autocommit: the statement runs without BEGIN and ROLLBACK (two round trips fewer) and sees every commit
        # made before it, as the first statement of a READ COMMITTED transaction would. psycopg switches autocommit
        # on the client side, and the pool puts the connection back to the default isolation when it returns.
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def one_statement_write(self, engine: Engine) -> AbstractContextManager[Connection]:
        # Autocommit, as single_read: one round trip where a transaction of one statement takes three.
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def create_instance(self, conn: Connection, params: dict[str, Any]) -> CreatedInstance | None:
        row = direct_sql.run(conn, hot.CREATE_INSTANCE, params).first()
        if row is None:
            return None
        return CreatedInstance((row[2], row[3]) if row[1] is not None else None, limit_read=True)

    def fence_turn(self, conn: Connection, fence: TurnFence) -> tuple[set[str], bool] | None:
        instance_columns, params = hot.set_clause(fence.instance, iid=fence.instance_id, owner=fence.owner)
        execution_columns, execution_params = hot.set_clause(fence.execution, "x_", exec=fence.execution_id)
        params.update(execution_params, ids=fence.consumed, names=fence.activity_names)
        events = fence.history
        params.update(
            h_event_id=[e.event_id for e in events],
            h_kind=[e.kind for e in events],
            h_source=[e.source_event_id for e in events],
            h_timestamp=[e.timestamp_ms for e in events],
            h_data=[_json(e.data) for e in events],
        )
        ends = fence.instance.get("status") in TERMINAL_STATUSES  # the commit tells other processes' waits
        row = direct_sql.run(conn, hot.fence_turn(instance_columns, execution_columns, ends), params).first()
        return None if row is None else (set(row[1] or ()), row[0] != fence.refused_pokes)

    def complete_work_item(
        self, conn: Connection, params: dict[str, Any], kind: str, message: dict[str, Any]
    ) -> tuple[str, str | None, bool, bool] | None:
        statement_params = dict(params, kind=kind, payload=json.dumps(message), created=params["now"])
        done = direct_sql.run(conn, hot.COMPLETE_WORK_ITEM, statement_params).first()
        return (done[0], done[1], bool(done[2]), bool(done[3])) if done is not None else None

    def fire_due_timers(self, conn: Connection, now: int, due_by: int, limit: int) -> tuple[list[Wake], int]:
        rows = conn.execute(hot.FIRE_DUE_TIMERS, {"now": now, "due_by": due_by, "limit": limit}).all()
        return sorted({(r[0], r[1]) for r in rows}), len(rows)

    def lock_session_claims(self, conn: Connection, owner: str) -> None:
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(owner))))

    def skip_locked(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update(skip_locked=True)

    def lock_rows(self, plain: Any, locking: Any) -> Any:
        return locking

    def byte_length(self, column: Any) -> Any:
        return func.octet_length(column)

    def starts_with(self, column: Any, prefix: str) -> Any:
        # A text_pattern_ops index serves it (migration 0004): LIKE 'prefix%', the prefix's own % and _ escaped.
        return column.startswith(prefix, autoescape=True)


def _json(data: Any) -> str:
    """A history event's data as stored: compact JSON."""
    return json.dumps(data, separators=(",", ":"))


def _history_rows(instance_id: str, execution_id: int, events: list[HistoryEvent]) -> list[dict[str, Any]]:
    """Rows of dx_history for INSERT_HISTORY (column names)."""
    return [
        {
            "instance_id": instance_id,
            "execution_id": execution_id,
            "event_id": e.event_id,
            "kind": e.kind,
            "source_event_id": e.source_event_id,
            "timestamp_ms": e.timestamp_ms,
            "data": _json(e.data),
        }
        for e in events
    ]


def dialect_for(engine: Engine, *, serialize_all: bool = False) -> Dialect:
    """The dialect object of `engine`'s database (the one place that reads the dialect's name)."""
    if engine.dialect.name == "sqlite":
        return SqliteDialect(serialize_all=serialize_all)
    if engine.dialect.name == "postgresql":
        return PostgresDialect()
    raise ValueError(f"unsupported database {engine.dialect.name!r}: duroxide-celery supports SQLite and PostgreSQL")
