"""The labeled counters (metrics.py) under duroxide's names: each outcome lands in the series duroxide uses."""

from __future__ import annotations

from duroxide_celery.metrics import LABELS, Metrics
from duroxide_celery.replay.engine import StartOrchestration, TurnResult
from duroxide_celery.replay.events import error_details


def _failed(category: str, kind: str) -> TurnResult:
    return TurnResult(
        status="Failed",
        orchestration_name="Order",
        orchestration_version="2.0",
        error=error_details(category, "x", kind),
    )


def test_orchestration_outcomes_by_label() -> None:
    m = Metrics()
    child = StartOrchestration("c1", "Ship", "null", parent_instance_id="p", parent_event_id=3)
    m.record_turn(
        TurnResult(status="Running", orchestration_name="Order", orchestration_version="2.0", outgoing=[child]), True
    )
    m.record_turn(TurnResult(status="Completed", orchestration_name="Order", orchestration_version="2.0"), False)
    m.record_turn(TurnResult(status="ContinuedAsNew", orchestration_name="Loop", orchestration_version="1.0"), True)
    m.record_turn(_failed("Application", "Cancelled"), False)
    m.record_turn(_failed("Application", "OrchestrationFailed"), False)
    m.record_turn(_failed("Configuration", "Nondeterminism"), False)
    m.record_turn(_failed("Poison", "Poison"), False)
    got = m.labeled()
    assert set(got) == set(LABELS)
    assert got["duroxide_orchestration_starts_total"] == {("Order", "2.0"): 1, ("Loop", "1.0"): 1}
    assert got["duroxide_suborchestration_calls_total"] == {("Order", "Ship"): 1}
    assert got["duroxide_orchestration_completions_total"] == {
        ("Order", "2.0", "success"): 1,
        ("Order", "2.0", "cancelled"): 1,
        ("Order", "2.0", "failed"): 3,
    }
    assert got["duroxide_orchestration_failures_total"] == {
        ("Order", "2.0", "app_error"): 1,
        ("Order", "2.0", "config_error"): 1,
        ("Order", "2.0", "poison"): 1,
    }
    assert got["duroxide_orchestration_configuration_errors_total"] == {("Order",): 1}
    assert got["duroxide_orchestration_poison_total"] == {(): 1}
    assert got["duroxide_orchestration_continue_as_new_total"] == {("Loop",): 1}
    snapshot = m.snapshot()
    assert (snapshot.orch_completions, snapshot.orch_failures, snapshot.orch_poison) == (1, 4, 1)


def test_activity_outcomes_and_retry_buckets() -> None:
    m = Metrics()
    for attempt in (1, 2, 4, 9):
        m.record_activity(True, {}, "Charge", attempt)
    m.record_activity(False, {"details": error_details("Application", "no")}, "Charge", 1)
    m.record_activity(False, {"details": error_details("Infrastructure", "db")}, "Charge", 3)
    got = m.labeled()
    assert got["duroxide_activity_executions_total"] == {
        ("Charge", "success", "0"): 1,
        ("Charge", "success", "1"): 1,
        ("Charge", "success", "3+"): 2,
        ("Charge", "app_error", "0"): 1,
        ("Charge", "infra_error", "2"): 1,
    }
    assert got["duroxide_activity_infrastructure_errors_total"] == {("Charge",): 1}
    # labeled() hands out a copy: the caller cannot change the counters.
    got["duroxide_activity_executions_total"].clear()
    assert m.labeled()["duroxide_activity_executions_total"]
