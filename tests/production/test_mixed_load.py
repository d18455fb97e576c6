"""N orchestrations of every shape (Pipeline, OrderSaga with approval events, continue-as-new Monitor) on real
worker and beat processes, on Redis and on RabbitMQ: each completes exactly once with a clean history."""

from __future__ import annotations

import os

from .conftest import Cluster
from .helpers import check_histories, outputs

N = int(os.environ.get("DUROXIDE_PRODUCTION_N", "100"))

ITEMS = [{"sku": "keyboard", "qty": 1}, {"sku": "mouse", "qty": 2}]


def plan(n: int) -> list[tuple[str, str, object, object]]:
    """(instance id, orchestration, input, approval to raise or None) for n instances of mixed shapes."""
    out: list[tuple[str, str, object, object]] = []
    for i in range(n):
        if i % 3 == 0:
            out.append((f"pipe-{i}", "Pipeline", i, None))
        elif i % 3 == 2:
            out.append((f"mon-{i}", "Monitor", {"target": f"svc-{i}", "rounds": 3, "interval_ms": 100}, None))
        else:
            variant = (i // 3) % 4
            order = {"id": f"order-{i}", "items": ITEMS, "card": "4000-0000" if variant == 1 else "4242"}
            approval: object = {"approved": variant != 2}
            if variant == 3:  # nobody answers: the approval timer decides
                order["approval_ms"] = 300
                approval = None
            out.append((f"order-{i}", "OrderSaga", order, approval))
    return out


def expected(name: str, inp: object, approval: object) -> object:
    if name == "Pipeline":
        return {"n": inp, "first": "ok", "child": False}
    if name == "Monitor":
        return {"target": inp["target"], "checks": 3}
    if approval is None:
        return ("cancelled", "not approved in time")
    if not approval["approved"]:
        return ("cancelled", "rejected")
    if inp["card"].endswith("0000"):
        return ("cancelled", "declined")
    return ("shipped", None)


def test_mixed_orchestrations_complete_exactly_once(any_cluster: Cluster) -> None:
    cluster = any_cluster
    cluster.worker("orch", concurrency=8)
    cluster.worker("act", concurrency=8)
    cluster.beat()
    work = plan(N)
    for instance_id, name, inp, _ in work:
        cluster.client.start_orchestration(instance_id, name, inp)
    approvals = {instance_id: approval for instance_id, _, _, approval in work if approval is not None}

    def raise_approvals(statuses: dict) -> None:
        # An event raised before its wait_for_event is dropped: answer each order once it awaits approval.
        for instance_id, (_, custom) in statuses.items():
            if instance_id in approvals and custom == "awaiting approval":
                cluster.client.raise_event(instance_id, "approval", approvals.pop(instance_id))

    ids = [w[0] for w in work]
    cluster.wait_all_terminal(ids, on_poll=raise_approvals)
    results = outputs(cluster, ids)
    for instance_id, name, inp, approval in work:
        want = expected(name, inp, approval)
        got = results[instance_id]
        if name == "OrderSaga":
            status, reason = want
            assert got["status"] == status, (instance_id, got)
            assert reason is None or reason in got["reason"], (instance_id, got)
        else:
            assert got == want, (instance_id, got)
    all_histories = check_histories(cluster)
    monitors = [w[0] for w in work if w[1] == "Monitor"]
    assert all(len(all_histories[m]) == 3 for m in monitors)  # two continue-as-new, then completion
    children = cluster.scalar("SELECT count(*) FROM dx_instances WHERE parent_instance_id IS NOT NULL")
    assert children == sum(1 for w in work if w[1] == "Pipeline")
