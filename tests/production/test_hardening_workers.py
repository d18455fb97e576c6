"""Issue 11 with real `celery worker` and `celery beat` processes on PostgreSQL:

- item 5: an activity row whose queue name the broker cannot carry (a tag over AMQP's 255-byte limit) is failed
  as a catchable error with a warning naming its instance; the recovery sweep goes on republishing every other
  instance's lost work (RabbitMQ);
- item 8: a worker refuses an activity lease its renewer cannot honour, with an error naming the option; at the
  shortest allowed lease a long activity still runs once.

The app is tests/production/hardeningapp.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from kombu import Connection

from .conftest import AMQP_URL, REDIS_URL, START_TIMEOUT_S, Cluster, Proc, _delete_amqp_entities
from .helpers import outputs

APP = "tests.production.hardeningapp"
LONG_TAG = "t" * 250  # "<prefix>.activities.<tag>" is over 255 bytes


class HardeningCluster(Cluster):
    def _celery(self, name: str, args: list[str], extra_env: dict[str, str] | None, app: str = "examples.shop") -> Proc:
        return super()._celery(name, args, extra_env, APP)

    def close(self) -> None:
        super().close()
        if self.broker == "rabbitmq":
            _delete_amqp_entities(self.prefix, ("activities.t",))


@pytest.fixture
def rabbit_cluster(postgres: None, rabbitmq: None, tmp_path: Path) -> Iterator[HardeningCluster]:
    cluster = HardeningCluster("rabbitmq", AMQP_URL, tmp_path)
    cluster.env["HARDENING_RUNS_FILE"] = str(tmp_path / "runs.txt")
    yield cluster
    cluster.close()


@pytest.fixture
def redis_cluster(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[HardeningCluster]:
    cluster = HardeningCluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    cluster.env["HARDENING_RUNS_FILE"] = str(tmp_path / "runs.txt")
    yield cluster
    cluster.close()


def test_undeliverable_activity_fails_catchably_and_the_sweep_goes_on(rabbit_cluster: HardeningCluster) -> None:
    cluster = rabbit_cluster
    cluster.worker("orch")
    # A tagged activity no worker serves, whose row is then given a tag too long for an AMQP queue name (as a row
    # written before tags were checked would have): every publish of it fails.
    cluster.client.start_orchestration("bad", "Tagged", "t")
    cluster.wait_for(
        lambda: cluster.scalar("SELECT count(*) FROM dx_work_items WHERE instance_id = 'bad'"), "the tagged row"
    )
    update = "UPDATE dx_work_items SET tag = :tag, published_at = 0 WHERE instance_id = 'bad'"
    with cluster.db.begin() as conn:
        conn.execute(sa.text(update), {"tag": LONG_TAG})
    # Other instances whose activity messages are lost: only the recovery sweep can bring them back.
    plain = [f"plain-{i}" for i in range(5)]
    for instance_id in plain:
        cluster.client.start_orchestration(instance_id, "Plain", instance_id)
    cluster.wait_for(
        lambda: cluster.scalar("SELECT count(*) FROM dx_work_items WHERE instance_id LIKE 'plain-%'") == len(plain),
        "the plain instances' activity rows",
    )
    with Connection(AMQP_URL, connect_timeout=2) as conn:
        conn.channel().queue_purge(f"{cluster.prefix}.activities")
    cluster.worker("act")
    beat = cluster.beat()

    cluster.wait_all_terminal(["bad", *plain])
    results = outputs(cluster, ["bad", *plain])
    for instance_id in plain:
        assert results[instance_id] == instance_id
    caught = results["bad"]["caught"]
    assert "cannot be delivered" in caught and "255-byte limit" in caught, caught
    assert cluster.scalar("SELECT count(*) FROM dx_work_items WHERE instance_id = 'bad'") == 0  # not retried
    log = beat.text()
    assert "of instance bad cannot be published" in log, beat.tail()
    assert "255-byte limit" in log


def test_worker_refuses_a_lease_its_renewer_cannot_honour(redis_cluster: HardeningCluster) -> None:
    cluster = redis_cluster
    worker = cluster.worker("act", env={"HARDENING_WORKER_LOCK_MS": "500"}, wait=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    while worker.popen.poll() is None:
        if time.monotonic() > deadline or " ready." in worker.text():
            pytest.fail(f"the worker started with a 500 ms activity lease:\n{worker.tail()}")
        time.sleep(0.05)
    assert worker.popen.returncode != 0
    assert "RuntimeOptions.worker_lock_timeout_ms must be at least 1000 ms, got 500" in worker.text()


def test_long_activity_runs_once_at_the_shortest_lease(redis_cluster: HardeningCluster) -> None:
    cluster = redis_cluster
    cluster.env["HARDENING_WORKER_LOCK_MS"] = "1000"
    cluster.worker("orch")
    for _ in range(2):  # a second activity worker would take over a lapsed lease
        cluster.worker("act", concurrency=2)
    cluster.beat()
    cluster.client.start_orchestration("slow", "SlowOnce", 5)
    plain = [f"plain-{i}" for i in range(5)]
    for instance_id in plain:
        cluster.client.start_orchestration(instance_id, "Plain", instance_id)
    cluster.wait_all_terminal(["slow", *plain])
    results = outputs(cluster, ["slow", *plain])
    assert results["slow"] == 5
    assert all(results[i] == i for i in plain)
    runs = Path(cluster.env["HARDENING_RUNS_FILE"]).read_text().splitlines()
    assert len(runs) == 1, runs
