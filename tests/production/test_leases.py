"""Instance leases that lapse in the middle of turns: three orchestrator workers and a 1 ms orchestrator lease, so
nearly every turn outlives its lease and duplicate pokes let other workers take the instance meanwhile. Only one
turn per instance may commit (DESIGN invariant 2): every instance completes once, its row agreeing with its
history. Before Store.fence locked the instance row, this left instances 'Running' whose history had completed
them."""

from __future__ import annotations

from .conftest import Cluster
from .helpers import check_histories, outputs
from .test_mixed_load import expected, plan


def test_leases_lapsing_mid_turn_never_split_a_turn(redis_cluster: Cluster) -> None:
    cluster = redis_cluster
    cluster.env["SHOP_ORCHESTRATOR_LOCK_MS"] = "1"
    for _ in range(3):
        cluster.worker("orch", concurrency=6)
    cluster.worker("act", concurrency=8)
    cluster.beat()
    work = [w for w in plan(240) if w[1] != "OrderSaga"]
    for instance_id, name, inp, _ in work:
        cluster.client.start_orchestration(instance_id, name, inp)
    ids = [w[0] for w in work]
    cluster.wait_all_terminal(ids)
    results = outputs(cluster, ids)
    for instance_id, name, inp, approval in work:
        assert results[instance_id] == expected(name, inp, approval), instance_id
    check_histories(cluster, timers_all_fired=True)
