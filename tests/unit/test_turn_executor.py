"""The orchestrator turn (tasks/turn.py) with a fake store and a fake publisher: no database, no broker.

The fake store plays the store's side of a turn's transactions (providers/turn_shapes.py), under both shapes
(one transaction, as on SQLite; a lease then a fenced commit, as on PostgreSQL), and records every call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from duroxide_celery import RuntimeOptions
from duroxide_celery.errors import OrchestrationFailed
from duroxide_celery.metrics import Metrics
from duroxide_celery.observability.otel import Tracing
from duroxide_celery.providers.dto import (
    InstanceLease,
    LeaseLost,
    LoadedLease,
    PendingActivity,
    PublishPlan,
    TurnChanges,
)
from duroxide_celery.providers.turn_shapes import LeaseThenCommitTurn, OneTransactionTurn
from duroxide_celery.registry import Registry
from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import ScheduleActivity
from duroxide_celery.tasks.executor_parts import ExecutorParts
from duroxide_celery.tasks.identity import WorkerIdentity
from duroxide_celery.tasks.queues import QueueNames
from duroxide_celery.tasks.turn import TurnExecutor

SHAPES = pytest.mark.parametrize("shape", [OneTransactionTurn, LeaseThenCommitTurn], ids=["sqlite", "postgres"])
START = (7, {"kind": ev.MSG_START, "name": "Orch", "input": json.dumps("in"), "version": None})


class FakeKeeper:
    def __init__(self) -> None:
        self.held: list[tuple[str, str]] = []

    def hold(self, instance_id: str, owner: str, lease_ms: int) -> None:
        self.held.append((instance_id, owner))

    def drop(self, instance_id: str, owner: str) -> None:
        self.held.remove((instance_id, owner))


class FakeStore:
    """The store operations a turn uses, over in-memory state; `calls` lists them in order."""

    def __init__(self, shape: type, lease: InstanceLease | None, messages: list[tuple[int, dict[str, Any]]]):
        self.shape = shape
        self.lease = lease
        self.messages = messages
        self.calls: list[str] = []
        self.commits: list[TurnChanges] = []
        self.lose_lease_at_commit = False
        #: A message another worker commits while this turn's commit is in flight (its poke finds the lease held).
        self.arrives_during_commit: tuple[int, dict[str, Any]] | None = None
        self.acquired = 0
        self.lease_keeper = FakeKeeper()

    def begin_turn(self, instance_id: str, owner: str, lease_ms: int, prefix: Any = None) -> Any:
        return self.shape(self, instance_id, owner, lease_ms, prefix)

    @contextmanager
    def _transaction(self, name: str) -> Iterator[str]:
        self.calls.append(f"begin {name}")
        try:
            yield name
        except BaseException:
            self.calls.append(f"rollback {name}")
            raise
        self.calls.append(f"commit {name}")

    def write(self) -> Any:
        return self._transaction("write")

    def lease_transaction(self) -> Any:
        return self._transaction("lease")

    def has_inbox(self, instance_id: str, conn: Any = None) -> bool:
        return bool(self.messages)

    def acquire_instance(self, instance_id: str, owner: str, lease_ms: int, conn: Any = None) -> InstanceLease | None:
        self.calls.append("acquire")
        self.acquired += 1
        if self.lease is not None:
            self.lease.owner = owner
        return self.lease

    def lease_and_load(self, instance_id: str, owner: str, lease_ms: int, prefix: Any = None) -> Any:
        """The lease and the turn's reads in one statement that commits as it runs (PostgreSQL)."""
        with self._transaction("lease"):
            lease = self.acquire_instance(instance_id, owner, lease_ms)
            return None if lease is None else LoadedLease(lease, self.load_turn(instance_id, lease.execution_id), 0)

    def load_turn(self, instance_id: str, execution_id: int, after_event_id: int = 0, conn: Any = None) -> Any:
        self.calls.append("load")
        return [], list(self.messages), {}

    def get_kv(self, instance_id: str, key: str, conn: Any = None) -> str | None:
        return None

    def release_instance(self, instance_id: str, owner: str, **kwargs: Any) -> None:
        self.calls.append("release")

    def count_failed_attempt(self, instance_id: str, cause: str | None = None) -> None:
        self.calls.append(f"failed attempt: {cause}")

    def renew_instance(self, instance_id: str, owner: str, lease_ms: int) -> bool:
        return True

    def commit_turn(self, lease: InstanceLease, changes: TurnChanges, *, conn: Any) -> Any:
        self.calls.append(f"commit_turn on {conn}")
        if self.lose_lease_at_commit:
            raise LeaseLost(lease.instance_id)
        self.commits.append(changes)
        self.messages = []
        # A message committed while the lease was held: its poke was refused and counted, which the fence reads.
        more = self.arrives_during_commit is not None
        if self.arrives_during_commit is not None:
            self.messages, self.arrives_during_commit = [self.arrives_during_commit], None
            self.lease = None  # the next turn's lease goes to whoever took the new message's poke
        activities = [
            PendingActivity(lease.instance_id, lease.execution_id, a.event_id, a.name, a.session_id, a.tag)
            for a in changes.activities
        ]
        pokes = [(n.instance_id, None) for n in changes.parent_notifications]
        return PublishPlan(activities=activities, pokes=pokes, more=more)


class FakePublisher:
    pending = None

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def activities(self, items: Any, countdown: float | None = None) -> None:
        items = list(items)
        if items:
            self.sent.append(("activities", items))

    def poke(self, targets: Any, countdown: float | None = None, force: bool = False) -> None:
        if targets:
            self.sent.append(("poke", list(targets)))

    def timers_created(self, earliest_fire_at: int) -> None:
        self.sent.append(("timers", earliest_fire_at))


def orch(ctx: Any, value: Any) -> Any:
    result = yield ctx.schedule_activity("Act", value)
    return result


def lease(attempts: int = 1) -> InstanceLease:
    return InstanceLease("i1", 1, "Orch", "Running", attempts, 0, 0)


def executor(store: FakeStore, publisher: FakePublisher, options: RuntimeOptions | None = None) -> TurnExecutor:
    registry = Registry()
    registry.register_orchestration("Orch", orch)
    parts = ExecutorParts(
        store=lambda: store,  # type: ignore[arg-type, return-value]
        publisher=publisher,  # type: ignore[arg-type]
        settings=options or RuntimeOptions(),
        identity=WorkerIdentity.create("node-1", None),
        registry=registry,
        metrics=Metrics(),
        tracing=Tracing(),
    )
    return TurnExecutor(parts, queues=QueueNames("duroxide"))


@SHAPES
def test_a_refused_lease_writes_and_publishes_nothing(shape):
    store, publisher = FakeStore(shape, None, [START]), FakePublisher()
    executor(store, publisher).run("i1")
    assert store.commits == [] and publisher.sent == []
    assert "commit_turn" not in " ".join(store.calls) and "release" not in store.calls


@SHAPES
def test_a_turn_that_schedules_an_activity_commits_its_changes_then_publishes_the_activity(shape):
    store, publisher = FakeStore(shape, lease(), [START]), FakePublisher()
    executor(store, publisher, RuntimeOptions(default_activity_ttl_ms=5000)).run("i1")
    [changes] = store.commits
    assert [e.kind for e in changes.history] == [ev.ORCHESTRATION_STARTED, ev.ACTIVITY_SCHEDULED]
    assert changes.consumed == [7]
    assert changes.activities == [ScheduleActivity(2, "Act", json.dumps("in"))]
    assert changes.default_activity_ttl_ms == 5000
    assert changes.orchestration == ("Orch", "1.0.0")  # an unversioned registration is version 1.0.0
    assert changes.instance == {"orchestration_version": "1.0.0"}  # still running: no status change
    assert publisher.sent == [("activities", [PendingActivity("i1", 1, 2, "Act")])]
    # The lease's owner is this turn's own, under the worker's node id.
    assert store.lease is not None and store.lease.owner.startswith("node-1")
    if shape is OneTransactionTurn:  # lease, replay and commit in one write transaction
        assert store.calls == ["begin write", "acquire", "load", "commit_turn on write", "commit write"]
    else:  # the lease and its reads commit first; the commit has its own transaction; the lease is renewed meanwhile
        assert store.calls == [
            "begin lease",
            "acquire",
            "load",
            "commit lease",
            "begin write",
            "commit_turn on write",
            "commit write",
        ]
        assert store.lease_keeper.held == []  # held during the replay, dropped when the turn ended


@SHAPES
def test_a_poisoned_turn_fails_the_orchestration_without_running_it(shape):
    options = RuntimeOptions(max_attempts=3)
    store, publisher = FakeStore(shape, lease(attempts=4), [START]), FakePublisher()
    with pytest.raises(OrchestrationFailed, match=r"orchestration 'Orch' of instance i1 .*\[Poison\]"):
        executor(store, publisher, options).run("i1")
    [changes] = store.commits
    assert [e.kind for e in changes.history] == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_FAILED]
    details = changes.history[1].data["details"]
    assert details["category"] == ev.POISON
    assert details["message"] == "poison: orchestration i1 exceeded 4 attempts (max 3)"
    assert changes.consumed == [7]
    assert changes.activities == []
    assert changes.instance["status"] == "Failed"
    assert changes.execution["status"] == "Failed"
    assert publisher.sent == []  # no parent to tell, no work


@SHAPES
def test_a_lease_lost_at_commit_publishes_nothing_and_counts_no_attempt(shape, caplog):
    store, publisher = FakeStore(shape, lease(), [START]), FakePublisher()
    store.lose_lease_at_commit = True
    turns = executor(store, publisher)
    turns.run("i1")
    assert store.commits == [] and publisher.sent == []
    assert not [c for c in store.calls if c.startswith("failed attempt")] and "release" not in store.calls
    assert store.calls[-1] == "rollback write"  # the commit transaction was undone
    assert len(turns.engines) == 0  # the replayed engine is not kept: its history never committed
    assert "lease on i1 lost during its turn" in caplog.text


@SHAPES
def test_a_turn_whose_store_fails_counts_the_attempt_and_retries(shape):
    store, publisher = FakeStore(shape, lease(), [START]), FakePublisher()

    def broken_load(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database went away")

    store.load_turn = broken_load  # type: ignore[method-assign]
    executor(store, publisher).run("i1")
    assert store.commits == []
    if shape is OneTransactionTurn:  # the rollback undid the lease and its count: the attempt is counted again
        assert store.calls[-1] == "failed attempt: turn attempt failed: RuntimeError: database went away"
        assert publisher.sent == [("poke", [("i1", "Orch")])]
    else:  # the lease statement failed whole: nothing is held, and the owner-guarded release changes nothing
        assert store.calls[-2:] == ["rollback lease", "release"]
        assert publisher.sent == [("poke", [("i1", None)])]


def test_a_message_arriving_during_a_lease_fenced_commit_is_read_after_the_commit():
    """PostgreSQL: a poke for a message committed while the lease is held is refused and counted; the commit's
    fence reads the count, and the task takes another turn for it."""
    store, publisher = FakeStore(LeaseThenCommitTurn, lease(), [START]), FakePublisher()
    store.arrives_during_commit = (8, {"kind": ev.MSG_ACTIVITY_COMPLETED, "execution_id": 1, "event_id": 2})
    executor(store, publisher).run("i1")
    assert len(store.commits) == 1
    assert store.acquired == 2  # the second turn went for the new message
    assert publisher.sent == [("activities", [PendingActivity("i1", 1, 2, "Act")])]
