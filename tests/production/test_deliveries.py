"""Broker deliveries of long activities (DESIGN section 3): the activity's lease lives in the store, so its broker
delivery must not stay unacknowledged while it runs. Otherwise Redis redelivers it when the visibility timeout
(1 h by default) expires, and RabbitMQ closes the channel at its consumer_timeout (30 min by default), which
cancels the running activity (worker_cancel_long_running_tasks_on_connection_loss) and redelivers it to run into
the same wall again, forever."""

from __future__ import annotations

import json

import redis

from .conftest import Cluster
from .helpers import check_histories, outputs


def test_running_activity_holds_no_broker_delivery(redis_cluster: Cluster) -> None:
    cluster = redis_cluster
    cluster.standard()
    ids = [f"long-{i}" for i in range(2)]
    for instance_id in ids:
        cluster.client.start_orchestration(instance_id, "SlowJob", 2)
    claimed = "SELECT count(*) FROM dx_work_items WHERE lock_owner IS NOT NULL AND instance_id = ANY(:ids)"
    cluster.wait_for(lambda: cluster.scalar(claimed, ids=ids) == len(ids), "both activities to run")
    broker = redis.Redis.from_url(cluster.broker_url)
    # kombu's Redis transport keeps each unacknowledged delivery in the `unacked` hash: [message, exchange, key].
    held = [json.loads(v) for v in broker.hvals("unacked")]
    activity_queue = f"{cluster.prefix}.activities"
    held_activities = [h for h in held if h[2] == activity_queue]
    assert not held_activities, f"{len(held_activities)} running activities still hold their broker delivery"
    cluster.wait_all_terminal(ids)
    assert all(out["result"] == "slept 2" for out in outputs(cluster, ids).values())
    check_histories(cluster)
