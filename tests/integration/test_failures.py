"""Failures: activity errors caught or not, child failures, and replay divergence after a code change."""

from __future__ import annotations

from duroxide_celery import Client

from .helpers import WAIT_MS, event_data, kinds, wait_for_kind


def _boom(ctx, _):
    raise ValueError("boom")


def test_activity_exception_is_caught_in_orchestration(runtime_factory, client):
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("Boom", None)
        except Exception as exc:  # noqa: BLE001
            recovered = yield ctx.schedule_activity("Cleanup", str(exc))
            return {"caught": str(exc), "is_exception": isinstance(exc, Exception), "cleanup": recovered}
        return "not raised"

    runtime_factory({"Safe": orch}, {"Boom": _boom, "Cleanup": lambda ctx, msg: f"cleaned after: {msg}"})
    client.start_orchestration("catch-1", "Safe")
    result = client.wait_for_orchestration("catch-1", WAIT_MS)
    message = "Activity 'Boom' call failed: ValueError: boom"
    assert (result.status, result.output) == (
        "Completed",
        {"caught": message, "is_exception": True, "cleanup": f"cleaned after: {message}"},
    )
    history = client.read_execution_history("catch-1", 1)
    assert [e.kind for e in history] == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityFailed",
        "ActivityScheduled",
        "ActivityCompleted",
        "OrchestrationCompleted",
    ]
    assert event_data(history[2])["details"]["message"] == message


def test_uncaught_activity_failure_fails_the_orchestration(runtime_factory, client):
    def orch(ctx, _):
        yield ctx.schedule_activity("Boom", None)
        return "unreachable"

    runtime_factory({"Unsafe": orch}, {"Boom": _boom})
    client.start_orchestration("uncaught-1", "Unsafe")
    result = client.wait_for_orchestration("uncaught-1", WAIT_MS)
    assert result.status == "Failed"
    assert result.output is None
    # The display message first, then the orchestration's traceback (as duroxide reports it).
    assert result.error.splitlines()[0] == "Activity 'Boom' call failed: ValueError: boom"
    assert "Traceback" in result.error
    assert kinds(client, "uncaught-1") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityFailed",
        "OrchestrationFailed",
    ]
    assert client.get_instance_info("uncaught-1").status == "Failed"


def test_orchestration_exception_fails_with_its_message(runtime_factory, client):
    def orch(ctx, _):
        yield ctx.schedule_timer(10)
        raise RuntimeError("orchestration gave up")

    runtime_factory({"GiveUp": orch})
    client.start_orchestration("raise-1", "GiveUp")
    result = client.wait_for_orchestration("raise-1", WAIT_MS)
    assert result.status == "Failed"
    assert result.error.splitlines()[0] == "RuntimeError: orchestration gave up"
    assert 'raise RuntimeError("orchestration gave up")' in result.error
    failed = client.read_execution_history("raise-1", 1)[-1]
    assert failed.kind == "OrchestrationFailed"
    assert "orchestration gave up" in event_data(failed)["details"]["message"]


def test_child_failure_is_raised_in_parent(runtime_factory, client):
    def child(ctx, _):
        yield ctx.schedule_timer(10)
        raise ValueError("child broke")

    def parent(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration("Child", None)
        except Exception as exc:  # noqa: BLE001
            return {"caught": str(exc)}
        return "not raised"

    def parent_uncaught(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Child", None))

    runtime_factory({"Parent": parent, "ParentUncaught": parent_uncaught, "Child": child})
    client.start_orchestration("cp-1", "Parent")
    client.start_orchestration("cp-2", "ParentUncaught")
    result = client.wait_for_orchestration("cp-1", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output["caught"].splitlines()[0] == "ValueError: child broke"
    child_status = client.wait_for_orchestration("cp-1::sub::2", WAIT_MS)
    assert child_status.status == "Failed"
    assert child_status.error.splitlines()[0] == "ValueError: child broke"
    assert kinds(client, "cp-1") == [
        "OrchestrationStarted",
        "SubOrchestrationScheduled",
        "SubOrchestrationFailed",
        "OrchestrationCompleted",
    ]
    uncaught = client.wait_for_orchestration("cp-2", WAIT_MS)
    assert uncaught.status == "Failed"
    assert uncaught.error.splitlines()[0] == "ValueError: child broke"


def test_code_change_under_a_running_instance_fails_nondeterministic(runtime_factory, client, store):
    def original(ctx, _):
        first = yield ctx.schedule_activity("Step", "one")
        approval = yield ctx.wait_for_event("approve")
        return [first, approval]

    def changed(ctx, _):
        # The first step is now a different activity: history cannot replay against this code.
        first = yield ctx.schedule_activity("OtherStep", "one")
        approval = yield ctx.wait_for_event("approve")
        return [first, approval]

    activities = {"Step": lambda ctx, x: f"step {x}", "OtherStep": lambda ctx, x: f"other {x}"}
    old = runtime_factory({"Flow": original}, activities)
    client.start_orchestration("diverge-1", "Flow")
    wait_for_kind(client, "diverge-1", "ExternalSubscribed")
    old.shutdown()

    # A new deployment: new process (provider), same database, same orchestration name, different code.
    redeployed = store.open()
    runtime_factory({"Flow": changed}, activities, provider_=redeployed)
    new_client = Client(redeployed)
    new_client.raise_event("diverge-1", "approve", True)
    result = new_client.wait_for_orchestration("diverge-1", WAIT_MS)
    assert result.status == "Failed"
    assert result.error.startswith("nondeterministic:"), result.error
    assert "schedule mismatch" in result.error
    assert "'OtherStep'" in result.error and "'Step'" in result.error
    assert kinds(client, "diverge-1")[-1] == "OrchestrationFailed"
