"""Failures are visible to Celery's tooling (issue 10 item 5), with real `celery worker -E` processes on Redis and
PostgreSQL: an activity that raises ends its task as FAILURE (a `task-failed` event for `act:<Name>#<id>`, error
text included), and so does the turn that fails its orchestration (`orch:<Name>#<id>`); an orchestration that
handles the failure completes and its turns succeed. Nothing runs twice (no Celery retry, no redelivery), and the
workers log a WARNING naming the instance. An instance whose orchestration no worker registered says why it
waits.

Task events are read with Celery's own event receiver, the stream Flower consumes. The app is
tests/production/failureapp.py; its activity counts its runs in Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import REDIS_URL, Cluster, Proc
from .helpers import TaskEvents, histories

APP = "tests.production.failureapp"


class FailureCluster(Cluster):
    """conftest's Cluster with workers of failureapp that send task events (-E)."""

    def event_worker(self, role: str, pool: str) -> Proc:
        orchestrator, activities = f"{self.prefix}.orchestrator", f"{self.prefix}.activities"
        queue = {"orch": orchestrator, "act": activities, "both": f"{orchestrator},{activities}"}[role]
        node = f"{role}{len(self.procs)}-{self.prefix}@%h"
        # With heartbeats (unlike conftest's workers): their worker-online event shows the receiver is listening.
        argv = ["worker", "-E", "-Q", queue, "-P", pool, "-c", "2", "-n", node, "-l", "INFO"]
        proc = self.run(f"worker-{role}", argv + ["--without-mingle", "--without-gossip"], APP)
        proc.wait_for_log(" ready.")
        return proc


@pytest.fixture
def failure_cluster(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[FailureCluster]:
    cluster = FailureCluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    cluster.redis = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")  # type: ignore[attr-defined]
    yield cluster
    cluster.close()


@pytest.fixture
def task_events(failure_cluster: FailureCluster) -> Iterator[TaskEvents]:
    events = TaskEvents(failure_cluster.app)
    events.start()
    yield events
    events.stop()


def _runs(cluster: FailureCluster, instance_id: str) -> int:
    """How many times the failing activity ran for this instance (failureapp.run_counter_key)."""
    return int(cluster.redis.get(f"{cluster.prefix}:charge-runs:{instance_id}") or 0)  # type: ignore[attr-defined]


def test_failed_activity_and_failed_orchestration_show_as_failure(
    failure_cluster: FailureCluster, task_events: TaskEvents
) -> None:
    cluster = failure_cluster
    orch = cluster.event_worker("orch", pool="threads")
    act = cluster.event_worker("act", pool="prefork")  # the exception crosses the pool's process boundary
    cluster.wait_for(lambda: len(task_events.workers_online()) >= 2, "both workers' worker-online events")

    handled, failed = "fv-handled", "fv-failed"
    cluster.client.start_orchestration(handled, "ChargeOrRefund", "card-4242-secret")
    cluster.client.start_orchestration(failed, "ChargeOrFail", "card-4242-secret")
    cluster.wait_all_terminal([handled, failed])

    # The instances ended as their code says, with the activity's error.
    done = cluster.client.get_status(handled)
    assert done.status == "Completed", done.error
    assert done.output == {
        "refunded": True,
        "why": "Activity 'Charge' call failed: ValueError: card declined (attempt at Charge)",
    }
    broken = cluster.client.get_status(failed)
    assert broken.status == "Failed"
    assert broken.error.startswith("Activity 'Charge' call failed: ValueError: card declined (attempt at Charge)")
    kinds = {i: [k for _, k, _ in h[1]] for i, h in histories(cluster, [handled, failed]).items()}
    assert kinds[handled] == ["OrchestrationStarted", "ActivityScheduled", "ActivityFailed", "OrchestrationCompleted"]
    assert kinds[failed] == ["OrchestrationStarted", "ActivityScheduled", "ActivityFailed", "OrchestrationFailed"]

    # Each failing activity ran exactly once: neither Celery nor the broker ran it again.
    assert (_runs(cluster, handled), _runs(cluster, failed)) == (1, 1)

    # Celery's events: FAILURE for both activity tasks and for the turn that failed its orchestration.
    for instance_id in (handled, failed):
        name = f"act:Charge#{instance_id}"
        (event,) = cluster.wait_for(lambda n=name: task_events.of("task-failed", n), f"task-failed of {name}")
        assert event["exception"].startswith('ActivityFailed("ValueError: card declined'), event["exception"]
        assert instance_id in event["exception"] and "card-4242" not in event["exception"]
        assert not task_events.of("task-succeeded", name)
    (turn_failed,) = cluster.wait_for(
        lambda: task_events.of("task-failed", f"orch:ChargeOrFail#{failed}"), "task-failed of the failing turn"
    )
    assert turn_failed["exception"].startswith(
        f"OrchestrationFailed(\"orchestration 'ChargeOrFail' of instance {failed} (execution 1) failed "
        "[OrchestrationFailed]: Activity 'Charge' call failed: ValueError: card declined"
    ), turn_failed["exception"]
    # The orchestration that handled the failure: its turns all succeeded.
    assert task_events.of("task-succeeded", f"orch:ChargeOrRefund#{handled}")
    assert not task_events.of("task-failed", f"orch:ChargeOrRefund#{handled}")
    # Exactly one failed turn (the failure was acked, never redelivered) and one failure outcome in history.
    assert len(task_events.of("task-failed", f"orch:ChargeOrFail#{failed}")) == 1

    # The workers logged our WARNING with the ids; Celery logged its expected error without a traceback.
    cluster.wait_for(lambda: f"activity 'Charge' of instance {failed} (execution 1" in act.text(), "the warning")
    act_warnings = [line for line in act.text().splitlines() if "WARNING" in line and "activity 'Charge'" in line]
    assert {i for i in (handled, failed) if any(f"instance {i} " in line for line in act_warnings)} == {
        handled,
        failed,
    }, act.tail()
    assert all("card-4242" not in line for line in act_warnings)
    assert "raised expected: ActivityFailed" in act.text() and "Traceback" not in act.text(), act.tail()
    orch_warnings = [line for line in orch.text().splitlines() if "WARNING" in line and f"instance {failed}" in line]
    assert orch_warnings and "orchestration 'ChargeOrFail'" in orch_warnings[0], orch.tail()
    assert "raised expected: OrchestrationFailed" in orch.text() and "Traceback" not in orch.text(), orch.tail()


def test_inline_failures_show_as_failure(failure_cluster: FailureCluster, task_events: TaskEvents) -> None:
    """One worker serves turns and activities in one pool, so each turn runs the activity it schedules inline
    (tasks/inline.py), with no activity task: the failure of that activity ends the turn task that ran it as FAILURE
    (ActivityFailed), and a turn that fails its orchestration ends as FAILURE with OrchestrationFailed, which names
    the activity's error. Each activity ran once; the worker logged both activity failures with their ids."""
    cluster = failure_cluster
    worker = cluster.event_worker("both", pool="threads")
    cluster.wait_for(lambda: task_events.workers_online(), "the worker's worker-online event")

    handled, failed = "fv-inline-handled", "fv-inline-failed"
    cluster.client.start_orchestration(handled, "ChargeOrRefund", "card-4242-secret")
    cluster.client.start_orchestration(failed, "ChargeOrFail", "card-4242-secret")
    cluster.wait_all_terminal([handled, failed])
    assert cluster.client.get_status(handled).status == "Completed"
    assert cluster.client.get_status(failed).status == "Failed"
    kinds = {i: [k for _, k, _ in h[1]] for i, h in histories(cluster, [handled, failed]).items()}
    assert kinds[handled] == ["OrchestrationStarted", "ActivityScheduled", "ActivityFailed", "OrchestrationCompleted"]
    assert kinds[failed] == ["OrchestrationStarted", "ActivityScheduled", "ActivityFailed", "OrchestrationFailed"]
    assert (_runs(cluster, handled), _runs(cluster, failed)) == (1, 1)

    (event,) = cluster.wait_for(
        lambda: task_events.of("task-failed", f"orch:ChargeOrRefund#{handled}"), "task-failed of the inline turn"
    )
    assert event["exception"].startswith('ActivityFailed("ValueError: card declined'), event["exception"]
    assert handled in event["exception"] and "card-4242" not in event["exception"]
    (turn_failed,) = cluster.wait_for(
        lambda: task_events.of("task-failed", f"orch:ChargeOrFail#{failed}"), "task-failed of the failing turn"
    )
    assert turn_failed["exception"].startswith(
        f"OrchestrationFailed(\"orchestration 'ChargeOrFail' of instance {failed} (execution 1) failed "
        "[OrchestrationFailed]: Activity 'Charge' call failed: ValueError: card declined"
    ), turn_failed["exception"]
    # Inline: no activity task was ever sent for them.
    assert not [name for name in task_events.names().values() if name.startswith("act:")]
    for instance_id in (handled, failed):
        cluster.wait_for(
            lambda i=instance_id: f"activity 'Charge' of instance {i} (execution 1" in worker.text(), "the warning"
        )
    assert "card-4242" not in worker.text() and "Traceback" not in worker.text(), worker.tail()


def test_unregistered_orchestration_says_why_it_waits(failure_cluster: FailureCluster) -> None:
    cluster = failure_cluster
    orch = cluster.event_worker("orch", pool="threads")
    cluster.client.start_orchestration("fv-nobody", "NobodyHasThis", 1)
    reason = cluster.wait_for(
        lambda: cluster.client.get_status("fv-nobody").waiting_reason, "the instance to say why it waits"
    )
    assert reason.startswith("orchestration 'NobodyHasThis' (latest version) is not registered on any worker"), reason
    assert cluster.client.get_instance_info("fv-nobody").waiting_reason == reason
    assert cluster.client.get_status("fv-nobody").status == "Running"
    cluster.wait_for(
        lambda: any(
            "WARNING" in line and "instance fv-nobody" in line and "'NobodyHasThis'" in line and "retrying at" in line
            for line in orch.text().splitlines()
        ),
        "the backoff's WARNING in the worker log",
    )
