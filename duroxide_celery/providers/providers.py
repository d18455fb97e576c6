"""Provider constructors with duroxide-python's names; each builds a per-process SQLAlchemy engine and Store.

Engines are created lazily in the process that uses them, and again after a fork (Celery prefork workers), never
shared across fork.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import StaticPool

from .migrate import upgrade
from .store import Store

#: A conservative PostgreSQL identifier (matched in full: `$` would also accept a trailing newline).
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Every engine hides bound parameters from its errors and logs: they carry payloads, which may hold secrets (a
#: database error in a turn would otherwise print an activity's input in the log line of every retry).
_ENGINE_ARGS: dict[str, Any] = {"hide_parameters": True}


class Provider:
    """A store location (SQLAlchemy URL) plus the per-process engine and Store built from it."""

    def __init__(self, url: str, *, schema: str | None = None, in_memory: bool = False):
        self.url = url
        self.schema = schema
        #: Whether the database lives in this process's memory (one process; `SqliteProvider.in_memory()`).
        self.is_in_memory = in_memory
        #: Identifies this store within a process: the embedded runtime names its broker queues after it, and the
        #: publishers of runtimes on this store are found by it (tasks/publish.py live_publishers).
        self.token = uuid.uuid4().hex[:12] if in_memory else _stable_token(url, schema)
        self._store: Store | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        if self._store is None or self._pid != os.getpid():
            with self._lock:
                if self._store is None or self._pid != os.getpid():
                    if self.is_in_memory and self._pid is not None and self._pid != os.getpid():
                        raise RuntimeError("an in-memory SQLite provider cannot be used across processes")
                    if self._store is not None:
                        # Forked: drop the parent's pooled connections without closing them (they are the
                        # parent's sockets; closing them here would break the parent's transactions).
                        self._store.engine.dispose(close=False)
                        self._store.lease_engine.dispose(close=False)
                    engine = self._create_engine()
                    upgrade(engine, self.schema)
                    self._store = Store(
                        engine, lease_engine=self._create_lease_engine(), serialize_all=self.is_in_memory
                    )
                    self._pid = os.getpid()
        return self._store

    def _create_engine(self) -> Engine:  # pragma: no cover - overridden
        raise NotImplementedError

    def _create_lease_engine(self) -> Engine | None:
        """An engine for lease-only transactions (Store.lease_transaction), or None to use the main one."""
        return None

    def dispose(self) -> None:
        if self._store is not None:
            self._store.stop_watching_endings()
            self._store.engine.dispose()
            self._store.lease_engine.dispose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({make_url(self.url).render_as_string(hide_password=True)!r})"


def _stable_token(url: str, schema: str | None) -> str:
    import hashlib

    return hashlib.sha1(f"{url}|{schema}".encode()).hexdigest()[:12]


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except Exception:  # noqa: BLE001 - in-memory databases have no WAL
            pass
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class SqliteProvider(Provider):
    """SQLite store: a WAL file for one machine, or in-memory for a single process (tests, the quick start)."""

    @classmethod
    def open(cls, path: str) -> SqliteProvider:
        """Open (creating file and parent directories) a SQLite database; `path` may be a `sqlite:` URL."""
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise ValueError(f"SqliteProvider.open needs a file path, got {path!r}")
        text = str(path)
        if text.startswith("sqlite:"):
            text = re.sub(r"^sqlite:(//)?/?", "", text) if not text.startswith("sqlite:////") else text[9:]
            text = text.split("?", 1)[0]
        file = Path(text).expanduser().resolve()
        if file.is_dir():  # SQLite would fail later, at the first query, with "unable to open database file"
            raise ValueError(f"SqliteProvider.open: {str(path)!r} is a directory; give the database file's path")
        file.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{file}")

    @classmethod
    def in_memory(cls) -> SqliteProvider:
        """An in-memory database private to this provider object (one process; the embedded runtime)."""
        return cls("sqlite://", in_memory=True)

    def _create_engine(self) -> Engine:
        if self.is_in_memory:
            engine = create_engine(
                "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}, **_ENGINE_ARGS
            )
        else:
            engine = create_engine(
                self.url, pool_size=16, max_overflow=16, connect_args={"timeout": 30}, **_ENGINE_ARGS
            )
        _sqlite_pragmas(engine)
        return engine


class PostgresProvider(Provider):
    """PostgreSQL store (psycopg 3: it prepares the statements it runs often, which cuts the database's CPU per
    orchestration by a third next to psycopg2) for production: many worker processes and machines."""

    @classmethod
    def connect(cls, url: str) -> PostgresProvider:
        return cls(_normalize_pg_url(url))

    @classmethod
    def connect_with_schema(cls, url: str, schema: str) -> PostgresProvider:
        """Keep all tables in `schema` (created if missing), e.g. to share one database between apps."""
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"invalid PostgreSQL schema name {schema!r}: use letters, digits and _, starting with a letter or _ "
                "(at most 63 characters)"
            )
        return cls(_normalize_pg_url(url), schema=schema)

    def _create_engine(self) -> Engine:
        return self._pg_engine()

    def _create_lease_engine(self) -> Engine:
        # Lease commits need not wait for the WAL flush (see Store.lease_transaction); a setting of these
        # connections' sessions, so it costs no statement.
        return self._pg_engine("-csynchronous_commit=off")

    def _pg_engine(self, *options: str) -> Engine:
        if self.schema:
            options = (f"-csearch_path={self.schema}", *options)
        connect_args: dict[str, Any] = {"options": " ".join(options)} if options else {}
        engine = create_engine(self.url, pool_size=10, max_overflow=20, connect_args=connect_args, **_ENGINE_ARGS)
        _ping_when_idle(engine)
        return engine


#: A pooled connection idle for longer than this is pinged before use (seconds).
IDLE_PING_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pre-ping only connections that sat idle in the pool: a database restart is still survived, while the hot
    path (a turn or an activity right after the last one) saves a round trip per checkout. SQLAlchemy's
    `pool_pre_ping` pings on every checkout."""

    @event.listens_for(engine, "connect")
    def _fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) <= IDLE_PING_S:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another one.
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _normalize_pg_url(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError(f"PostgresProvider needs a database URL, got {url!r}")
    given = url
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
            break
    # Checked here, at connect, not at the first query; a URL is shown with its password masked.
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError, or a ValueError for a bad port
        raise ValueError(
            f"PostgresProvider: {_masked(given)!r} is not a database URL: expected "
            "postgresql://user:password@host/database"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        shown = parsed.render_as_string(hide_password=True)
        raise ValueError(f"PostgresProvider expected a postgresql:// URL, got {shown!r}")
    return url


def provider_from_url(url: str) -> Provider:
    """A provider for any supported SQLAlchemy URL (sqlite:///path, postgresql://...)."""
    if url.startswith("sqlite"):
        return SqliteProvider.in_memory() if url in ("sqlite://", "sqlite:///:memory:") else SqliteProvider.open(url)
    if url.startswith("postgres"):
        return PostgresProvider.connect(url)
    raise ValueError(f"unsupported database URL {_masked(url)!r}: use sqlite:///path or postgresql://...")


def _masked(url: str) -> str:
    """`url` as text to show: its password, if any, replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
