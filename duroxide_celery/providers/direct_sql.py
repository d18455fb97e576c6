"""Run a prebuilt hot statement straight on the connection's DBAPI cursor, compiled once per dialect.

A profile of W1 showed SQLAlchemy's per-execution work (`construct_params`, execution context set-up, result
wrapping) costing more client CPU than the driver itself on the turn's fence and lease statements. This runs the
same Core statement as `Connection.execute` would (same SQL, same transaction, same connection), but binds the
parameters itself from what was learnt at compile time. What stays SQLAlchemy's: the transaction (the connection
is begun first, as `execute` would), `before_cursor_execute`/`after_cursor_execute` listeners (statement counters,
tracing instrumentation) and the translation of driver errors (IntegrityError, disconnect handling). A statement
this cannot run faithfully (expanding or literal-execute parameters, escaped names, Python-side defaults that are
not constants) goes through `Connection.execute` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.sql.dml import Insert

Params = Mapping[str, Any]


@dataclass(frozen=True)
class _Compiled:
    """What one execution needs of a compiled statement."""

    statement: Any  # held so that its id, the cache key, is never reused by another object
    sql: str | None  # None: run it through Connection.execute (see module docstring)
    defaults: dict[str, Any]
    processors: dict[str, Any]


class Rows:
    """The part of SQLAlchemy's Result the hot paths use, over a DBAPI cursor that has run its statement."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any):
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def first(self) -> tuple[Any, ...] | None:
        """The first row, or None; the cursor is closed (a SQLite statement left open would keep its read)."""
        cursor = self._cursor
        row: tuple[Any, ...] | None = cursor.fetchone() if cursor.description is not None else None
        cursor.close()
        return row

    def all(self) -> list[tuple[Any, ...]]:
        cursor = self._cursor
        rows = [] if cursor.description is None else list(cursor.fetchall())
        cursor.close()
        return rows

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]


#: SQLite's driver takes named parameters (`:name`) from a dict, which the other paramstyles would need reordered.
_SQLITE_NAMED = SQLiteDialect_pysqlite(paramstyle="named")

#: By (statement id, database, parameter names). A race compiles twice and keeps either: both are the same.
_cache: dict[tuple[int, str, tuple[str, ...]], _Compiled] = {}


def _compile(conn: Connection, statement: Any, keys: tuple[str, ...]) -> _Compiled:
    dialect = _SQLITE_NAMED if conn.dialect.name == "sqlite" else conn.dialect
    is_insert = isinstance(statement, Insert)
    # An INSERT's columns are the keys it is given (as Connection.execute compiles it for them).
    compiled = statement.compile(dialect=dialect, column_keys=list(keys) if is_insert else None)
    unusable = (
        dialect.paramstyle not in ("pyformat", "named")
        or getattr(statement, "_multi_values", None)  # .values([...]): rows built into the statement
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or getattr(compiled, "escaped_bind_names", None)
        or getattr(compiled, "update_prefetch", None)  # an onupdate default the execution context would compute
    )
    defaults: dict[str, Any] = {}
    for name, bind in compiled.binds.items():
        if bind.callable is not None:
            unusable = True
        elif not bind.required:  # a value given when the statement was built (a literal, or None)
            defaults[name] = bind.value
    for column in getattr(compiled, "insert_prefetch", ()) or ():
        default = column.default
        if default is None or not default.is_scalar:
            unusable = True
        else:
            defaults[column.key] = default.arg
    processors = {name: p for name, p in compiled._bind_processors.items() if name in compiled.binds}
    sql = None if unusable else str(compiled)
    return _Compiled(statement, sql, defaults, processors)


def _prepared(conn: Connection, statement: Any, keys: tuple[str, ...]) -> _Compiled:
    key = (id(statement), conn.dialect.name, keys)
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = _compile(conn, statement, keys)
    return found


def _bound(compiled: _Compiled, params: Params) -> dict[str, Any]:
    values = {**compiled.defaults, **params} if compiled.defaults else dict(params)
    for name, process in compiled.processors.items():
        if name in values:
            values[name] = process(values[name])
    return values


def run(conn: Connection, statement: Any, params: Params | Sequence[Params]) -> Any:
    """Execute `statement` with `params` (one dict, or a list of dicts for an executemany) on `conn`: a `Rows`,
    or SQLAlchemy's own Result when the statement goes through `Connection.execute`."""
    if isinstance(params, Mapping):
        many, rows = False, [params]
    else:
        many, rows = True, list(params)
    if not rows:
        raise ValueError("direct_sql.run: an executemany needs at least one parameter set")  # callers skip empty
    compiled = _prepared(conn, statement, tuple(rows[0]))
    if compiled.sql is None:
        return conn.execute(statement, [dict(r) for r in rows] if many else dict(rows[0]))
    if not conn.in_transaction():
        conn.begin()  # what execute's autobegin does: the connection's commit() then ends what this runs
    sql = compiled.sql
    bound: Any = [_bound(compiled, r) for r in rows] if many else _bound(compiled, rows[0])
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    listened = conn._has_events or conn.engine._has_events
    if listened:
        conn.dispatch.before_cursor_execute(conn, cursor, sql, bound, None, many)
    try:
        if many:
            cursor.executemany(sql, bound)
        else:
            cursor.execute(sql, bound)
    except conn.dialect.loaded_dbapi.Error as exc:
        # SQLAlchemy's own translation: IntegrityError, OperationalError, a dropped connection invalidated.
        conn._handle_dbapi_exception(exc, sql, bound, cursor, None)
    if listened:
        conn.dispatch.after_cursor_execute(conn, cursor, sql, bound, None, many)
    return Rows(cursor)
