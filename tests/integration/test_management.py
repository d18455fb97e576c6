"""Management API (semantics.md 1.5, 1.8, 2.21): instance trees, delete (cascade, force, refusals), prune after
continue-as-new, the bulk variants and their filters, system metrics, queue depths and per-instance stats."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from duroxide_celery import (
    DeleteInstanceResult,
    InstanceFilter,
    InstanceTree,
    PruneOptions,
    PruneResult,
    QueueDepths,
    RuntimeOptions,
    SystemMetrics,
    SystemStats,
)
from duroxide_celery.errors import CannotDeleteSubOrchestration, InstanceNotFound, InstanceStillRunning

from .helpers import WAIT_MS, kinds, wait_for_kind, wait_until

TABLES = ("dx_instances", "dx_executions", "dx_history", "dx_inbox", "dx_work_items", "dx_timers", "dx_kv")


def _waiter(ctx, _):
    return (yield ctx.wait_for_event("go"))


def _leaf(ctx, x):
    ctx.set_kv_value("leaf", str(x))
    return (yield ctx.schedule_activity("Double", x))


def _mid(ctx, x):
    return (yield ctx.schedule_sub_orchestration("Leaf", x))  # generated id: mid::sub::N


def _root(ctx, x):
    yield ctx.start_orchestration("Leaf", "tree-detached", 100)  # detached: not part of the tree
    return (yield ctx.schedule_sub_orchestration_with_id("Mid", "tree-child", x))


def _stepper(ctx, n):
    """Continue-as-new on every 'next' event until n reaches 3: executions 1, 2, 3; the last one waits for 'go'
    unless its input says to finish."""
    ctx.set_kv_value("n", str(n))
    if n < 3:
        yield ctx.wait_for_event("next")
        yield ctx.continue_as_new(n + 1)
    return n


TREE_ORCHESTRATIONS = {"Root": _root, "Mid": _mid, "Leaf": _leaf}
TREE_ACTIVITIES = {"Double": lambda ctx, x: x * 2}


def _engine(provider) -> sa.Engine:
    return provider.store.engine


def _rows(provider, instance_ids) -> dict[str, int]:
    """Rows each table still holds for these instances."""
    counts = {}
    with _engine(provider).connect() as conn:
        for table in TABLES:
            query = sa.text(f"SELECT COUNT(*) FROM {table} WHERE instance_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            )
            counts[table] = conn.execute(query, {"ids": list(instance_ids)}).scalar()
    return counts


def _event_total(client, instance_ids) -> int:
    return sum(len(client.read_execution_history(i, e)) for i in instance_ids for e in client.list_executions(i))


def _grandchild(client) -> str:
    (grandchild,) = [i for i in client.list_all_instances() if i.startswith("tree-child::sub::")]
    return grandchild


def _run_tree(runtime_factory, client) -> list[str]:
    runtime_factory(TREE_ORCHESTRATIONS, TREE_ACTIVITIES)
    client.start_orchestration("tree-root", "Root", 21)
    result = client.wait_for_orchestration("tree-root", WAIT_MS)
    assert (result.status, result.output) == ("Completed", 42)
    assert client.wait_for_orchestration("tree-detached", WAIT_MS).output == 200
    return ["tree-root", "tree-child", _grandchild(client)]


def _run_steps(client, instance_id: str) -> None:
    """Drive a Stepper from execution 1 to 3 (completed); completions are at least 5 ms apart."""
    client.start_orchestration(instance_id, "Stepper", 1)
    for execution_id in (1, 2):
        wait_for_kind(client, instance_id, "ExternalSubscribed", execution_id)
        time.sleep(0.005)
        client.raise_event(instance_id, "next")
    assert client.wait_for_orchestration(instance_id, WAIT_MS).output == 3
    assert client.list_executions(instance_id) == [1, 2, 3]


# -- trees ------------------------------------------------------------------------------------------------------
def test_instance_tree_with_child_and_grandchild(runtime_factory, client):
    root, child, grandchild = _run_tree(runtime_factory, client)
    assert grandchild.startswith("tree-child::sub::")

    tree = client.get_instance_tree(root)
    assert isinstance(tree, InstanceTree)
    assert (tree.root_id, tree.all_ids, tree.size) == (root, [root, child, grandchild], 3)
    sub = client.get_instance_tree(child)
    assert (sub.root_id, sub.all_ids, sub.size) == (child, [child, grandchild], 2)
    assert client.get_instance_tree(grandchild).all_ids == [grandchild]
    # A detached start is its own root, not a child.
    assert client.get_instance_info("tree-detached").parent_instance_id is None
    assert client.get_instance_tree("tree-detached").all_ids == ["tree-detached"]

    with pytest.raises(InstanceNotFound, match="nobody") as info:
        client.get_instance_tree("nobody")
    assert isinstance(info.value, RuntimeError)


def test_tree_of_a_running_parent_includes_its_live_child(runtime_factory, client):
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Waiter", "live-child", None))

    runtime_factory({"Parent": parent, "Waiter": _waiter})
    client.start_orchestration("live-parent", "Parent")
    wait_for_kind(client, "live-child", "ExternalSubscribed")
    assert client.get_instance_tree("live-parent").all_ids == ["live-parent", "live-child"]


# -- delete -----------------------------------------------------------------------------------------------------
def test_delete_root_cascades_atomically_to_the_whole_tree(runtime_factory, client, provider):
    tree_ids = _run_tree(runtime_factory, client)
    events = _event_total(client, tree_ids)
    # root: started, chained, sub scheduled, sub completed, completed; mid: 4 (no chained); leaf: started,
    # KeyValueSet, activity scheduled, activity completed, completed.
    assert events == 5 + 4 + 5
    assert client.get_kv_value(tree_ids[2], "leaf") == "21"
    before = _rows(provider, tree_ids)
    assert before["dx_kv"] == 1 and before["dx_history"] == events

    result = client.delete_instance("tree-root")
    assert isinstance(result, DeleteInstanceResult)
    assert result == DeleteInstanceResult(
        instances_deleted=3, executions_deleted=3, events_deleted=events, queue_messages_deleted=0
    )
    assert _rows(provider, tree_ids) == dict.fromkeys(TABLES, 0)
    for instance_id in tree_ids:
        assert client.get_status(instance_id).status == "NotFound"
    assert client.get_kv_value(tree_ids[2], "leaf") is None
    # The detached instance is not part of the tree and survives.
    assert client.list_all_instances() == ["tree-detached"]
    assert client.get_status("tree-detached").output == 200

    with pytest.raises(InstanceNotFound, match="tree-root"):
        client.delete_instance("tree-root")


def test_deleting_a_sub_orchestration_directly_is_refused(runtime_factory, client, provider):
    root, child, grandchild = _run_tree(runtime_factory, client)
    for sub in (child, grandchild):
        with pytest.raises(CannotDeleteSubOrchestration) as info:
            client.delete_instance(sub, force=True)
        assert isinstance(info.value, RuntimeError)
        assert str(info.value) == (
            f"Cannot delete sub-orchestration {sub} directly. Delete the root orchestration instead."
        )
    assert sorted(client.list_all_instances()) == sorted([root, child, grandchild, "tree-detached"])
    assert _rows(provider, [child])["dx_history"] == 4


def test_delete_unknown_instance_names_it(runtime_factory, client):
    runtime_factory()
    with pytest.raises(InstanceNotFound) as info:
        client.delete_instance("ghost-1")
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, LookupError)
    assert "ghost-1" in str(info.value)
    with pytest.raises(InstanceNotFound, match="ghost-2"):
        client.delete_instance("ghost-2", force=True)


def test_running_instance_requires_force_and_its_work_is_dropped(runtime_factory, client, provider):
    started = threading.Event()
    saw_cancel = threading.Event()
    returned = threading.Event()

    def slow(ctx, _):
        started.set()
        deadline = time.monotonic() + WAIT_MS / 1000
        while not ctx.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.02)
        if ctx.is_cancelled():
            saw_cancel.set()
        returned.set()
        return "too late"

    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("Slow", None), ctx.schedule_timer(3_600_000)))

    runtime_factory({"Busy": orch}, {"Slow": slow})
    client.start_orchestration("busy", "Busy")
    assert started.wait(WAIT_MS / 1000)
    wait_for_kind(client, "busy", "TimerCreated")
    history = len(client.read_execution_history("busy", 1))

    with pytest.raises(InstanceStillRunning) as info:
        client.delete_instance("busy")
    assert isinstance(info.value, RuntimeError)
    assert "busy" in str(info.value) and "force=True" in str(info.value)
    assert client.get_status("busy").status == "Running"  # refused: nothing was deleted

    result = client.delete_instance("busy", force=True)
    # The activity's work item (leased by the running activity) and the timer were pending.
    assert result == DeleteInstanceResult(1, 1, history, 2)
    assert client.get_status("busy").status == "NotFound"

    # The running activity learns its work is gone, and what it returns is dropped: no row comes back.
    assert saw_cancel.wait(WAIT_MS / 1000)
    assert returned.wait(WAIT_MS / 1000)
    time.sleep(0.3)
    assert _rows(provider, ["busy"]) == dict.fromkeys(TABLES, 0)
    assert client.list_all_instances() == []


def test_running_child_blocks_delete_of_its_root_without_force(runtime_factory, client, provider):
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Waiter", "blocking-child", None))

    runtime_factory({"Parent": parent, "Waiter": _waiter})
    client.start_orchestration("blocking-root", "Parent")
    wait_for_kind(client, "blocking-child", "ExternalSubscribed")
    with pytest.raises(InstanceStillRunning, match="blocking-root"):
        client.delete_instance("blocking-root")
    result = client.delete_instance("blocking-root", force=True)
    assert (result.instances_deleted, result.executions_deleted) == (2, 2)
    assert client.list_all_instances() == []


def test_a_deleted_id_can_be_started_again(runtime_factory, client):
    """The worker's caches of the deleted instance (its history, its suspended generator) must not leak into the
    new instance with the same id."""

    def echo(ctx, inp):
        got = yield ctx.wait_for_event("go")
        return [inp, got]

    runtime_factory({"Echo": echo})
    client.start_orchestration("reuse", "Echo", "first")
    wait_for_kind(client, "reuse", "ExternalSubscribed")
    client.delete_instance("reuse", force=True)

    client.start_orchestration("reuse", "Echo", "second")
    wait_for_kind(client, "reuse", "ExternalSubscribed")
    assert kinds(client, "reuse") == ["OrchestrationStarted", "ExternalSubscribed"]
    client.raise_event("reuse", "go", 2)
    result = client.wait_for_orchestration("reuse", WAIT_MS)
    assert (result.status, result.output) == ("Completed", ["second", 2])

    # Same again after it completed.
    client.delete_instance("reuse")
    client.start_orchestration("reuse", "Echo", "third")
    wait_for_kind(client, "reuse", "ExternalSubscribed")
    client.raise_event("reuse", "go", 3)
    assert client.wait_for_orchestration("reuse", WAIT_MS).output == ["third", 3]
    assert kinds(client, "reuse") == [
        "OrchestrationStarted",
        "ExternalSubscribed",
        "ExternalEvent",
        "OrchestrationCompleted",
    ]


# -- bulk delete ------------------------------------------------------------------------------------------------
def test_delete_instance_bulk_filters(runtime_factory, client):
    def parent(ctx, x):
        return (yield ctx.schedule_sub_orchestration_with_id("Done", "bulk-child", x))

    def boom(ctx, _):
        raise ValueError("boom")

    runtime_factory({"Done": lambda ctx, x: x, "Boom": boom, "Parent": parent, "Waiter": _waiter})
    client.start_orchestration("bulk-old", "Done", 1)
    assert client.wait_for_orchestration("bulk-old", WAIT_MS).status == "Completed"
    time.sleep(0.02)
    cutoff = int(time.time() * 1000)
    time.sleep(0.02)
    for instance_id, name in (("bulk-a", "Done"), ("bulk-failed", "Boom"), ("bulk-parent", "Parent")):
        client.start_orchestration(instance_id, name, 2)
        assert client.wait_for_orchestration(instance_id, WAIT_MS).status in ("Completed", "Failed")
    client.start_orchestration("bulk-running", "Waiter")
    wait_for_kind(client, "bulk-running", "ExternalSubscribed")
    assert client.get_status("bulk-failed").status == "Failed"

    # Ids: only finished roots are deleted; a sub-orchestration, a running instance and an unknown id are skipped.
    result = client.delete_instance_bulk(
        InstanceFilter(instance_ids=["bulk-a", "bulk-child", "bulk-running", "nobody"])
    )
    assert result == DeleteInstanceResult(1, 1, 2, 0)
    assert "bulk-a" not in client.list_all_instances()

    # Filters are ANDed: these two ids both finished after the cutoff.
    assert (
        client.delete_instance_bulk(
            InstanceFilter(instance_ids=["bulk-failed", "bulk-parent"], completed_before=cutoff)
        )
        == DeleteInstanceResult()
    )
    # completed_before alone: only the instance that finished before the cutoff.
    assert client.delete_instance_bulk(InstanceFilter(completed_before=cutoff)).instances_deleted == 1
    assert "bulk-old" not in client.list_all_instances()
    # limit counts roots, oldest first; limit=0 deletes nothing.
    assert client.delete_instance_bulk(InstanceFilter(limit=0)) == DeleteInstanceResult()
    assert client.delete_instance_bulk(InstanceFilter(limit=1)).instances_deleted == 1
    assert "bulk-failed" not in client.list_all_instances()
    # No filter: everything finished, the parent with its child (a cascade); the running instance stays.
    result = client.delete_instance_bulk()
    assert (result.instances_deleted, result.executions_deleted) == (2, 2)
    assert client.list_all_instances() == ["bulk-running"]
    assert client.delete_instance_bulk() == DeleteInstanceResult()


# -- prune ------------------------------------------------------------------------------------------------------
def test_prune_after_continue_as_new_keeps_the_last(runtime_factory, client, provider):
    runtime_factory({"Stepper": _stepper})
    _run_steps(client, "prune-1")
    old_events = len(client.read_execution_history("prune-1", 1)) + len(client.read_execution_history("prune-1", 2))
    last = client.read_execution_history("prune-1", 3)

    result = client.prune_executions("prune-1", PruneOptions(keep_last=1))
    assert isinstance(result, PruneResult)
    assert result == PruneResult(instances_processed=1, executions_deleted=2, events_deleted=old_events)
    assert client.list_executions("prune-1") == [3]
    assert client.read_execution_history("prune-1", 3) == last
    assert client.read_execution_history("prune-1", 1) == []
    status = client.get_status("prune-1")
    assert (status.status, status.output) == ("Completed", 3)
    assert client.get_kv_value("prune-1", "n") == "3"  # KV is not touched
    assert client.prune_executions("prune-1") == PruneResult(1, 0, 0)  # nothing left to prune


def test_prune_keep_last_none_zero_and_one_are_equivalent(runtime_factory, client):
    runtime_factory({"Stepper": _stepper})
    for instance_id, options in (
        ("keep-none", None),
        ("keep-default", PruneOptions()),
        ("keep-0", PruneOptions(keep_last=0)),
        ("keep-1", PruneOptions(keep_last=1)),
    ):
        _run_steps(client, instance_id)
        assert client.prune_executions(instance_id, options).executions_deleted == 2
        assert client.list_executions(instance_id) == [3]
    _run_steps(client, "keep-2")
    assert client.prune_executions("keep-2", PruneOptions(keep_last=2)).executions_deleted == 1
    assert client.list_executions("keep-2") == [2, 3]
    _run_steps(client, "keep-5")
    assert client.prune_executions("keep-5", PruneOptions(keep_last=5)).executions_deleted == 0
    assert client.list_executions("keep-5") == [1, 2, 3]


def test_prune_completed_before(runtime_factory, client):
    runtime_factory({"Stepper": _stepper})
    _run_steps(client, "prune-cb")
    first, second = (client.get_execution_info("prune-cb", e) for e in (1, 2))
    assert first.completed_at < second.completed_at
    # Strictly before: the cutoff at execution 2's completion removes execution 1 only.
    result = client.prune_executions("prune-cb", PruneOptions(completed_before=second.completed_at))
    assert (result.executions_deleted, client.list_executions("prune-cb")) == (1, [2, 3])
    assert client.prune_executions("prune-cb", PruneOptions(completed_before=0)).executions_deleted == 0
    # Both criteria must hold: keep_last=2 protects execution 2 whatever its age.
    far_future = int(time.time() * 1000) + 3_600_000
    both = PruneOptions(keep_last=2, completed_before=far_future)
    assert client.prune_executions("prune-cb", both).executions_deleted == 0
    assert client.prune_executions("prune-cb", PruneOptions(completed_before=far_future)).executions_deleted == 1
    assert client.list_executions("prune-cb") == [3]


def test_prune_a_running_instance_never_touches_its_current_execution(runtime_factory, client):
    def looper(ctx, n):
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return (yield ctx.wait_for_event("go"))

    runtime_factory({"Looper": looper})
    client.start_orchestration("loop", "Looper", 1)
    wait_for_kind(client, "loop", "ExternalSubscribed", 3)
    assert client.list_executions("loop") == [1, 2, 3]
    result = client.prune_executions("loop", PruneOptions(keep_last=0))
    assert (result.instances_processed, result.executions_deleted) == (1, 2)
    assert client.list_executions("loop") == [3]
    # The instance carries on in its current execution.
    client.raise_event("loop", "go", "on")
    assert client.wait_for_orchestration("loop", WAIT_MS).output == "on"
    assert client.list_executions("loop") == [3]

    with pytest.raises(InstanceNotFound, match="nobody"):
        client.prune_executions("nobody")


def test_prune_executions_bulk(runtime_factory, client):
    def looper(ctx, n):
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return (yield ctx.wait_for_event("go"))

    runtime_factory({"Stepper": _stepper, "Looper": looper, "Once": lambda ctx, x: x})
    _run_steps(client, "bulk-p1")
    _run_steps(client, "bulk-p2")
    client.start_orchestration("bulk-once", "Once", 1)
    client.wait_for_orchestration("bulk-once", WAIT_MS)
    client.start_orchestration("bulk-loop", "Looper", 1)
    wait_for_kind(client, "bulk-loop", "ExternalSubscribed", 3)

    # The filter selects; instance_ids alone:
    result = client.prune_executions_bulk(InstanceFilter(instance_ids=["bulk-p1"]), PruneOptions(keep_last=2))
    assert (result.instances_processed, result.executions_deleted) == (1, 1)
    assert client.list_executions("bulk-p1") == [2, 3]
    # completed_before looks at the current execution: the running loop is left out.
    far_future = int(time.time() * 1000) + 3_600_000
    result = client.prune_executions_bulk(InstanceFilter(completed_before=far_future, limit=1))
    assert result.instances_processed == 1  # limit: the oldest matching instance only (bulk-p1)
    assert client.list_executions("bulk-p1") == [3]
    assert client.list_executions("bulk-p2") == [1, 2, 3]
    # No filter: every instance, running ones included; each keeps its current execution.
    result = client.prune_executions_bulk()
    assert (result.instances_processed, result.executions_deleted) == (4, 4)
    for instance_id in ("bulk-p1", "bulk-p2", "bulk-loop"):
        assert client.list_executions(instance_id) == [3]
    assert client.list_executions("bulk-once") == [1]
    assert client.get_status("bulk-loop").status == "Running"
    assert client.prune_executions_bulk(InstanceFilter(limit=0)) == PruneResult()


# -- metrics, depths, stats -------------------------------------------------------------------------------------
def test_metrics_depths_and_stats_with_known_numbers(runtime_factory, client, provider):
    def acts(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Work", 1), ctx.schedule_activity("Work", 2)]))

    def sleeper(ctx, _):
        ctx.set_kv_value("a", "xyz")
        ctx.set_kv_value("b", "é")  # 2 bytes in UTF-8
        yield ctx.schedule_timer(3_600_000)

    def boom(ctx, _):
        raise ValueError("boom")

    assert client.get_system_metrics() == SystemMetrics(0, 0, 0, 0, 0, 0)
    assert client.get_queue_depths() == QueueDepths(0, 0, 0)

    # An orchestration-only node: activity rows stay in the store, unleased.
    rt = runtime_factory(
        {"Done": lambda ctx, x: x, "Boom": boom, "Acts": acts, "Sleeper": sleeper},
        options=RuntimeOptions(worker_concurrency=0),
    )
    for instance_id, name in (("m-done-1", "Done"), ("m-done-2", "Done"), ("m-boom", "Boom")):
        client.start_orchestration(instance_id, name, 1)
        client.wait_for_orchestration(instance_id, WAIT_MS)
    client.start_orchestration("m-acts", "Acts")
    client.start_orchestration("m-sleeper", "Sleeper")
    wait_until(lambda: kinds(client, "m-acts").count("ActivityScheduled") == 2, what="m-acts scheduled")
    wait_for_kind(client, "m-sleeper", "TimerCreated")
    rt.shutdown(timeout_ms=2000)

    # With no runtime, starts and events wait in the inbox.
    client.start_orchestration("m-late-1", "Done", 1)
    client.start_orchestration("m-late-2", "Done", 1)
    client.raise_event("m-sleeper", "ping", 1)

    metrics = client.get_system_metrics()
    assert isinstance(metrics, SystemMetrics)
    # History: 2 per finished instance (started, completed/failed), 3 for m-acts (started, 2 scheduled), 4 for
    # m-sleeper (started, 2 KeyValueSet, TimerCreated), none for the two not started yet.
    assert metrics == SystemMetrics(
        total_instances=7,
        total_executions=7,
        running_instances=4,
        completed_instances=2,
        failed_instances=1,
        total_events=13,
    )
    assert metrics.total_events == _event_total(client, client.list_all_instances())

    depths = client.get_queue_depths()
    assert isinstance(depths, QueueDepths)
    assert depths == QueueDepths(orchestrator_queue=3, worker_queue=2, timer_queue=1)

    stats = client.get_orchestration_stats("m-sleeper")
    assert isinstance(stats, SystemStats)
    with _engine(provider).connect() as conn:
        stored = conn.execute(sa.text("SELECT data FROM dx_history WHERE instance_id = 'm-sleeper'")).scalars().all()
    assert stats == SystemStats(
        history_event_count=4,
        history_size_bytes=sum(len(d.encode()) for d in stored),
        queue_pending_count=1,
        kv_user_key_count=2,
        kv_total_value_bytes=5,
    )
    assert client.get_orchestration_stats("m-late-1") == SystemStats(0, 0, 1, 0, 0)
    assert client.get_orchestration_stats("nobody") is None

    # Leased work is not pending: an instance lease hides its inbox, a worker lease its activity row.
    store = provider.store
    assert store.acquire_instance("m-sleeper", "someone", 60_000) is not None
    assert store.claim_work_item(("m-acts", 1, 2), "some-worker", 60_000) is not None
    assert client.get_queue_depths() == QueueDepths(orchestrator_queue=2, worker_queue=1, timer_queue=1)


def test_stats_count_only_the_current_execution(runtime_factory, client):
    runtime_factory({"Stepper": _stepper})
    _run_steps(client, "stats-can")
    current = client.read_execution_history("stats-can", 3)
    stats = client.get_orchestration_stats("stats-can")
    assert stats.history_event_count == len(current) == 3  # started, KeyValueSet, completed
    assert (stats.queue_pending_count, stats.kv_user_key_count, stats.kv_total_value_bytes) == (0, 1, 1)


# -- bad input --------------------------------------------------------------------------------------------------
def test_management_calls_refuse_bad_input(runtime_factory, client):
    runtime_factory()
    for call in (
        lambda: client.get_instance_tree(1),
        lambda: client.delete_instance(None),
        lambda: client.delete_instance(b"bytes", force=True),
        lambda: client.prune_executions(3.5),
        lambda: client.get_orchestration_stats(["x"]),
        lambda: client.delete_instance_bulk({"limit": 1}),
        lambda: client.prune_executions_bulk(None, {"keep_last": 1}),
        lambda: client.prune_executions("x", PruneOptions),
        lambda: InstanceFilter(instance_ids="single-id"),
        lambda: InstanceFilter(instance_ids=["ok", 2]),
        lambda: InstanceFilter(limit="10"),
        lambda: InstanceFilter(completed_before=1.5),
        lambda: PruneOptions(keep_last=True),
    ):
        with pytest.raises(TypeError):
            call()
    for call in (
        lambda: PruneOptions(keep_last=-1),
        lambda: InstanceFilter(limit=-1),
    ):
        with pytest.raises(ValueError, match="negative"):
            call()
    assert InstanceFilter(instance_ids=["a", "b"]).instance_ids == ("a", "b")
    assert (PruneOptions().keep_last, InstanceFilter().limit) == (None, None)


def test_force_delete_of_a_busy_tree_leaves_no_rows(runtime_factory, client, provider):
    """Delete while turns, activities, timers, children and client events are all in flight: whatever commits
    around the delete, nothing of the tree may be left behind (on PostgreSQL this exercises the row locks)."""

    def worker(ctx, n):
        yield ctx.all([ctx.schedule_activity("Step", i) for i in range(3)])
        yield ctx.schedule_timer(1)
        if n >= 2:
            return n
        yield ctx.continue_as_new(n + 1)

    def busy(ctx, n):
        yield ctx.all(
            [ctx.schedule_activity("Step", i) for i in range(3)]
            + [ctx.schedule_sub_orchestration("Worker", 0), ctx.schedule_timer(5)]
        )
        yield ctx.continue_as_new(n + 1)

    runtime_factory({"Busy": busy, "Worker": worker}, {"Step": lambda ctx, i: i})
    stop = threading.Event()

    def signal(instance_id):
        while not stop.is_set():
            client.raise_event(instance_id, "noise", 1)
            time.sleep(0.002)

    for round_ in range(4):
        root = f"busy-{round_}"
        client.start_orchestration(root, "Busy", 0)
        wait_until(lambda root=root: len(client.get_instance_tree(root).all_ids) >= 3, what=f"{root} has children")
        stop.clear()
        noise = threading.Thread(target=signal, args=(root,), daemon=True)
        noise.start()
        time.sleep(0.05 * round_)
        tree = client.get_instance_tree(root).all_ids
        result = client.delete_instance(root, force=True)
        assert result.instances_deleted >= len(tree)
        time.sleep(0.5)  # let in-flight turns, activities and timers run into the deleted rows
        stop.set()
        noise.join()
        with _engine(provider).connect() as conn:
            left = {
                table: conn.execute(
                    sa.text(f"SELECT COUNT(*) FROM {table} WHERE instance_id LIKE :p"), {"p": f"{root}%"}
                ).scalar()
                for table in TABLES
            }
        assert left == dict.fromkeys(TABLES, 0), (root, left)
    assert client.list_all_instances() == []
