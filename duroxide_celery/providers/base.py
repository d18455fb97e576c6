"""The store's shared ground: its transactions (shaped by the dialect) and the inbox, which every path writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from . import hot_statements as hot
from .dialect import dialect_for
from .endings import EndingsListener
from .schema import inbox


def inbox_pending(conn: Connection, instance_id: str) -> bool:
    """Whether the instance has inbox messages (on the caller's connection)."""
    return conn.execute(hot.INBOX_PENDING, {"iid": instance_id}).first() is not None


def work_item_params(key: tuple[str, int, int], owner: str, **more: Any) -> dict[str, Any]:
    """Parameters naming one activity row (hot_statements: `iid`, `exec`, `eid`) and the lease `owner`."""
    return {"iid": key[0], "exec": key[1], "eid": key[2], "owner": owner, **more}


def now_ms() -> int:
    return int(time.time() * 1000)


class StoreBase:
    """Transactions over one SQLAlchemy engine; what differs per database is `self.dialect`'s (dialect.py).
    Thread-safe; create one per process (after fork)."""

    def __init__(self, engine: Engine, *, lease_engine: Engine | None = None, serialize_all: bool = False):
        self.engine = engine
        #: PostgreSQL: connections whose commits do not wait for the WAL flush, for lease-only transactions (see
        #: `lease_transaction`). Defaults to `engine`.
        self.lease_engine = lease_engine or engine
        #: `serialize_all`: an in-memory SQLite database is one shared connection, so reads queue like writes.
        self.dialect = dialect_for(engine, serialize_all=serialize_all)
        self._endings = EndingsListener(engine) if self.dialect.notifies_endings else None

    def watch_endings(self) -> None:
        """Have this process's waits woken when a turn of another process ends an instance (a listener thread,
        started once; PostgreSQL); elsewhere only this process's own turns wake them (endings.py)."""
        if self._endings is not None:
            self._endings.start()

    def stop_watching_endings(self) -> None:
        if self._endings is not None:
            self._endings.stop()

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
    def lease_statement(self) -> Iterator[Connection]:
        """A connection for one statement that takes a lease (and reads) and commits by itself: on PostgreSQL an
        autocommit connection of the lease engine (no BEGIN and COMMIT round trips; see `lease_transaction` for
        why its commit need not wait for the WAL flush); a lease transaction elsewhere."""
        with self.dialect.one_statement_write(self.lease_engine) as conn:
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
    def single_read(self) -> Iterator[Connection]:
        """A connection for one read statement, outside any transaction where the database allows it (PostgreSQL:
        autocommit; the statement sees every commit made before it)."""
        with self.dialect.read_lock(), self.dialect.single_read(self.engine) as conn:
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

    def delete_inbox(self, conn: Connection, ids: list[int]) -> None:
        """Delete consumed messages."""
        if ids:
            conn.execute(hot.DELETE_INBOX, {"ids": ids})

    def has_inbox(self, instance_id: str, conn: Connection | None = None) -> bool:
        with self._reusing(conn, self.single_read) as conn:
            return inbox_pending(conn, instance_id)

    def has_inbox_besides(self, instance_id: str, ids: list[int]) -> bool:
        """Whether the instance has inbox messages other than `ids` (a turn that left early timer messages in
        the inbox asks whether anything else arrived meanwhile)."""
        query = select(inbox.c.id).where(inbox.c.instance_id == instance_id, inbox.c.id.not_in(ids)).limit(1)
        with self.single_read() as conn:
            return conn.execute(query).first() is not None

    @property
    def turns_may_wait(self) -> bool:
        """Whether a turn may wait once its replay starts without holding a transaction (the dialect's turn
        shape): only then does firing timers ahead of their time pay off (tasks/recovery.py DueWork)."""
        return self.dialect.turn_shape.may_wait
