"""Bad input gets a clear error and loses nothing (DESIGN invariant 7): refused calls write nothing, unknown
instances never jam the queues, broken orchestrations and activities end with a precise error."""

from __future__ import annotations

import pytest

from duroxide_celery import Runtime, RuntimeOptions

from .helpers import WAIT_MS, kinds


def _echo_orch(ctx, x):
    return (yield ctx.schedule_activity("Echo", x))


ECHO = {"Echo": lambda ctx, x: x}


def _wait_orch(ctx, _):
    return (yield ctx.wait_for_event("go"))


def test_non_json_input_is_refused_and_writes_nothing(runtime_factory, client):
    runtime_factory({"Echo": _echo_orch}, ECHO)
    with pytest.raises(TypeError, match="JSON"):
        client.start_orchestration("bad-json", "Echo", {"when": object()})
    with pytest.raises(TypeError, match="JSON"):
        client.start_orchestration("bad-json", "Echo", {1, 2})
    assert client.get_status("bad-json").status == "NotFound"
    assert client.list_all_instances() == []
    # The id is still free: a valid start afterwards works.
    client.start_orchestration("bad-json", "Echo", {"when": "now"})
    result = client.wait_for_orchestration("bad-json", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"when": "now"})


def test_invalid_instance_ids_are_refused(runtime_factory, client):
    runtime_factory({"Echo": _echo_orch}, ECHO)
    with pytest.raises(ValueError, match="empty"):
        client.start_orchestration("", "Echo", 1)
    with pytest.raises(ValueError, match="empty"):
        client.start_orchestration("   ", "Echo", 1)
    with pytest.raises(ValueError, match="::sub::"):
        client.start_orchestration("p::sub::2", "Echo", 1)
    assert client.list_all_instances() == []


def test_starting_an_existing_id_keeps_the_first(runtime_factory, client):
    runtime_factory({"Echo": _echo_orch}, ECHO)
    client.start_orchestration("dup-1", "Echo", "first")
    client.start_orchestration("dup-1", "Echo", "second")
    result = client.wait_for_orchestration("dup-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "first")
    client.start_orchestration("dup-1", "Echo", "third")  # after completion, too
    assert client.get_status("dup-1").output == "first"
    assert client.list_executions("dup-1") == [1]
    assert kinds(client, "dup-1").count("OrchestrationStarted") == 1


def test_signals_to_unknown_instances_do_not_jam(runtime_factory, client):
    runtime_factory({"Echo": _echo_orch}, ECHO)
    client.cancel_instance("ghost", "nobody")
    client.raise_event("ghost", "go", {"x": 1})
    client.enqueue_event("ghost", "q", "m")
    assert client.get_status("ghost").status == "NotFound"
    client.start_orchestration("after-ghost", "Echo", "still works")
    result = client.wait_for_orchestration("after-ghost", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "still works")
    # The signals did not create the instance later either.
    assert client.get_status("ghost").status == "NotFound"


def test_unregistered_orchestration_fails_naming_it(runtime_factory, client):
    runtime_factory({"Echo": _echo_orch}, ECHO, options=RuntimeOptions(max_attempts=3))
    client.start_orchestration("no-handler", "NoSuchOrchestration", 1)
    result = client.wait_for_orchestration("no-handler", WAIT_MS)
    assert result.status == "Failed"
    # Abandoned with backoff (1 s, 2 s, 4 s: room for a rolling deploy), then poisoned with a clear reason.
    assert result.error == (
        "poison: orchestration no-handler exceeded 4 attempts (max 3): "
        "orchestration 'NoSuchOrchestration' (version latest) is not registered"
    )
    assert kinds(client, "no-handler") == ["OrchestrationStarted", "OrchestrationFailed"]


def test_yielding_a_non_task_fails_with_the_value(runtime_factory, client):
    def orch(ctx, _):
        yield 42

    runtime_factory({"YieldsInt": orch})
    client.start_orchestration("yield-42", "YieldsInt")
    result = client.wait_for_orchestration("yield-42", WAIT_MS)
    assert result.status == "Failed"
    first_line = result.error.splitlines()[0]
    assert "42" in first_line and "not a task" in first_line, first_line


def test_activity_returning_non_json_fails_that_activity(runtime_factory, client):
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("ReturnsObject", None)
        except Exception as exc:  # noqa: BLE001
            return {"caught": str(exc)}
        return "not raised"

    runtime_factory({"Catch": orch}, {"ReturnsObject": lambda ctx, _: object()})
    client.start_orchestration("non-json-result", "Catch")
    result = client.wait_for_orchestration("non-json-result", WAIT_MS)
    assert result.status == "Completed", result.error
    caught = result.output["caught"]
    assert caught.startswith("Activity 'ReturnsObject' call failed: TypeError: "), caught
    assert "JSON" in caught
    assert kinds(client, "non-json-result") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityFailed",
        "OrchestrationCompleted",
    ]


def test_an_embedded_runtime_with_no_threads_at_all_is_refused_at_construction(provider):
    none = RuntimeOptions(orchestration_concurrency=0, worker_concurrency=0)
    with pytest.raises(ValueError, match=r"leaves the embedded runtime \(no Celery app\) no thread to run turns or"):
        Runtime(provider, none)
    # One role at 0 is a node of an in-process cluster (another Runtime on the same store serves the other role).
    Runtime(provider, RuntimeOptions(orchestration_concurrency=0))
    Runtime(provider, RuntimeOptions(worker_concurrency=0))


def test_the_client_refuses_wrong_types_with_type_error_and_writes_nothing(runtime_factory, client):
    runtime_factory({"Wait": _wait_orch}, ECHO)
    client.start_orchestration("w1", "Wait", None)
    wrong = [
        (lambda: client.get_status(5), "instance id must be a str, got int"),
        (lambda: client.wait_for_orchestration(5), "instance id must be a str, got int"),
        (lambda: client.get_instance_info(None), "instance id must be a str, got NoneType"),
        (lambda: client.start_orchestration(5, "Wait"), "instance id must be a str, got int"),
        (lambda: client.start_orchestration("x", 5), "orchestration name must be a str, got int"),
        (lambda: client.start_orchestration_versioned("x", "Wait", None, 1), "version must be a str, got int"),
        (lambda: client.raise_event(5, "go"), "instance id must be a str, got int"),
        (lambda: client.raise_event("w1", 5), "event name must be a str, got int"),
        (lambda: client.enqueue_event(b"w1", "q"), "instance id must be a str, got bytes"),
        (lambda: client.enqueue_event("w1", None), "queue name must be a str, got NoneType"),
        (lambda: client.cancel_instance(5), "instance id must be a str, got int"),
        (lambda: client.cancel_instance("w1", 5), "cancel reason must be a str or None, got int"),
    ]
    for call, message in wrong:
        with pytest.raises(TypeError, match=f"^{message}$"):
            call()
    assert client.list_all_instances() == ["w1"]
    assert client.get_status("w1").status == "Running"  # the refused cancel wrote nothing
    assert "OrchestrationCancelRequested" not in kinds(client, "w1")
