"""Client: status, waits, cancellation (with cascade), executions, history and instance info."""

from __future__ import annotations

import json

import pytest

from duroxide_celery import Event, OperationTimedOut

from .helpers import WAIT_MS, kinds, wait_for_kind


def _waiter(ctx, _):
    return (yield ctx.wait_for_event("go"))


def test_get_status_of_unknown_instance(runtime_factory, client):
    runtime_factory()
    status = client.get_status("nobody-here")
    assert (status.status, status.output, status.error) == ("NotFound", None, None)
    assert (status.custom_status, status.custom_status_version) == (None, 0)
    assert client.get_instance_info("nobody-here") is None
    assert client.list_executions("nobody-here") == []
    assert client.read_execution_history("nobody-here", 1) == []


def test_wait_for_orchestration_times_out(runtime_factory, client):
    runtime_factory({"Waiter": _waiter})
    client.start_orchestration("slowpoke", "Waiter")
    with pytest.raises(OperationTimedOut) as info:
        client.wait_for_orchestration("slowpoke", 200)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, RuntimeError)  # what duroxide raises
    assert str(info.value) == "Operation timed out"
    assert client.get_status("slowpoke").status == "Running"


def test_cancel_instance(runtime_factory, client):
    runtime_factory({"Waiter": _waiter})
    client.start_orchestration("cancel-me", "Waiter")
    wait_for_kind(client, "cancel-me", "ExternalSubscribed")
    client.cancel_instance("cancel-me", "no longer needed")
    result = client.wait_for_orchestration("cancel-me", WAIT_MS)
    assert (result.status, result.error, result.output) == ("Failed", "canceled: no longer needed", None)
    assert kinds(client, "cancel-me") == [
        "OrchestrationStarted",
        "ExternalSubscribed",
        "OrchestrationCancelRequested",
        "ExternalSubscribedCancelled",
        "OrchestrationFailed",
    ]
    # Cancelling a finished instance changes nothing.
    client.cancel_instance("cancel-me", "again")
    assert client.get_status("cancel-me").error == "canceled: no longer needed"


def test_cancel_without_reason(runtime_factory, client):
    runtime_factory({"Waiter": _waiter})
    client.start_orchestration("cancel-bare", "Waiter")
    wait_for_kind(client, "cancel-bare", "ExternalSubscribed")
    client.cancel_instance("cancel-bare")
    result = client.wait_for_orchestration("cancel-bare", WAIT_MS)
    assert (result.status, result.error) == ("Failed", "canceled: ")


def test_cancel_cascades_to_children(runtime_factory, client):
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Waiter", "cascade-child", None))

    runtime_factory({"Parent": parent, "Waiter": _waiter})
    client.start_orchestration("cascade-parent", "Parent")
    wait_for_kind(client, "cascade-child", "ExternalSubscribed")
    client.cancel_instance("cascade-parent", "stop")
    parent_result = client.wait_for_orchestration("cascade-parent", WAIT_MS)
    child_result = client.wait_for_orchestration("cascade-child", WAIT_MS)
    assert (parent_result.status, parent_result.error) == ("Failed", "canceled: stop")
    assert (child_result.status, child_result.error) == ("Failed", "canceled: parent canceled")
    assert kinds(client, "cascade-parent") == [
        "OrchestrationStarted",
        "SubOrchestrationScheduled",
        "OrchestrationCancelRequested",
        "SubOrchestrationCancelRequested",
        "OrchestrationFailed",
    ]
    assert kinds(client, "cascade-child") == [
        "OrchestrationStarted",
        "ExternalSubscribed",
        "OrchestrationCancelRequested",
        "ExternalSubscribedCancelled",
        "OrchestrationFailed",
    ]


def test_list_executions_and_execution_info(runtime_factory, client):
    def orch(ctx, n):
        if n == 0:
            yield ctx.continue_as_new(1)
        return n

    runtime_factory({"Twice": orch, "Once": lambda ctx, x: x})
    client.start_orchestration("exec-once", "Once", "x")
    client.start_orchestration("exec-twice", "Twice", 0)
    assert client.wait_for_orchestration("exec-once", WAIT_MS).status == "Completed"
    assert client.wait_for_orchestration("exec-twice", WAIT_MS).output == 1
    assert client.list_executions("exec-once") == [1]
    assert client.list_executions("exec-twice") == [1, 2]
    first, second = (client.get_execution_info("exec-twice", i) for i in (1, 2))
    assert (first.execution_id, first.status) == (1, "ContinuedAsNew")
    assert (second.execution_id, second.status, second.output) == (2, "Completed", 1)
    assert second.event_count == len(client.read_execution_history("exec-twice", 2)) == 2
    assert first.started_at > 0 and first.completed_at >= first.started_at
    assert client.get_execution_info("exec-twice", 3) is None


def test_read_execution_history_event_fields(runtime_factory, client):
    def orch(ctx, x):
        return (yield ctx.schedule_activity("Upper", x))

    runtime_factory({"Upper": orch}, {"Upper": lambda ctx, s: s.upper()})
    client.start_orchestration("hist-1", "Upper", "abc")
    assert client.wait_for_orchestration("hist-1", WAIT_MS).output == "ABC"
    history = client.read_execution_history("hist-1", 1)
    assert all(isinstance(e, Event) for e in history)
    assert [e.event_id for e in history] == [1, 2, 3, 4]
    assert [e.kind for e in history] == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "OrchestrationCompleted",
    ]
    assert [e.source_event_id for e in history] == [None, None, 2, None]
    for e in history:
        assert isinstance(e.timestamp_ms, int) and e.timestamp_ms > 0
        assert isinstance(e.data, str)
    started, scheduled, completed, done = (json.loads(e.data) for e in history)
    assert (started["name"], started["version"], json.loads(started["input"])) == ("Upper", "1.0.0", "abc")
    assert (scheduled["name"], json.loads(scheduled["input"])) == ("Upper", "abc")
    assert json.loads(completed["result"]) == "ABC"
    assert json.loads(done["output"]) == "ABC"
    assert [e.timestamp_ms for e in history] == sorted(e.timestamp_ms for e in history)


def test_get_instance_info(runtime_factory, client):
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Child", None))

    runtime_factory({"Parent": parent, "Child": lambda ctx, _: "child done"})
    client.start_orchestration("info-1", "Parent")
    assert client.wait_for_orchestration("info-1", WAIT_MS).status == "Completed"
    info = client.get_instance_info("info-1")
    assert (info.instance_id, info.orchestration_name, info.orchestration_version) == ("info-1", "Parent", "1.0.0")
    assert (info.current_execution_id, info.status, info.output) == (1, "Completed", "child done")
    assert info.parent_instance_id is None
    assert info.created_at > 0 and info.updated_at >= info.created_at
    child = client.get_instance_info("info-1::sub::2")
    assert (child.parent_instance_id, child.status, child.output) == ("info-1", "Completed", "child done")
    assert child.created_at > 0 and child.updated_at > 0
    assert set(client.list_all_instances()) == {"info-1", "info-1::sub::2"}
    assert set(client.list_instances_by_status("Completed")) == {"info-1", "info-1::sub::2"}
    assert client.list_instances_by_status("Running") == []
