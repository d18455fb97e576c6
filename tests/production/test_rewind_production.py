"""Rewind with real `celery worker` processes on Redis and PostgreSQL: an order fails at its shipping step, the
fixed activity worker is deployed, and the operator rewinds it with the CLI (`--app`, which replays the history
with the app's code first); the order completes, the reservation is not made twice, and the history holds one
audit record of the rewind."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT, Cluster

APP = "tests.production.rewindapp"


def test_rewind_after_deploying_the_fix(redis_cluster: Cluster) -> None:
    cluster = redis_cluster
    cluster.run("worker-orch", _worker_args(cluster, "orchestrator"), APP).wait_for_log(" ready.")
    broken = cluster.run("worker-act", _worker_args(cluster, "activities"), APP)
    broken.wait_for_log(" ready.")

    cluster.client.start_orchestration("order-7", "ShipOrder", 7)
    cluster.wait_all_terminal(["order-7"])
    failed = cluster.client.get_status("order-7")
    assert failed.status == "Failed" and "carrier API rejected the request" in failed.error

    broken.kill()  # deploy the fix: the activity worker restarts with the new code
    fixed = cluster.run("worker-act", _worker_args(cluster, "activities"), APP, {"REWIND_FIXED": "1"})
    fixed.wait_for_log(" ready.")
    rewound = subprocess.run(
        [sys.executable, "-m", "duroxide_celery.cli", "--app", APP, "rewind", "order-7", "--reason", "carrier fix"],
        env=cluster.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (rewound.returncode, rewound.stdout, rewound.stderr) == (0, "rewound order-7\n", ""), rewound.stderr

    cluster.wait_for(lambda: cluster.client.get_status("order-7").status == "Completed", "order-7 to complete")
    assert cluster.client.get_status("order-7").output == "shipped reservation-7"
    history = cluster.client.read_execution_history("order-7", 1)
    kinds = [e.kind for e in history]
    assert kinds.count("OrchestrationRewound") == 1 and kinds.count("OrchestrationFailed") == 1
    assert [json.loads(e.data)["name"] for e in history if e.kind == "ActivityScheduled"] == ["Reserve", "Ship"]
    (audit,) = [json.loads(e.data) for e in history if e.kind == "OrchestrationRewound"]
    assert audit["reason"] == "carrier fix"


def _worker_args(cluster: Cluster, queue: str) -> list[str]:
    node = f"{queue}{len(cluster.procs)}-{cluster.prefix}@%h"
    return f"worker -Q {cluster.prefix}.{queue} -P threads -c 2 -n {node} -l INFO".split() + [
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
