"""`celery worker --duroxide-tag-filter FILTER --duroxide-node-id NODE` with real worker processes (semantics.md 2.18,
DESIGN section 3): each worker consumes the activity queues its filter names, tagged steps run on the node that
serves their tag, an unserved tag loses its race with a timer, `any` serves tags first used after it started, and
a bad value stops the worker at once with an error naming the option.

The app is tests/production/tagapp.py; every activity returns the node (ActivityContext.worker_id) that ran it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import AMQP_URL, REDIS_URL, ROOT, Cluster, Proc, _delete_amqp_entities
from .helpers import check_histories, outputs

APP = "tests.production.tagapp"


class TagCluster(Cluster):
    """conftest's Cluster running tagapp instead of examples.shop, with workers started from explicit options."""

    def _celery(self, name: str, args: list[str], extra_env: dict[str, str] | None, app: str = "examples.shop") -> Proc:
        return super()._celery(name, args, extra_env, APP)

    def tag_worker(self, name: str, *options: str, queues: list[str] | None = None, pool: str = "threads") -> Proc:
        """A worker (not yet ready: call wait_for_log) with `-Q queues` (suffixes of the prefix) and `options`."""
        argv = ["worker", "-P", pool, "-c", "2", "-n", f"{name}-{self.prefix}@%h", "-l", "INFO"]
        argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        if queues:
            argv += ["-Q", ",".join(f"{self.prefix}.{q}" for q in queues)]
        return self._celery(f"worker-{name}", argv + list(options), None)

    def close(self) -> None:
        super().close()
        if self.broker == "rabbitmq":  # conftest deletes the orchestrator and untagged queues only
            _delete_amqp_entities(self.prefix, ("activities.gpu", "activities.cpu"))


@pytest.fixture
def tag_cluster(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[TagCluster]:
    cluster = TagCluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    yield cluster
    cluster.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def any_tag_cluster(request: pytest.FixtureRequest, postgres: None, tmp_path: Path) -> Iterator[TagCluster]:
    if request.param == "redis":
        cluster = TagCluster("redis", f"{REDIS_URL}/{request.getfixturevalue('redis_db')}", tmp_path)
    else:
        request.getfixturevalue("rabbitmq")
        cluster = TagCluster("rabbitmq", AMQP_URL, tmp_path)
    yield cluster
    cluster.close()


def ready(*procs: Proc) -> None:
    for proc in procs:
        proc.wait_for_log(" ready.")


def default_node(proc: Proc) -> str:
    """The node id of a worker started without --duroxide-node-id: `~<host>-<pid>-<random>` (the mark of a generated
    id, tasks/queues.py GENERATED_ID_MARK), up to its random part."""
    return f"~{socket.gethostname()}-{proc.pid}-"


def banner_queues(proc: Proc) -> set[str]:
    """The queues a worker's startup banner lists (`.> <name> exchange=...`)."""
    return {line.split()[1] for line in proc.text().splitlines() if line.strip().startswith(".> ")}


def scheduled_tags(cluster: Cluster, instance_id: str) -> list[str | None]:
    rows = cluster.sql(
        "SELECT data FROM dx_history WHERE instance_id = :i AND kind = 'ActivityScheduled' ORDER BY event_id",
        i=instance_id,
    )
    return [json.loads(r[0]).get("tag") for r in rows]


def test_heterogeneous_workers_run_each_step_on_the_node_serving_its_tag(any_tag_cluster: TagCluster) -> None:
    cluster = any_tag_cluster
    p = cluster.prefix
    orch = cluster.tag_worker("orch", queues=["orchestrator"])
    # No -Q: the app's own queue and the engine's; the gpu filter must leave the untagged activities alone.
    gpu = cluster.tag_worker("gpu", "--duroxide-tag-filter", "gpu", "--duroxide-node-id", "gpu-1", pool="prefork")
    cpu = cluster.tag_worker("cpu", "--duroxide-tag-filter", "cpu", queues=["orchestrator"])
    plain = cluster.tag_worker("plain", "--duroxide-node-id", "plain-1", queues=["activities"])
    ready(orch, gpu, cpu, plain)
    assert banner_queues(gpu) == {"celery", f"{p}.orchestrator", f"{p}.activities.gpu"}
    assert banner_queues(cpu) == {f"{p}.orchestrator", f"{p}.activities.cpu"}
    assert banner_queues(plain) == {f"{p}.activities"}

    ids = [f"pipeline-{i}" for i in range(3)]
    for instance_id in ids:
        cluster.client.start_orchestration(instance_id, "Pipeline", None)
    cluster.wait_all_terminal(ids)
    cpu_node = default_node(cpu)
    for instance_id, (prepared, trained, reported, finished) in outputs(cluster, ids).items():
        assert prepared == {"step": "prepare", "node": "plain-1", "tag": None}, instance_id
        assert trained == {"step": "train", "node": "gpu-1", "tag": "gpu"}, instance_id
        assert reported["step"] == "report" and reported["tag"] == "cpu", instance_id
        assert reported["node"].startswith(cpu_node), (instance_id, reported, cpu_node)
        assert finished == {"step": "finish", "node": "plain-1", "tag": None}, instance_id
        assert scheduled_tags(cluster, instance_id) == [None, "gpu", "cpu", None]
    check_histories(cluster)


def test_without_a_gpu_worker_the_race_with_a_timer_falls_back(tag_cluster: TagCluster) -> None:
    cluster = tag_cluster
    orch = cluster.tag_worker("orch", queues=["orchestrator"])
    cpu = cluster.tag_worker("cpu", "--duroxide-tag-filter", "cpu", "--duroxide-node-id", "cpu-1", queues=[])
    ready(orch, cpu)
    cluster.beat()
    cluster.client.start_orchestration("fallback-1", "TrainWithFallback", 1000)
    cluster.wait_all_terminal(["fallback-1"])
    result = outputs(cluster, ["fallback-1"])["fallback-1"]
    assert result == {"path": "fallback", "result": {"step": "train-slowly", "node": "cpu-1", "tag": "cpu"}}
    assert scheduled_tags(cluster, "fallback-1") == ["gpu", "cpu"]
    kinds = [
        k for (k,) in cluster.sql("SELECT kind FROM dx_history WHERE instance_id = 'fallback-1' ORDER BY event_id")
    ]
    assert kinds.count("TimerFired") == 1
    assert kinds.count("ActivityCompleted") == 1  # the cpu step only: the gpu step never ran

    # The same without a timer: the gpu step's ttl fails it once no worker has claimed it in time (beat fires
    # claim deadlines with the timers).
    cluster.client.start_orchestration("ttl-1", "TrainWithTtl", 1000)
    cluster.wait_all_terminal(["ttl-1"])
    result = outputs(cluster, ["ttl-1"])["ttl-1"]
    assert result["path"] == "fallback"
    assert result["result"] == {"step": "train-slowly", "node": "cpu-1", "tag": "cpu"}
    assert "activity 'Where' was not picked up by any worker within its ttl of 1000 ms" in result["why"]
    assert "no running worker serves tag 'gpu'" in result["why"]
    kinds = [k for (k,) in cluster.sql("SELECT kind FROM dx_history WHERE instance_id = 'ttl-1' ORDER BY event_id")]
    assert kinds.count("ActivityFailed") == 1 and kinds.count("ActivityCompleted") == 1
    check_histories(cluster)


def test_any_filter_serves_tags_first_used_before_and_after_the_worker_started(tag_cluster: TagCluster) -> None:
    cluster = tag_cluster
    ready(cluster.tag_worker("orch", queues=["orchestrator"]))
    early, late = f"early-{uuid.uuid4().hex[:8]}", f"late-{uuid.uuid4().hex[:8]}"
    cluster.client.start_orchestration("any-early", "OneTagged", early)
    cluster.wait_for(
        lambda: cluster.sql("SELECT 1 FROM dx_work_items WHERE tag = :t", t=early), f"an activity tagged {early}"
    )
    anyw = cluster.tag_worker("any", "--duroxide-tag-filter", "any", "--duroxide-node-id", "any-1", queues=[])
    ready(anyw)
    cluster.wait_all_terminal(["any-early"])
    # A tag nobody has used yet: the worker finds it in the store and starts consuming its queue.
    cluster.client.start_orchestration("any-late", "OneTagged", late)
    cluster.wait_all_terminal(["any-late"])
    assert outputs(cluster, ["any-early", "any-late"]) == {
        "any-early": {"step": "anything", "node": "any-1", "tag": early},
        "any-late": {"step": "anything", "node": "any-1", "tag": late},
    }
    assert f"Started consuming from {cluster.prefix}.activities.{late}" in anyw.text()
    check_histories(cluster)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--duroxide-tag-filter", "gpu tag!", "may contain only"),
        ("--duroxide-tag-filter", "a,b,c,d,e,f", "at most 5 tags"),
        ("--duroxide-tag-filter", '{"tagz": ["gpu"]}', "invalid worker_tag_filter"),
        ("--duroxide-node-id", "node/1", "may contain only"),
        ("--duroxide-node-id", "n" * 201, "at most 200 characters"),
    ],
)
def test_a_bad_option_value_stops_the_worker_with_an_error_naming_it(option: str, value: str, message: str) -> None:
    env = {**os.environ, "SHOP_BROKER_URL": "redis://127.0.0.1:1/0", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "worker", option, value],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"Invalid value for '{option}'" in done.stderr, done.stderr
    assert message in done.stderr, done.stderr
