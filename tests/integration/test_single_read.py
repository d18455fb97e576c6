"""Store.single_read: one read statement outside a transaction (PostgreSQL: autocommit), which must not leak its
autocommit into the pooled connection that the next write transaction gets."""

from __future__ import annotations

import sqlalchemy as sa

from duroxide_celery import Client

from .conftest import DB


def test_a_single_read_sees_commits_and_gives_its_connection_back_transactional(provider):
    store = provider.store
    Client(provider).start_orchestration("sr-1", "Anything", None)
    with store.single_read() as conn:
        raw = conn.connection.dbapi_connection
        assert conn.execute(sa.text("select 1")).scalar() == 1
        if DB == "postgres":
            assert raw.autocommit is True and raw.info.transaction_status == 0  # no BEGIN was sent
    assert store.has_inbox("sr-1")  # the StartOrchestration message, committed before the read
    assert store.get_instance("sr-1")["status"] == "Running"
    if DB == "postgres":
        assert raw.autocommit is False  # the pool restored the default isolation on check-in
        with store.write() as conn:
            conn.execute(sa.text("select 1"))
            assert conn.connection.dbapi_connection.info.transaction_status != 0  # inside BEGIN, not autocommit
