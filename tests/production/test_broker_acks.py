"""Real worker processes on Redis report their broker settings over Celery's remote control: a worker of duroxide
queues only runs without kombu's Redis ack emulation (duroxide_celery/broker_acks.py), a worker that also consumes
another queue keeps it, and work still completes on the duroxide-only workers."""

from __future__ import annotations

from typing import Any

from .conftest import Cluster, Proc


def _transport_options(cluster: Cluster, node: str) -> dict[str, Any]:
    replies = cluster.app.control.inspect(destination=[node], timeout=5).conf(with_defaults=False) or {}
    assert node in replies, f"{node} did not answer: {replies}\n{cluster.logs()}"
    return replies[node].get("broker_transport_options") or {}


def _worker(cluster: Cluster, name: str, queues: list[str]) -> tuple[Proc, str]:
    node = f"{name}-{cluster.prefix}@acks"
    argv = ["worker", "-Q", ",".join(queues), "-P", "threads", "-c", "2", "-n", node, "-l", "INFO"]
    proc = cluster._celery(f"worker-{name}", argv + ["--without-mingle", "--without-gossip"], None)
    proc.wait_for_log(" ready.")
    return proc, node


def test_duroxide_only_workers_skip_ack_emulation_and_others_keep_it(redis_cluster: Cluster) -> None:
    prefix = redis_cluster.prefix
    _, orch = _worker(redis_cluster, "orch", [f"{prefix}.orchestrator"])
    _, act = _worker(redis_cluster, "act", [f"{prefix}.activities"])
    _, mixed = _worker(redis_cluster, "mixed", [f"{prefix}.orchestrator", f"{prefix}.emails"])
    assert _transport_options(redis_cluster, orch).get("ack_emulation") is False
    assert _transport_options(redis_cluster, act).get("ack_emulation") is False
    assert "ack_emulation" not in _transport_options(redis_cluster, mixed)

    ids = [f"job-{i}" for i in range(5)]
    for instance_id in ids:
        redis_cluster.client.start_orchestration(instance_id, "SlowJob", 0)
    for instance_id in ids:
        result = redis_cluster.client.wait_for_orchestration(instance_id, 60_000)
        assert result.status == "Completed", (instance_id, result.error, redis_cluster.logs())
        assert result.output == {"job": instance_id, "result": "slept 0"}
