"""Scenarios of the duroxide-python user guide and issue-4 features, on the embedded runtime (SQLite or
PostgreSQL per DUROXIDE_TEST_DB)."""

from __future__ import annotations

import json
import threading

from duroxide_celery import Runtime

from .helpers import WAIT_MS, wait_until


def test_chat_bot_over_an_event_queue_with_custom_status_and_continue_as_new(runtime_factory, client):
    def generate(ctx, text):
        return f"Echo: {text}"

    def chat_bot(ctx, _):
        msg = json.loads((yield ctx.dequeue_event("inbox")))
        response = yield ctx.schedule_activity("Generate", msg["text"])
        ctx.set_custom_status(json.dumps({"state": "replied", "response": response, "seq": msg["seq"]}))
        if "bye" in msg["text"].lower():
            return f"Done after {msg['seq']} msgs"
        return (yield ctx.continue_as_new(""))

    runtime_factory({"ChatBot": chat_bot}, {"Generate": generate})
    client.start_orchestration("chat-1", "ChatBot", "")
    client.enqueue_event("chat-1", "inbox", json.dumps({"seq": 1, "text": "Hello!"}))
    status = client.wait_for_status_change("chat-1", 0, 50, WAIT_MS)
    assert json.loads(status.custom_status)["response"] == "Echo: Hello!"
    client.enqueue_event("chat-1", "inbox", json.dumps({"seq": 2, "text": "Bye!"}))
    result = client.wait_for_orchestration("chat-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "Done after 2 msgs")
    assert json.loads(result.custom_status)["seq"] == 2
    assert client.list_executions("chat-1")[-1] >= 2


def test_kv_request_response(runtime_factory, client):
    def request_server(ctx, _):
        ctx.set_kv_value("status", "ready")
        request = yield ctx.wait_for_event("request")
        ctx.set_kv_value(f"response:{request['op_id']}", request["command"][::-1])
        return "done"

    runtime_factory({"RequestServer": request_server})
    client.start_orchestration("server-1", "RequestServer", None)
    assert client.wait_for_kv_value("server-1", "status", WAIT_MS) == "ready"
    client.raise_event("server-1", "request", {"op_id": "op-1", "command": "olleh"})
    assert client.wait_for_orchestration("server-1", WAIT_MS).status == "Completed"
    assert client.get_kv_value("server-1", "response:op-1") == "hello"
    assert client.get_kv_value("server-1", "missing") is None


def test_try_dequeue_drains_a_queue_without_a_magic_timer(runtime_factory, client):
    def drain(ctx, _):
        yield ctx.wait_for_event("go")
        seen = []
        while (msg := (yield ctx.try_dequeue_event("jobs"))) is not None:
            seen.append(msg)
        return seen

    runtime_factory({"Drain": drain})
    client.start_orchestration("drain-1", "Drain", None)
    wait_until(lambda: "ExternalSubscribed" in [e.kind for e in client.read_execution_history("drain-1", 1)])
    for n in range(4):
        client.enqueue_event("drain-1", "jobs", n)
    client.raise_event("drain-1", "go", None)
    assert client.wait_for_orchestration("drain-1", WAIT_MS).output == [0, 1, 2, 3]


def test_retry_budget_and_typed_variants(runtime_factory, client):
    calls = {"n": 0}

    def flaky(ctx, _):
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError(f"fail-{calls['n']}")
        return "ok"

    def orch(ctx, _):
        value = yield ctx.schedule_activity_with_retry_typed(
            "Flaky", None, {"max_attempts": 5, "backoff": "fixed", "total_timeout_ms": 60_000}
        )
        both = yield ctx.all_typed([ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Echo", 2)])
        return [value, both]

    runtime_factory({"Retry": orch}, {"Flaky": flaky, "Echo": lambda ctx, x: x})
    client.start_orchestration("retry-1", "Retry", None)
    result = client.wait_for_orchestration("retry-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", ["ok", [1, 2]])
    assert calls["n"] == 3


def test_versions_latest_by_default_pinned_on_request_upgraded_at_continue_as_new(provider, client, runtime_factory):
    rt = runtime_factory(start=False)
    rt.register_orchestration("Job", lambda ctx, x: (yield ctx.schedule_timer(1)) or "v1")
    rt.register_orchestration_versioned("Job", "1.1.0", lambda ctx, x: (yield ctx.schedule_timer(1)) or "v1.1")

    def upgrading(ctx, n):
        yield ctx.schedule_timer(1)
        if n == 0:
            yield ctx.continue_as_new_versioned(1, "1.0.0")
        return f"{ctx.orchestration_version} n={n}"

    def upgraded(ctx, n):
        return f"{ctx.orchestration_version} n={n}"

    rt.register_orchestration("Up", upgrading)
    rt.register_orchestration_versioned("Up", "2.0.0", upgraded)
    rt.start()
    client.start_orchestration("latest", "Job", None)
    client.start_orchestration_versioned("pinned", "Job", None, "1.0.0")
    client.start_orchestration_versioned("up", "Up", 0, "1.0.0")
    assert client.wait_for_orchestration("latest", WAIT_MS).output == "v1.1"
    assert client.wait_for_orchestration("pinned", WAIT_MS).output == "v1"
    assert client.wait_for_orchestration("up", WAIT_MS).output == "1.0.0 n=1"
    assert client.get_instance_info("latest").orchestration_version == "1.1.0"


def test_race_loser_activity_sees_cancellation_quickly(runtime_factory, client):
    noticed = threading.Event()

    def long_running(ctx, _):
        for _ in range(400):
            if ctx.is_cancelled():
                noticed.set()
                return "cancelled"
            threading.Event().wait(0.05)
        return "finished"

    def orch(ctx, _):
        winner = yield ctx.race(ctx.schedule_activity("Long", None), ctx.schedule_timer(100))
        return winner["index"]

    runtime_factory({"Race": orch}, {"Long": long_running})
    client.start_orchestration("race-1", "Race", None)
    assert client.wait_for_orchestration("race-1", WAIT_MS).output == 1
    assert noticed.wait(WAIT_MS / 1000), "the losing activity never saw is_cancelled()"


def test_metrics_count_each_event_once(runtime_factory, client):
    rt: Runtime = runtime_factory(
        {"One": lambda ctx, x: (yield ctx.schedule_activity("Echo", x))}, {"Echo": lambda ctx, x: x}
    )
    for n in range(5):
        client.start_orchestration(f"m-{n}", "One", n)
    for n in range(5):
        assert client.wait_for_orchestration(f"m-{n}", WAIT_MS).output == n
    snap = rt.metrics_snapshot()
    assert (snap.orch_starts, snap.orch_completions, snap.activity_success) == (5, 5, 5)
    assert snap["orch_starts"] == 5


def test_self_pruning_eternal_orchestration_keeps_kv_across_continue_as_new(runtime_factory, client):
    from duroxide_celery import PruneOptions

    def prune_self(ctx, keep):
        result = ctx.get_client().prune_executions(ctx.instance_id, PruneOptions(keep_last=keep))
        return result.executions_deleted

    def eternal(ctx, state):
        rounds = state["rounds"]
        ctx.set_kv_value("rounds", rounds)
        if rounds >= 4:
            return {"rounds": rounds, "first_seen": ctx.get_kv_value("first"), "execution": ctx.execution_id}
        if rounds == 0:
            ctx.set_kv_value("first", "exec-1")
        yield ctx.schedule_activity("PruneSelf", 1)
        yield ctx.continue_as_new({"rounds": rounds + 1})

    runtime_factory({"Eternal": eternal}, {"PruneSelf": prune_self})
    client.start_orchestration("eternal-1", "Eternal", {"rounds": 0})
    result = client.wait_for_orchestration("eternal-1", WAIT_MS)
    assert result.status == "Completed"
    assert result.output == {"rounds": 4, "first_seen": "exec-1", "execution": 5}
    executions = client.list_executions("eternal-1")
    assert executions[-1] == 5 and len(executions) <= 2  # every round pruned what came before it
    assert client.get_kv_value("eternal-1", "rounds") == "4"


def test_running_execution_keeps_its_version_and_upgrades_at_continue_as_new(runtime_factory, client, store):
    def v1(ctx, n):
        yield ctx.wait_for_event("go")
        if n == 0:
            yield ctx.continue_as_new(1)  # version-less: the next execution takes the latest
        return f"{ctx.orchestration_version} n={n}"

    old = runtime_factory({"Svc": v1})
    client.start_orchestration("svc-1", "Svc", 0)
    wait_until(lambda: "ExternalSubscribed" in [e.kind for e in client.read_execution_history("svc-1", 1)])
    old.shutdown()

    def v2(ctx, n):
        return f"{ctx.orchestration_version} n={n}"

    new = runtime_factory(provider_=store.open(), start=False)  # a new deploy: both versions registered
    new.register_orchestration("Svc", v1)
    new.register_orchestration_versioned("Svc", "2.0.0", v2)

    def parent(ctx, _):
        pinned = yield ctx.schedule_sub_orchestration_versioned("Svc", "2.0.0", 7)
        pinned_id = yield ctx.schedule_sub_orchestration_versioned_with_id("Svc", "2.0.0", "svc-child", 8)
        return [pinned, pinned_id]

    new.register_orchestration("Parent", parent)
    new.start()
    client.raise_event("svc-1", "go", None)  # execution 1 replays on 1.0.0, then continues as new on 2.0.0
    result = client.wait_for_orchestration("svc-1", WAIT_MS)
    assert result.output == "2.0.0 n=1"
    assert client.get_execution_info("svc-1", 1).status == "ContinuedAsNew"
    client.start_orchestration("parent-v", "Parent", None)
    assert client.wait_for_orchestration("parent-v", WAIT_MS).output == ["2.0.0 n=7", "2.0.0 n=8"]


def test_cancelled_activity_that_ignores_it_is_named_after_the_grace_period(runtime_factory, client, caplog):
    from duroxide_celery import RuntimeOptions

    release = threading.Event()

    def stubborn(ctx, _):
        release.wait(WAIT_MS / 1000)  # never looks at is_cancelled()
        return "late"

    def orch(ctx, _):
        winner = yield ctx.race(ctx.schedule_activity("Stubborn", None), ctx.schedule_timer(50))
        return winner["index"]

    caplog.set_level("WARNING", logger="duroxide_celery.activity")
    runtime_factory(
        {"Grace": orch}, {"Stubborn": stubborn}, options=RuntimeOptions(activity_cancellation_grace_period_ms=200)
    )
    client.start_orchestration("grace-1", "Grace", None)
    assert client.wait_for_orchestration("grace-1", WAIT_MS).output == 1
    warning = wait_until(
        lambda: [r for r in caplog.records if "still running" in r.getMessage() and "Stubborn" in r.getMessage()],
        what="the grace-period warning",
    )
    release.set()
    assert warning[0].instance_id == "grace-1"
