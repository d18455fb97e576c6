"""SqliteProvider.in_memory(): the quick-start store (one process) runs the same engine."""

from __future__ import annotations

from duroxide_celery import Client, SqliteProvider

from .helpers import WAIT_MS, assert_well_formed, kinds, wait_for_kind


def test_in_memory_composition_events_and_continue_as_new(runtime_factory, memory_provider):
    def child(ctx, x):
        return (yield ctx.schedule_activity("Double", x))

    def orch(ctx, state):
        doubled = yield ctx.all([ctx.schedule_sub_orchestration("Child", n) for n in state["items"]])
        extra = yield ctx.wait_for_event("extra")
        total = state["total"] + sum(r["ok"] for r in doubled) + extra
        if ctx.execution_id == 1:
            yield ctx.continue_as_new({"items": [100], "total": total})
        return total

    runtime_factory({"Orch": orch, "Child": child}, {"Double": lambda ctx, x: 2 * x}, provider_=memory_provider)
    client = Client(memory_provider)
    client.start_orchestration("mem-can", "Orch", {"items": [1, 2, 3], "total": 0})
    wait_for_kind(client, "mem-can", "ExternalSubscribed", execution_id=1)
    client.raise_event("mem-can", "extra", 5)
    wait_for_kind(client, "mem-can", "ExternalSubscribed", execution_id=2)
    client.raise_event("mem-can", "extra", 7)
    result = client.wait_for_orchestration("mem-can", WAIT_MS)
    assert (result.status, result.output) == ("Completed", 12 + 5 + 200 + 7)
    assert client.list_executions("mem-can") == [1, 2]
    assert_well_formed(client, "mem-can", 1)
    assert_well_formed(client, "mem-can", 2)
    assert kinds(client, "mem-can", 1).count("SubOrchestrationCompleted") == 3


def test_in_memory_cancel(runtime_factory, memory_provider):
    def orch(ctx, _):
        return (yield ctx.wait_for_event("never"))

    runtime_factory({"Wait": orch}, provider_=memory_provider)
    client = Client(memory_provider)
    client.start_orchestration("mem-cancel", "Wait")
    wait_for_kind(client, "mem-cancel", "ExternalSubscribed")
    client.cancel_instance("mem-cancel", "bye")
    result = client.wait_for_orchestration("mem-cancel", WAIT_MS)
    assert (result.status, result.error) == ("Failed", "canceled: bye")


def test_two_in_memory_stores_in_one_process_are_isolated(runtime_factory):
    first, second = SqliteProvider.in_memory(), SqliteProvider.in_memory()
    runtime_factory({"Who": lambda ctx, _: "first"}, provider_=first)
    runtime_factory({"Who": lambda ctx, _: "second"}, provider_=second)
    a, b = Client(first), Client(second)
    a.start_orchestration("same-id", "Who")
    b.start_orchestration("same-id", "Who")
    assert a.wait_for_orchestration("same-id", WAIT_MS).output == "first"
    assert b.wait_for_orchestration("same-id", WAIT_MS).output == "second"
    assert a.list_all_instances() == b.list_all_instances() == ["same-id"]
