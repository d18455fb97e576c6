"""Crashes of real processes (kill -9 of worker process groups and of beat), a flushed broker and a fault
between a turn's commit and its publish: the store is the truth, the recovery sweep heals, nothing runs twice
into history. PostgreSQL with Redis; the worker kills on RabbitMQ too."""

from __future__ import annotations

import time

from .conftest import Cluster, flush_redis
from .helpers import check_histories, histories, outputs

SLOW_S = 3


def test_activity_worker_killed_mid_activity(any_cluster: Cluster) -> None:
    """A prefork activity worker dies (SIGKILL to its process group) while it runs long SlowStep activities: once
    their leases lapse, the sweep hands them to a second worker; each completion is recorded once. (RabbitMQ
    redelivers the unacked messages at once: the second worker finds the rows still leased and drops them.)"""
    cluster = any_cluster
    cluster.env["SHOP_WORKER_LOCK_MS"] = "3000"
    cluster.worker("orch")
    cluster.beat()
    doomed = cluster.worker("act", pool="prefork", concurrency=3)
    ids = [f"slow-{i}" for i in range(3)]
    for instance_id in ids:
        cluster.client.start_orchestration(instance_id, "SlowJob", SLOW_S)
    claimed = "SELECT count(*) FROM dx_work_items WHERE lock_owner IS NOT NULL AND instance_id = ANY(:ids)"
    cluster.wait_for(lambda: cluster.scalar(claimed, ids=ids) == len(ids), "the doomed worker to claim all three")
    doomed.kill()
    pending = cluster.scalar("SELECT count(*) FROM dx_work_items WHERE instance_id = ANY(:ids)", ids=ids)
    assert pending == len(ids), "an activity finished before the kill: the test did not kill mid-activity"
    cluster.worker("act", pool="prefork", concurrency=3)
    cluster.wait_all_terminal(ids)
    for instance_id, out in outputs(cluster, ids).items():
        assert out == {"job": instance_id, "result": f"slept {SLOW_S}"}
    for instance_id, executions in histories(cluster, ids).items():
        kinds = [k for _, k, _ in executions[1]]
        assert kinds.count("ActivityScheduled") == 1 and kinds.count("ActivityCompleted") == 1, (instance_id, kinds)
    check_histories(cluster)


def test_orchestrator_worker_killed_mid_turns(any_cluster: Cluster) -> None:
    """SIGKILL the prefork orchestrator worker (process group) while many instances are mid-flight; a new
    orchestrator worker finishes all of them (leases lapse, the sweep re-pokes what the dead one held)."""
    cluster = any_cluster
    doomed = cluster.worker("orch", pool="prefork", concurrency=2)
    cluster.worker("act", concurrency=8)
    cluster.beat()
    ids = [f"pipe-{i}" for i in range(40)]
    for i, instance_id in enumerate(ids):
        cluster.client.start_orchestration(instance_id, "Pipeline", i)
    leased = "SELECT count(*) FROM dx_instances WHERE lock_owner IS NOT NULL"

    def mid_turns() -> bool:
        return cluster.scalar("SELECT count(*) FROM dx_history") >= 100 and cluster.scalar(leased) > 0

    cluster.wait_for(mid_turns, "turns under way (history written, an instance leased)")
    doomed.kill()
    done = cluster.scalar(
        "SELECT count(*) FROM dx_instances WHERE status = 'Completed' AND instance_id = ANY(:ids)", ids=ids
    )
    assert done < len(ids), "every instance finished before the kill: nothing was in flight"
    cluster.worker("orch", pool="prefork", concurrency=2)
    cluster.wait_all_terminal(ids)
    assert all(out["child"] is False for out in outputs(cluster, ids).values())
    check_histories(cluster, timers_all_fired=True)


def test_worker_killed_mid_inline_activity(any_cluster: Cluster) -> None:
    """One worker serves turns and activities in one pool, so each turn claims the activity it schedules in its own
    commit and runs it right there, with no activity message (tasks/inline.py). SIGKILL it while those inline
    activities run: their leases lapse, the sweep publishes the rows, and a new worker completes each once."""
    cluster = any_cluster
    cluster.env["SHOP_WORKER_LOCK_MS"] = "3000"
    cluster.beat()
    doomed = cluster.worker("both", concurrency=3)
    ids = [f"inline-{i}" for i in range(3)]
    for instance_id in ids:
        cluster.client.start_orchestration(instance_id, "SlowJob", SLOW_S)
    claimed = "SELECT count(*) FROM dx_work_items WHERE lock_owner IS NOT NULL AND instance_id = ANY(:ids)"
    cluster.wait_for(lambda: cluster.scalar(claimed, ids=ids) == len(ids), "the doomed worker to claim all three")
    doomed.kill()
    pending = cluster.scalar("SELECT count(*) FROM dx_work_items WHERE instance_id = ANY(:ids)", ids=ids)
    assert pending == len(ids), "an activity finished before the kill: the test did not kill mid-activity"
    received = [line for line in doomed.text().splitlines() if line.endswith(" received")]
    assert all("] received" in line and " orch:SlowJob#inline-" in line for line in received), received
    assert len(received) == len(ids), "the doomed worker received other tasks: its activities did not run inline"
    cluster.worker("both", concurrency=3)
    cluster.wait_all_terminal(ids)
    for instance_id, out in outputs(cluster, ids).items():
        assert out == {"job": instance_id, "result": f"slept {SLOW_S}"}
    for instance_id, executions in histories(cluster, ids).items():
        kinds = [k for _, k, _ in executions[1]]
        assert kinds.count("ActivityScheduled") == 1 and kinds.count("ActivityCompleted") == 1, (instance_id, kinds)
    check_histories(cluster)


def test_beat_killed_while_timers_pending(redis_cluster: Cluster) -> None:
    """Kill beat while timers are pending and let them all fall due while it is down; two new beats (racing each
    other on the same timer rows) fire each of them exactly once."""
    cluster = redis_cluster
    cluster.worker("orch", concurrency=8)
    cluster.worker("act", concurrency=8)
    doomed = cluster.beat()
    monitors = [f"mon-{i}" for i in range(15)]
    approvals = [f"appr-{i}" for i in range(10)]
    for instance_id in monitors:
        cluster.client.start_orchestration(instance_id, "Monitor", {"target": instance_id, "interval_ms": 1000})
    for instance_id in approvals:
        cluster.client.start_orchestration(instance_id, "ApprovalWithTimeout", {"timeout_ms": 1500})
    ids = monitors + approvals
    cluster.wait_for(lambda: cluster.scalar("SELECT count(*) FROM dx_timers") >= len(ids), "every instance's timer")
    doomed.kill()
    pending = cluster.scalar("SELECT count(*) FROM dx_timers")
    assert pending > 0
    # Let every pending timer fall due while no beat runs (waiting on a condition, not asserting on time).
    latest = cluster.scalar("SELECT max(fire_at_ms) FROM dx_timers")
    cluster.wait_for(lambda: time.time() * 1000 > latest + 200, "the pending timers to fall due")
    assert cluster.scalar("SELECT count(*) FROM dx_timers") == pending, "a timer fired with no beat running"
    cluster.beat(wait=False)
    cluster.beat()
    cluster.wait_all_terminal(ids)
    results = outputs(cluster, ids)
    assert all(results[m] == {"target": m, "checks": 3} for m in monitors)
    assert all(results[a] == {"decided": False, "escalated_to": "manager"} for a in approvals)
    check_histories(cluster, timers_all_fired=True)


def test_redis_flushed_mid_run(redis_cluster: Cluster) -> None:
    """FLUSHDB in the middle of a run loses every broker message (queued pokes and activity tasks, unacked
    deliveries, kombu's bindings): the recovery sweep republishes from the store and everything completes, and
    work started after the flush runs too."""
    import redis

    cluster = redis_cluster
    cluster.worker("orch", concurrency=4)
    cluster.worker("act", concurrency=2)  # fewer threads than SlowJobs: activity messages wait in the queue
    cluster.beat()
    ids: list[str] = []
    for i in range(6):
        ids.append(f"slow-{i}")
        cluster.client.start_orchestration(ids[-1], "SlowJob", 1)
    for i in range(30):
        ids.append(f"pipe-{i}")
        cluster.client.start_orchestration(ids[-1], "Pipeline", i)
    broker = redis.Redis.from_url(cluster.broker_url)
    queues = [f"{cluster.prefix}.orchestrator", f"{cluster.prefix}.activities"]

    def queued_mid_run() -> bool:
        return cluster.scalar("SELECT count(*) FROM dx_history") >= 20 and sum(broker.llen(q) for q in queues) > 0

    cluster.wait_for(queued_mid_run, "turns under way with messages waiting in the broker")
    flush_redis(cluster.redis_db)  # type: ignore[attr-defined]
    done = cluster.scalar(
        "SELECT count(*) FROM dx_instances WHERE status = 'Completed' AND instance_id = ANY(:ids)", ids=ids
    )
    assert done < len(ids), "every instance finished before the flush"
    for i in range(10):
        ids.append(f"mon-{i}")
        cluster.client.start_orchestration(ids[-1], "Monitor", {"target": ids[-1], "interval_ms": 200})
    cluster.wait_all_terminal(ids)
    outputs(cluster, ids)
    check_histories(cluster, timers_all_fired=True)


def test_fault_between_commit_and_publish(redis_cluster: Cluster) -> None:
    """The orchestrator worker drops the publishes of about half its committed turns (DUROXIDE_FAULT_AFTER_COMMIT,
    a crash between commit and publish): the recovery sweep republishes what the store holds, all complete."""
    cluster = redis_cluster
    orch = cluster.worker("orch", env={"DUROXIDE_FAULT_AFTER_COMMIT": "0.5"})
    cluster.worker("act")
    beat = cluster.beat()
    ids = [f"pipe-{i}" for i in range(8)]
    for i, instance_id in enumerate(ids):
        cluster.client.start_orchestration(instance_id, "Pipeline", i)
    cluster.wait_all_terminal(ids)
    assert all(out["child"] is False for out in outputs(cluster, ids).values())
    log = orch.text()
    assert "fault injected after the commit" in log, "the fault hook never fired"
    assert "recovery sweep republished" in beat.text(), "nothing was healed by the sweep (it runs in beat)"
    check_histories(cluster, timers_all_fired=True)
