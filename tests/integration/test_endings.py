"""Waits on an instance's end are woken when the turn that ends it commits (providers/endings.py): by the turn
itself in this process, and on PostgreSQL by a NOTIFY on the store's channel, which a listener thread of every
waiting process relays."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from duroxide_celery import Client
from duroxide_celery.providers.endings import NOTIFY_CHANNEL, endings

from .conftest import DB
from .helpers import wait_until

postgres_only = pytest.mark.skipif(DB != "postgres", reason="NOTIFY/LISTEN is PostgreSQL's")


def _double(ctx: Any, x: int) -> Any:
    y = yield ctx.schedule_activity("Double", x)
    return y


@postgres_only
def test_the_commit_that_ends_an_instance_notifies_its_schemas_channel(provider: Any, runtime_factory: Any) -> None:
    engine = provider.store.engine
    spy: Any = engine.raw_connection()
    spy.detach()
    try:
        conn = spy.dbapi_connection
        conn.autocommit = True
        channel = conn.execute(f"SELECT {NOTIFY_CHANNEL}").fetchone()[0]
        conn.execute(f'LISTEN "{channel}"')
        runtime_factory({"Doubler": _double}, {"Double": lambda ctx, x: 2 * x})
        client = Client(provider)
        client.start_orchestration("end-1", "Doubler", 21)
        assert client.wait_for_orchestration("end-1", 10_000).output == 42
        heard = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
        assert heard == ["end-1"]  # once, at the end: the turn that scheduled the activity sent nothing
    finally:
        spy.close()


@postgres_only
def test_the_listener_relays_a_notify_from_another_connection_to_this_processs_waits(provider: Any) -> None:
    store = provider.store
    store.watch_endings()
    woken = endings.watch("far-1")
    try:
        # The listener may still be connecting: notify until it relays one (a wait polls meanwhile anyway).
        def notified() -> bool:
            with store.write() as conn:
                conn.execute(sa.text(f"SELECT pg_notify({NOTIFY_CHANNEL}, 'far-1')"))
            return woken.wait(0.2)

        wait_until(notified, what="the listener to relay the NOTIFY")
    finally:
        endings.unwatch("far-1", woken)
        store.stop_watching_endings()


def test_a_wait_returns_the_result_of_an_instance_that_ends_while_it_waits(provider: Any, runtime_factory: Any) -> None:
    release = threading.Event()

    def gated(ctx: Any, x: int) -> int:
        release.wait(10)
        return 2 * x

    runtime_factory({"Doubler": _double}, {"Double": gated})
    client = Client(provider)
    client.start_orchestration("end-2", "Doubler", 4)
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(client.wait_for_orchestration("end-2", 10_000)))
    waiter.start()
    wait_until(lambda: "end-2" in endings._waits, what="the wait to be registered")
    release.set()
    waiter.join(15)
    assert [(r.status, r.output) for r in results] == [("Completed", 8)]
    assert "end-2" not in endings._waits  # the wait unregistered itself
