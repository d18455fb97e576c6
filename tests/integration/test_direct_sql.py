"""providers/direct_sql.py runs the hot statements on the DBAPI cursor: the same rows, defaults, transaction,
listeners and error types as `Connection.execute`, on the selected database."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, select

from duroxide_celery.providers import direct_sql
from duroxide_celery.providers import hot_statements as hot
from duroxide_celery.providers.schema import inbox, work_items


def _work_item(event_id: int) -> dict[str, Any]:
    """A dx_work_items row as the turn's commit writes it: locked_until and attempt_count left to their defaults."""
    return {
        "instance_id": "i1",
        "execution_id": 1,
        "event_id": event_id,
        "name": "Act",
        "input": '"x"',
        "session_id": None,
        "tag": None,
        "orchestration_name": "Orch",
        "orchestration_version": None,
        "created_at": 5,
        "published_at": 5,
        "claim_deadline": 0,
        "flow_key": "",
        "priority": 0,
        "flow_state": None,
    }


def test_executemany_insert_fills_python_defaults_and_commits(provider: Any) -> None:
    store = provider.store
    with store.write() as conn:
        direct_sql.run(conn, hot.INSERT_WORK_ITEMS, [_work_item(1), _work_item(2)])
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(work_items.c.event_id, work_items.c.locked_until, work_items.c.attempt_count).order_by(
                work_items.c.event_id
            )
        ).all()
    assert [tuple(r) for r in rows] == [(1, 0, 0), (2, 0, 0)]


def test_rows_match_connection_execute(provider: Any) -> None:
    store = provider.store
    with store.write() as conn:
        for kind in ("A", "B"):
            conn.execute(hot.INSERT_INBOX, {"instance_id": "i1", "kind": kind, "payload": "{}", "created_at": 1})
    with store.engine.connect() as conn:
        expected = [tuple(r) for r in conn.execute(hot.INBOX_OF, {"iid": "i1"}).all()]
        got = direct_sql.run(conn, hot.INBOX_OF, {"iid": "i1"}).all()
        assert got == expected and [r[1] for r in got] == ["A", "B"]
        assert direct_sql.run(conn, hot.INBOX_OF, {"iid": "nobody"}).first() is None
        assert direct_sql.run(conn, hot.KV_VALUE, {"iid": "i1", "kv_key": "k"}).scalar() is None


def test_rollback_discards_what_it_wrote(provider: Any) -> None:
    store = provider.store

    class Abort(Exception):
        pass

    with pytest.raises(Abort), store.write() as conn:
        direct_sql.run(conn, hot.INSERT_WORK_ITEMS, [_work_item(7)])
        raise Abort
    with store.engine.connect() as conn:
        assert conn.execute(select(sa.func.count()).select_from(work_items)).scalar() == 0


def test_listeners_see_each_statement(provider: Any) -> None:
    """Statement counters and SQL tracing hook `before_cursor_execute`: the direct path still reaches them."""
    engine = provider.store.engine
    seen: list[tuple[str, bool]] = []

    def listener(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE, sent by the store's write()
            seen.append((statement.split()[0], executemany))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        with provider.store.write() as conn:
            direct_sql.run(conn, hot.INSERT_WORK_ITEMS, [_work_item(1), _work_item(2)])
            direct_sql.run(conn, hot.INBOX_OF, {"iid": "i1"}).all()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert seen == [("INSERT", True), ("SELECT", False)]


def test_driver_errors_are_sqlalchemys(provider: Any) -> None:
    """A constraint violation raises SQLAlchemy's IntegrityError, as Connection.execute would (callers catch it)."""
    store = provider.store
    with store.write() as conn:
        direct_sql.run(conn, hot.INSERT_WORK_ITEMS, [_work_item(1)])
    with pytest.raises(sa.exc.IntegrityError), store.write() as conn:
        direct_sql.run(conn, hot.INSERT_WORK_ITEMS, [_work_item(1)])
    with store.write() as conn:  # the pool's connection is still usable
        assert direct_sql.run(conn, hot.WORK_ITEM_OF, {"iid": "i1"}).scalar() == 1


def test_statements_it_cannot_bind_go_through_sqlalchemy(provider: Any) -> None:
    """An expanding IN list (DELETE_INBOX's `ids`) is SQLAlchemy's to render: run() hands it over."""
    store = provider.store
    with store.write() as conn:
        for kind in ("A", "B", "C"):
            conn.execute(hot.INSERT_INBOX, {"instance_id": "i1", "kind": kind, "payload": "{}", "created_at": 1})
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(hot.INBOX_OF, {"iid": "i1"}).all()]
    with store.write() as conn:
        assert direct_sql.run(conn, hot.DELETE_INBOX, {"ids": ids[:2]}).rowcount == 2
    with store.engine.connect() as conn:
        assert [r[0] for r in conn.execute(select(inbox.c.kind)).all()] == ["C"]
