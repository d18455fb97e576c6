"""One lease owner per lease holder (issue 11 item 4), with real processes on Redis and PostgreSQL: a prefork
activity worker (`-P prefork -c 2`), whose children inherit one worker node id, runs two activities at once under
two different lease owners; an activity whose lease is taken over learns it (`ctx.is_cancelled()`), and its stale
result is never recorded; the row's next execution's result is. Before, every child of a worker leased under the
same owner id, so either child's writes passed the other's owner checks.

The app is tests/production/leaseapp.py; its activity reports through Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import REDIS_URL, WAIT_S, Cluster

APP = "tests.production.leaseapp"


@pytest.fixture
def lease_cluster(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    cluster.redis = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")  # type: ignore[attr-defined]
    yield cluster
    cluster.close()


def _worker(cluster: Cluster, role: str, pool: str) -> None:
    queue = {"orch": f"{cluster.prefix}.orchestrator", "act": f"{cluster.prefix}.activities"}[role]
    node = f"{role}{len(cluster.procs)}-{cluster.prefix}@%h"
    argv = ["worker", "-Q", queue, "-P", pool, "-c", "2", "-n", node, "-l", "INFO"]
    proc = cluster.run(f"worker-{role}", argv + ["--without-mingle", "--without-gossip", "--without-heartbeat"], APP)
    proc.wait_for_log(" ready.")


def _owners(cluster: Cluster, ids: list[str]) -> dict[str, str]:
    rows = cluster.sql(
        "SELECT instance_id, lock_owner FROM dx_work_items WHERE instance_id = ANY(:ids) AND lock_owner IS NOT NULL",
        ids=ids,
    )
    return {r[0]: r[1] for r in rows}


def test_prefork_children_hold_leases_under_their_own_owners_and_a_taken_over_result_is_dropped(
    lease_cluster: Cluster,
) -> None:
    cluster = lease_cluster
    r = cluster.redis  # type: ignore[attr-defined]

    def key(instance_id: str, what: str) -> str:
        return f"{cluster.prefix}:{what}:{instance_id}"

    _worker(cluster, "orch", "threads")
    _worker(cluster, "act", "prefork")
    cluster.beat(app=APP)  # the recovery sweep republishes the row the test frees
    ids = ["lease-a", "lease-b"]
    for instance_id in ids:
        cluster.client.start_orchestration(instance_id, "HoldOne", None)
    owners = cluster.wait_for(lambda: (o := _owners(cluster, ids)) and len(o) == 2 and o, "both activities leased")

    # Two holders in one worker: one node id (the children inherited it), two processes, two owners.
    assert owners["lease-a"] != owners["lease-b"], owners
    node_a, pid_a, _ = owners["lease-a"].rsplit(":", 2)
    node_b, pid_b, _ = owners["lease-b"].rsplit(":", 2)
    assert node_a == node_b, owners
    assert pid_a != pid_b, owners  # each prefork child runs one

    # Another holder takes lease-a over: its running execution is told, and its result is dropped.
    with cluster.db.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE dx_work_items SET lock_owner = 'intruder', locked_until = locked_until + 600000 "
            "WHERE instance_id = 'lease-a'"
        )
    cluster.wait_for(lambda: r.get(key("lease-a", "saw-cancel")), "lease-a's first run to end")
    assert r.get(key("lease-a", "saw-cancel")) == b"yes"
    kinds = [row[0] for row in cluster.sql("SELECT kind FROM dx_history WHERE instance_id = 'lease-a'")]
    assert "ActivityCompleted" not in kinds
    assert cluster.scalar("SELECT lock_owner FROM dx_work_items WHERE instance_id = 'lease-a'") == "intruder"

    # The intruder's lease lapses; the sweep hands the row to a worker again, whose result is the one recorded.
    with cluster.db.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE dx_work_items SET lock_owner = NULL, locked_until = 0, published_at = 0 "
            "WHERE instance_id = 'lease-a'"
        )
    r.set(key("lease-b", "finish"), 1)  # lease-b was never taken over: its own result stands
    results = {i: cluster.client.wait_for_orchestration(i, WAIT_S * 1000) for i in ids}
    assert (results["lease-a"].status, results["lease-a"].output) == ("Completed", "fresh")
    assert (results["lease-b"].status, results["lease-b"].output) == ("Completed", "stale")
    assert int(r.get(key("lease-a", "runs"))) == 2
    assert r.get(key("lease-b", "saw-cancel")) == b"no"
    for instance_id in ids:
        history = [
            row[0]
            for row in cluster.sql(
                "SELECT kind FROM dx_history WHERE instance_id = :i ORDER BY event_id", i=instance_id
            )
        ]
        assert history == ["OrchestrationStarted", "ActivityScheduled", "ActivityCompleted", "OrchestrationCompleted"]
