"""Durability: a runtime stopped mid-orchestration leaves everything in the store, and a NEW runtime (a new
provider object on the same database, as after a process restart) finishes the work; many concurrent instances
each complete exactly once."""

from __future__ import annotations

import threading

import pytest

from duroxide_celery import Client, RuntimeOptions

from .helpers import WAIT_MS, assert_well_formed, kinds, wait_for_kind

# The restarted runtime sweeps for stranded work often, so recovery does not wait for the 10 s default.
FAST_RECOVERY = RuntimeOptions(recovery_interval_ms=100, recovery_threshold_ms=0)


@pytest.fixture(autouse=True)
def _file_backed(store):
    assert store.kind in ("sqlite", "postgres")  # never in-memory: the data must outlive the first runtime


def _steps(ctx, x):
    a = yield ctx.schedule_activity("Inc", x)
    yield ctx.schedule_timer(200)
    b = yield ctx.schedule_activity("Inc", a)
    return b


INC = {"Inc": lambda ctx, x: x + 1}


def test_restart_while_waiting_on_a_timer(runtime_factory, store, client):
    first = runtime_factory({"Steps": _steps}, INC)
    client.start_orchestration("dur-timer", "Steps", 1)
    wait_for_kind(client, "dur-timer", "TimerCreated")
    first.shutdown()

    restarted = store.open()
    runtime_factory({"Steps": _steps}, INC, provider_=restarted, options=FAST_RECOVERY)
    client2 = Client(restarted)
    result = client2.wait_for_orchestration("dur-timer", WAIT_MS)
    assert (result.status, result.output) == ("Completed", 3)
    history = assert_well_formed(client2, "dur-timer")
    assert [e.kind for e in history].count("TimerFired") == 1


def test_restart_while_waiting_on_an_event_raised_while_down(runtime_factory, store, client):
    def approval(ctx, _):
        before = yield ctx.schedule_activity("Inc", 0)
        approved = yield ctx.wait_for_event("approve")
        return {"before": before, "approved": approved}

    first = runtime_factory({"Approval": approval}, INC)
    client.start_orchestration("dur-event", "Approval")
    wait_for_kind(client, "dur-event", "ExternalSubscribed")
    first.shutdown()

    # No runtime anywhere: the event is only a row in the store until a runtime starts.
    offline = Client(store.open())
    offline.raise_event("dur-event", "approve", {"by": "ops"})
    assert offline.get_status("dur-event").status == "Running"

    restarted = store.open()
    runtime_factory({"Approval": approval}, INC, provider_=restarted, options=FAST_RECOVERY)
    result = Client(restarted).wait_for_orchestration("dur-event", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"before": 1, "approved": {"by": "ops"}})
    assert_well_formed(client, "dur-event")


def test_restart_while_an_activity_is_running(runtime_factory, store, client):
    gate, started = threading.Event(), threading.Event()
    calls = []

    def block_once(ctx, x):
        calls.append(ctx.worker_id)
        if len(calls) == 1:
            started.set()
            gate.wait(WAIT_MS / 1000)  # the first worker "dies" holding this activity
            return "from the dead worker"
        return f"redone {x}"

    def orch(ctx, x):
        return (yield ctx.schedule_activity("Block", x))

    # A short activity lease: once the first runtime stops renewing it, the work item is up for grabs.
    first = runtime_factory({"O": orch}, {"Block": block_once}, options=RuntimeOptions(worker_lock_timeout_ms=1000))
    client.start_orchestration("dur-activity", "O", "x")
    assert started.wait(WAIT_MS / 1000)
    try:
        first.shutdown(timeout_ms=200)

        restarted = store.open()
        runtime_factory({"O": orch}, {"Block": block_once}, provider_=restarted, options=FAST_RECOVERY)
        result = Client(restarted).wait_for_orchestration("dur-activity", WAIT_MS)
        assert (result.status, result.output) == ("Completed", "redone x")
    finally:
        gate.set()
    assert len(calls) == 2  # at-least-once execution...
    history = assert_well_formed(client, "dur-activity")  # ...exactly-once history
    assert [e.kind for e in history].count("ActivityCompleted") == 1


def test_hundred_concurrent_instances_complete_exactly_once(runtime_factory, client):
    def work(ctx, n):
        results = yield ctx.all([ctx.schedule_activity("Square", n), ctx.schedule_activity("Square", n + 1)])
        total = yield ctx.schedule_activity("Sum", [r["ok"] for r in results])
        return total

    runtime_factory({"Work": work}, {"Square": lambda ctx, n: n * n, "Sum": lambda ctx, xs: sum(xs)})
    ids = [f"many-{i:03d}" for i in range(100)]
    for i, instance_id in enumerate(ids):
        client.start_orchestration(instance_id, "Work", i)
    for i, instance_id in enumerate(ids):
        result = client.wait_for_orchestration(instance_id, 60_000)
        assert (result.status, result.output) == ("Completed", i * i + (i + 1) * (i + 1)), instance_id
    for instance_id in ids:
        history = assert_well_formed(client, instance_id)
        assert [e.kind for e in history].count("ActivityScheduled") == 3
        assert kinds(client, instance_id).count("OrchestrationStarted") == 1
    assert sorted(client.list_instances_by_status("Completed")) == ids
