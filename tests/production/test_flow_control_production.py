"""Flow control with real processes: one turn worker and two activity workers (`celery worker`, 4 threads each) on
Redis and PostgreSQL, an activity limited to 2 running calls per key (tests/production/flowapp.py). The limit holds
across both processes: the activity counts its running calls per key in PostgreSQL, atomically, and the most ever
seen per key is exactly 2, while both workers ran calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REDIS_URL, Cluster, Proc
from .helpers import check_histories

APP = "tests.production.flowapp"


class FlowCluster(Cluster):
    def _celery(self, name: str, args: list[str], extra_env: dict[str, str] | None, app: str = "examples.shop") -> Proc:
        return super()._celery(name, args, extra_env, APP)


@pytest.fixture
def flow_cluster(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[FlowCluster]:
    cluster = FlowCluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    yield cluster
    cluster.close()


def test_key_limit_holds_across_two_activity_workers(flow_cluster: FlowCluster) -> None:
    c = flow_cluster
    with c.db.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE flow_running (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        conn.exec_driver_sql("CREATE TABLE flow_log (key TEXT NOT NULL, running INTEGER NOT NULL, pid INTEGER)")
    c.worker("orch")
    first, second = c.worker("act", concurrency=4), c.worker("act", concurrency=4)
    keys = ["tenant:1", "tenant:2", "tenant:3"]
    ids = []
    for n in range(2):
        instance_id = f"fan-{n}"
        c.client.start_orchestration(instance_id, "FanOut", [{"key": k} for k in keys for _ in range(4)])
        ids.append(instance_id)
    c.wait_all_terminal(ids)
    assert c.statuses(ids) == {i: ("Completed", None) for i in ids}, c.diagnostics()
    check_histories(c)
    most = dict(c.sql("SELECT key, max(running) FROM flow_log GROUP BY key"))
    assert most == dict.fromkeys(keys, 2), c.diagnostics()  # reached on every key, never passed
    assert c.scalar("SELECT count(*) FROM flow_log") == 24
    assert {r[0] for r in c.sql("SELECT DISTINCT pid FROM flow_log")} == {first.pid, second.pid}
    # Every slot was given back, nothing is left held, and no row is left behind.
    assert c.scalar("SELECT count(*) FROM dx_work_items") == 0
    assert c.sql("SELECT key, n FROM flow_running WHERE n <> 0") == []
