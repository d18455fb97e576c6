"""The turn's statements, where PostgreSQL runs one statement for what took several: the lease with the turn's
reads (Store.lease_and_load), and the first writes of the commit with its fence (Store.fence_turn). What they must
keep: a lease reads the history and inbox as they are once it holds the lease, never as they were before a commit
it waited for; a poke that finds the lease held is counted, and the holder's fence sees the count; a fence that
finds the lease gone writes nothing at all."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from duroxide_celery import Client
from duroxide_celery.providers.base import now_ms
from duroxide_celery.providers.dto import TurnFence
from duroxide_celery.providers.flow import ActivityLimit
from duroxide_celery.providers.schema import executions, history, inbox, instances, work_items
from duroxide_celery.providers.store import LeaseLost
from duroxide_celery.replay import events as ev
from duroxide_celery.replay.events import HistoryEvent

from .conftest import DB
from .helpers import wait_until

postgres_only = pytest.mark.skipif(
    DB != "postgres", reason="PostgreSQL's one-statement lease (SQLite's turn is one transaction)"
)


def _started(provider: Any, instance_id: str) -> Any:
    Client(provider).start_orchestration(instance_id, "X", {"n": 1})
    return provider.store


@postgres_only
def test_the_lease_statement_reads_the_turn_and_only_the_history_after_the_prefix(provider):
    store = _started(provider, "ll-1")
    with store.write() as conn:
        conn.execute(
            sa.insert(history),
            [
                {"instance_id": "ll-1", "execution_id": 1, "event_id": i, "kind": "K", "timestamp_ms": i, "data": "{}"}
                for i in (1, 2, 3)
            ],
        )
    loaded = store.lease_and_load("ll-1", "owner-1", 60_000, prefix=(1, 2))
    assert loaded is not None and loaded.lease.owner == "owner-1" and loaded.lease.execution_id == 1
    events, messages, snapshot = loaded.load
    assert [e.event_id for e in events] == [3] and loaded.after == 2
    assert [m[1]["kind"] for m in messages] == [ev.MSG_START] and messages[0][1]["input"] == '{"n":1}'
    assert snapshot == {}
    assert store.lease_and_load("ll-1", "owner-2", 60_000) is None  # held (the refused poke is counted)
    with store.write() as conn:
        conn.execute(sa.update(instances).values(locked_until=0))
    again = store.lease_and_load("ll-1", "owner-2", 60_000, prefix=(7, 2))  # a prefix of another execution
    assert again is not None and [e.event_id for e in again.load[0]] == [1, 2, 3] and again.after == 0


@postgres_only
def test_a_lease_that_waited_for_a_lapsed_holders_commit_reads_what_that_commit_wrote(provider):
    """The lapsed holder commits while our lease statement waits for its row lock. PostgreSQL would then lease the
    row version that commit wrote, yet read the other tables as of the statement's start: the messages that commit
    consumed, without the history it added. The statement must read what the commit left instead."""
    store = _started(provider, "ll-2")
    assert store.lease_and_load("ll-2", "lapsed", 60_000) is not None
    with store.write() as conn:
        conn.execute(sa.update(instances).values(locked_until=0))  # its lease lapses while its turn still runs
    holder = store.engine.connect()
    commit = holder.begin()
    holder_pid = holder.execute(sa.text("select pg_backend_pid()")).scalar()
    # The lapsed holder's commit, in flight: its fence, its history, the message it consumed; one message arrives.
    holder.execute(sa.update(instances).where(instances.c.lock_owner == "lapsed").values(lock_owner=None))
    holder.execute(
        sa.insert(history).values(instance_id="ll-2", execution_id=1, event_id=1, kind="K", timestamp_ms=1, data="{}")
    )
    holder.execute(sa.delete(inbox))
    holder.execute(sa.insert(inbox).values(instance_id="ll-2", kind="Later", payload="{}", created_at=now_ms()))
    leased: list[Any] = []
    taker = threading.Thread(target=lambda: leased.append(store.lease_and_load("ll-2", "taker", 60_000)))
    taker.start()
    try:
        with store.single_read() as conn:  # the taker waits for the holder's row lock
            blocked = sa.text("select count(*) from pg_stat_activity where :pid = any(pg_blocking_pids(pid))")
            wait_until(lambda: conn.execute(blocked, {"pid": holder_pid}).scalar() == 1, what="the taker to wait")
        commit.commit()
    finally:
        holder.close()
        taker.join()
    [loaded] = leased
    assert loaded is not None and loaded.lease.owner == "taker"
    events, messages, _ = loaded.load
    assert [m[1]["kind"] for m in messages] == ["Later"]  # not the consumed StartOrchestration
    assert [e.event_id for e in events] == [1]


def _fence(owner: str, store: Any) -> TurnFence:
    [(msg_id,)] = _rows(store, sa.select(inbox.c.id))
    fence = TurnFence("f-1", owner, 1, {"status": "Completed", "output": '"done"', "updated_at": now_ms()})
    fence.execution = {"status": "Completed", "output": '"done"', "completed_at": now_ms()}
    fence.history = [HistoryEvent(1, "OrchestrationStarted", {"name": "X"}, None, 5), HistoryEvent(2, "K", {}, 1, 6)]
    fence.consumed, fence.activity_names = [msg_id], ["Limited", "Free"]
    return fence


def _rows(store: Any, query: Any) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(query).all())


def _state(store: Any) -> tuple[Any, ...]:
    return (
        _rows(store, sa.select(instances.c.status, instances.c.lock_owner, instances.c.output)),
        _rows(store, sa.select(executions.c.status, executions.c.output)),
        _rows(store, sa.select(history.c.event_id, history.c.kind, history.c.source_event_id, history.c.data)),
        len(_rows(store, sa.select(inbox.c.id))),
    )


def test_a_fence_writes_everything_while_the_lease_is_ours_and_nothing_once_it_is_not(provider):
    store = _started(provider, "f-1")
    store.set_limit(ActivityLimit("Limited", limit=1))
    assert store.acquire_instance("f-1", "mine", 60_000) is not None
    before = _state(store)
    with store.write() as conn:  # committed: what the refused fence wrote would stay
        assert store.dialect.fence_turn(conn, _fence("not-mine", store)) is None
    assert _state(store) == before
    with pytest.raises(LeaseLost), store.write() as conn:
        store.fence_turn(conn, _fence("not-mine", store))
    with store.write() as conn:
        assert store.fence_turn(conn, _fence("mine", store)) == ({"Limited"}, False)
    assert _state(store) == (
        [("Completed", None, '"done"')],
        [("Completed", '"done"')],
        [(1, "OrchestrationStarted", None, '{"name":"X"}'), (2, "K", 1, "{}")],
        0,
    )


@postgres_only
def test_a_poke_refused_while_the_lease_is_held_is_counted_and_the_holders_fence_sees_it(provider):
    store = _started(provider, "f-2")
    lease = store.lease_and_load("f-2", "holder", 60_000)
    assert lease is not None
    fence = TurnFence("f-2", "holder", 1, {"updated_at": now_ms()}, refused_pokes=lease.lease.refused_pokes)
    with store.connection() as conn, conn.begin() as transaction:
        assert store.fence_turn(conn, fence) == (set(), False)  # nobody was refused: no message waits
        transaction.rollback()  # undone: the lease is still held
    assert store.get_instance("f-2")["lock_owner"] == "holder"
    assert store.lease_and_load("f-2", "poked", 60_000) is None  # refused, and counted
    with store.write() as conn:
        assert store.fence_turn(conn, fence) == (set(), True)


@postgres_only
def test_a_poke_that_waits_for_the_holders_commit_then_takes_the_lease_and_reads_its_message(provider):
    """A message committed while the holder's commit is in flight: its poke's lease statement, which saw the lease
    held, waits for the row lock the fence holds, then must take the lease (with what the commit left), neither
    be refused uncounted nor read the inbox of before the commit."""
    store = _started(provider, "f-3")
    loaded = store.lease_and_load("f-3", "holder", 60_000)
    assert loaded is not None
    [(start_id, _)] = loaded.load[1]
    holder = store.engine.connect()
    commit = holder.begin()
    holder_pid = holder.execute(sa.text("select pg_backend_pid()")).scalar()
    fence = TurnFence("f-3", "holder", 1, {"updated_at": now_ms()}, consumed=[start_id])
    fence.history = [HistoryEvent(1, "OrchestrationStarted", {"name": "X"}, None, 5)]
    assert store.fence_turn(holder, fence) == (set(), False)
    with store.write() as conn:  # the message, committed while the commit is in flight
        conn.execute(sa.insert(inbox).values(instance_id="f-3", kind="Later", payload="{}", created_at=now_ms()))
    leased: list[Any] = []
    taker = threading.Thread(target=lambda: leased.append(store.lease_and_load("f-3", "taker", 60_000)))
    taker.start()
    try:
        with store.single_read() as conn:  # the taker waits for the fence's row lock
            blocked = sa.text("select count(*) from pg_stat_activity where :pid = any(pg_blocking_pids(pid))")
            wait_until(lambda: conn.execute(blocked, {"pid": holder_pid}).scalar() == 1, what="the taker to wait")
        commit.commit()
    finally:
        holder.close()
        taker.join()
    [taken] = leased
    assert taken is not None and taken.lease.owner == "taker"
    events, messages, _ = taken.load
    assert [m[1]["kind"] for m in messages] == ["Later"] and [e.event_id for e in events] == [1]


def _claimed_activity(store: Any, instance_id: str, event_id: int) -> tuple[str, int, int]:
    """An activity row of the instance, claimed by the worker "w" (as an activity task would)."""
    with store.write() as conn:
        conn.execute(
            sa.insert(work_items).values(
                instance_id=instance_id, execution_id=1, event_id=event_id, name="A", input='""', created_at=1
            )
        )
    key = (instance_id, 1, event_id)
    assert store.claim_work_item(key, "w", 60_000) is not None
    return key


@postgres_only
def test_an_outcome_recorded_while_a_turn_holds_the_lease_is_counted_for_it_instead_of_poked(provider):
    """The completions of a fan-out that land while a turn holds the lease publish no poke: each counts itself as a
    refused poke, so the holder's fence says messages wait and its task drains again. Once the lease is free, an
    outcome wakes the instance again."""
    store = _started(provider, "c-1")
    first, second = _claimed_activity(store, "c-1", 1), _claimed_activity(store, "c-1", 2)
    loaded = store.lease_and_load("c-1", "holder", 60_000)
    assert loaded is not None
    recorded = store.complete_work_item(first, "w", '"one"')
    assert recorded is not None and recorded.wake is False and recorded.others_pending is True
    fence = TurnFence("c-1", "holder", 1, {"updated_at": now_ms()}, refused_pokes=loaded.lease.refused_pokes)
    with store.write() as conn:
        assert store.fence_turn(conn, fence) == (set(), True)  # the holder's task takes another turn
    with store.write() as conn:
        conn.execute(sa.update(instances).values(lock_owner=None, locked_until=0))
    recorded = store.complete_work_item(second, "w", '"two"')
    assert recorded is not None and recorded.wake is True and recorded.others_pending is False
    with store.single_read() as conn:
        kinds = conn.execute(sa.select(inbox.c.kind).where(inbox.c.instance_id == "c-1").order_by(inbox.c.id)).all()
    assert [k[0] for k in kinds] == [ev.MSG_START, ev.MSG_ACTIVITY_COMPLETED, ev.MSG_ACTIVITY_COMPLETED]


@postgres_only
def test_an_outcome_recorded_while_the_holders_commit_is_in_flight_is_poked_without_waiting(provider):
    """The holder's commit row-locks the instance: the completion neither waits for it nor counts itself (that
    commit already read the count); it publishes a poke, which finds the lease free once the commit is done."""
    store = _started(provider, "c-2")
    key = _claimed_activity(store, "c-2", 1)
    loaded = store.lease_and_load("c-2", "holder", 60_000)
    assert loaded is not None
    with store.connection() as holder, holder.begin() as commit:
        fence = TurnFence("c-2", "holder", 1, {"updated_at": now_ms()}, refused_pokes=loaded.lease.refused_pokes)
        assert store.fence_turn(holder, fence) == (set(), False)
        recorded = store.complete_work_item(key, "w", '"one"')  # returns while the commit holds the row lock
        assert recorded is not None and recorded.wake is True
        commit.rollback()


def test_an_outcome_recorded_with_the_lease_free_wakes_the_instance(provider):
    store = _started(provider, "c-3")
    recorded = store.complete_work_item(_claimed_activity(store, "c-3", 1), "w", '"one"')
    assert recorded is not None and recorded.wake is True
