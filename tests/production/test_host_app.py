"""duroxide-celery added to a team's existing Celery app (tests/production/hostapp.py) changes nothing about the
app (issue 10): its tasks, routed queue, results, beat schedule and time limit work as before, next to workflows
run by the same plain `celery -A proj worker` (prefork, no -Q) on Redis and on RabbitMQ with PostgreSQL."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from duroxide_celery import Client

from .conftest import REDIS_URL, Cluster
from .helpers import TaskEvents

HOST = "tests.production.hostapp"


def _host_env(cluster: Cluster, redis_db: int) -> dict[str, str]:
    return {"HOST_REDIS_URL": f"{REDIS_URL}/{redis_db}"}


def _sender(cluster: Cluster, redis_db: int) -> Celery:
    """The web process's view of the app: same broker, result backend and routes."""
    app = Celery("hostapp", broker=cluster.broker_url, set_as_current=False)
    app.conf.update(
        result_backend=f"{REDIS_URL}/{redis_db}",
        task_routes={"host.mul": {"queue": "host-routed"}},
        broker_connection_retry_on_startup=True,
    )
    return app


def _plain_worker(cluster: Cluster, redis_db: int) -> Any:
    proc = cluster.run(
        "worker-host",
        ["worker", "-P", "prefork", "-c", "2", "-l", "INFO", "-n", f"host-{cluster.prefix}@%h"]
        + ["--without-mingle", "--without-gossip", "--without-heartbeat"],
        HOST,
        _host_env(cluster, redis_db),
    )
    proc.wait_for_log(" ready.")
    return proc


def test_a_plain_worker_runs_the_apps_tasks_and_the_workflows(any_cluster: Cluster, redis_db: int) -> None:
    cluster = any_cluster
    heartbeats = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")
    heartbeats.delete("hostapp:heartbeats")
    events = TaskEvents(cluster.app)  # Celery's task events, the stream Flower shows (the app sends them)
    events.start()
    worker = _plain_worker(cluster, redis_db)
    banner = worker.text()
    for queue in ("celery", "host-routed", f"{cluster.prefix}.orchestrator", f"{cluster.prefix}.activities"):
        assert f"{queue} " in banner or f".> {queue}" in banner, f"worker does not consume {queue}:\n{banner}"
    cluster.beat(app=HOST, env=_host_env(cluster, redis_db))

    # The app's own tasks: results stored (task_ignore_result untouched), the routed queue still served.
    sender = _sender(cluster, redis_db)
    assert sender.send_task("host.add", args=[2, 3]).get(timeout=60) == 5
    assert sender.send_task("host.mul", args=[3, 4]).get(timeout=60) == 12

    # Workflows on the same worker: a 5 s activity under the app's 3 s task_time_limit completes; a failed
    # activity is caught by the orchestration and compensated; a durable timer fires.
    client = Client(cluster.provider, app=sender, queue_prefix=cluster.prefix)
    client.start_orchestration("slow-1", "SlowStep", 5)
    client.start_orchestration("charge-1", "ChargeOrRefund", 7)
    client.start_orchestration("nap-1", "Nap", 300)
    client.start_orchestration("doomed-1", "Doomed", 9)
    cluster.wait_all_terminal(["slow-1", "charge-1", "nap-1", "doomed-1"])
    slow = client.get_status("slow-1")
    assert (slow.status, slow.output) == ("Completed", "slept 5"), (slow, cluster.logs())
    charge = client.get_status("charge-1")
    assert charge.status == "Completed", (charge, cluster.logs())
    assert charge.output["compensated"] == "refunded 7" and "card declined for 7" in charge.output["error"]
    assert client.get_status("nap-1").output == "rested"
    kinds = [e.kind for e in client.read_execution_history("slow-1", 1)]
    assert kinds.count("ActivityCompleted") == 1 and "ActivityFailed" not in kinds

    doomed = client.get_status("doomed-1")
    assert doomed.status == "Failed" and "card declined for 9" in (doomed.error or ""), doomed

    # Celery's events (and so Flower): the failed activities and the failing turn are FAILURE, with the error text.
    try:
        for name in ("act:Charge#charge-1", "act:Charge#doomed-1", "orch:Doomed#doomed-1"):
            (failed,) = cluster.wait_for(lambda n=name: events.of("task-failed", n), f"task-failed of {name}")
            assert "card declined for" in failed["exception"], failed
        assert events.of("task-succeeded", "orch:ChargeOrRefund#charge-1")  # it handled the failure
        assert events.of("task-succeeded", "act:Slow#slow-1")
    finally:
        events.stop()

    # The app's beat schedule runs next to the durable timers.
    cluster.wait_for(lambda: int(heartbeats.get("hostapp:heartbeats") or 0) >= 2, "the app's beat entry to run")


def test_work_started_without_a_wake_up_is_delivered(any_cluster: Cluster, redis_db: int) -> None:
    """A process with no Celery app (a script, a cron job) only writes the store; beat's recovery sweep finds it."""
    cluster = any_cluster
    _plain_worker(cluster, redis_db)
    cluster.beat(app=HOST, env=_host_env(cluster, redis_db))
    silent = Client(cluster.provider)
    silent.start_orchestration("silent-1", "SlowStep", 0)
    cluster.wait_all_terminal(["silent-1"])
    assert silent.get_status("silent-1").output == "slept 0"


def test_an_engine_worker_without_its_store_stops_with_the_reason(any_cluster: Cluster, redis_db: int) -> None:
    cluster = any_cluster
    env = {**_host_env(cluster, redis_db), "SHOP_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}
    proc = cluster.run(
        "worker-nostore", ["worker", "-P", "solo", "-Q", f"{cluster.prefix}.orchestrator", "-l", "INFO"], HOST, env
    )
    assert proc.popen.wait(timeout=60) != 0
    assert (
        "duroxide-celery: cannot use the duroxide store at postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
        in proc.text()
    )
    # A worker of the app's own queues does not need the store: it starts.
    app_only = cluster.run(
        "worker-apponly",
        ["worker", "-P", "solo", "-Q", "celery", "-l", "INFO", "-n", f"a-{cluster.prefix}@%h"],
        HOST,
        env,
    )
    app_only.wait_for_log(" ready.")
    assert _sender(cluster, redis_db).send_task("host.add", args=[1, 1]).get(timeout=60) == 2
