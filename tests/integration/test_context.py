"""OrchestrationContext on a real embedded runtime: every scheduling primitive, composition, CAN, helpers."""

from __future__ import annotations

import json
import threading

from duroxide_celery import RuntimeOptions

from .helpers import WAIT_MS, event_data, kinds, wait_for_kind, wait_until


def test_schedule_activity_passes_input_and_result(runtime_factory, client):
    seen = []

    def record(ctx, inp):
        seen.append((ctx.instance_id, ctx.execution_id, ctx.orchestration_name, ctx.activity_name, ctx.session_id))
        return {"got": inp, "n": len(inp["items"])}

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("Record", inp))

    runtime_factory({"Rec": orch}, {"Record": record})
    client.start_orchestration("act-1", "Rec", {"items": [1, 2, 3], "s": "ü"})
    result = client.wait_for_orchestration("act-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"got": {"items": [1, 2, 3], "s": "ü"}, "n": 3})
    assert seen == [("act-1", 1, "Rec", "Record", None)]
    history = client.read_execution_history("act-1", 1)
    assert [e.kind for e in history] == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "OrchestrationCompleted",
    ]
    assert event_data(history[1])["name"] == "Record"
    assert history[2].source_event_id == history[1].event_id


def test_schedule_timer(runtime_factory, client):
    def orch(ctx, _):
        value = yield ctx.schedule_timer(100)
        zero = yield ctx.schedule_timer(0)
        return [value, zero]

    runtime_factory({"Timers": orch})
    client.start_orchestration("timer-1", "Timers")
    result = client.wait_for_orchestration("timer-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", [None, None])
    history = client.read_execution_history("timer-1", 1)
    assert [e.kind for e in history] == [
        "OrchestrationStarted",
        "TimerCreated",
        "TimerFired",
        "TimerCreated",
        "TimerFired",
        "OrchestrationCompleted",
    ]
    created, fired = history[1], history[2]
    assert fired.source_event_id == created.event_id
    # The timer never fires before its time.
    assert fired.timestamp_ms >= event_data(created)["fire_at_ms"]


def test_wait_for_event_and_raise_event(runtime_factory, client):
    def orch(ctx, _):
        first = yield ctx.wait_for_event("approve")
        second = yield ctx.wait_for_event("approve")
        return [first, second]

    runtime_factory({"Approve": orch})
    client.start_orchestration("evt-1", "Approve")
    wait_for_kind(client, "evt-1", "ExternalSubscribed")
    client.raise_event("evt-1", "approve", {"by": "alice"})
    client.raise_event("evt-1", "approve", ["bob", 2])
    result = client.wait_for_orchestration("evt-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", [{"by": "alice"}, ["bob", 2]])
    history = client.read_execution_history("evt-1", 1)
    assert [e.kind for e in history].count("ExternalEvent") == 2
    assert [event_data(e)["name"] for e in history if e.kind == "ExternalSubscribed"] == ["approve", "approve"]


def test_sub_orchestration_gets_auto_id(runtime_factory, client):
    def child(ctx, x):
        doubled = yield ctx.schedule_activity("Double", x)
        return {"child": ctx.instance_id, "value": doubled}

    def parent(ctx, x):
        return (yield ctx.schedule_sub_orchestration("Child", x))

    runtime_factory({"Parent": parent, "Child": child}, {"Double": lambda ctx, x: x * 2})
    client.start_orchestration("par", "Parent", 21)
    result = client.wait_for_orchestration("par", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"child": "par::sub::2", "value": 42})
    assert kinds(client, "par") == [
        "OrchestrationStarted",
        "SubOrchestrationScheduled",
        "SubOrchestrationCompleted",
        "OrchestrationCompleted",
    ]
    child_info = client.get_instance_info("par::sub::2")
    assert (child_info.status, child_info.parent_instance_id) == ("Completed", "par")
    assert client.get_status("par::sub::2").output == {"child": "par::sub::2", "value": 42}


def test_sub_orchestration_with_explicit_id(runtime_factory, client):
    def child(ctx, x):
        return {"me": ctx.instance_id, "x": x}
        yield  # pragma: no cover - makes this a generator

    def parent(ctx, x):
        return (yield ctx.schedule_sub_orchestration_with_id("Child", f"child-of-{ctx.instance_id}", x))

    runtime_factory({"Parent": parent, "Child": child})
    client.start_orchestration("par2", "Parent", "hi")
    result = client.wait_for_orchestration("par2", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"me": "child-of-par2", "x": "hi"})
    scheduled = [e for e in client.read_execution_history("par2", 1) if e.kind == "SubOrchestrationScheduled"]
    assert event_data(scheduled[0])["instance"] == "child-of-par2"
    assert client.get_instance_info("child-of-par2").parent_instance_id == "par2"


def test_detached_start_orchestration(runtime_factory, client):
    def worker(ctx, x):
        yield ctx.schedule_timer(50)
        return {"detached": x}

    def launcher(ctx, x):
        started = yield ctx.start_orchestration("Worker", f"worker-{x}", x)
        return {"launched": started}

    runtime_factory({"Launcher": launcher, "Worker": worker})
    client.start_orchestration("launcher-1", "Launcher", 7)
    result = client.wait_for_orchestration("launcher-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"launched": None})
    assert kinds(client, "launcher-1") == ["OrchestrationStarted", "OrchestrationChained", "OrchestrationCompleted"]
    child = client.wait_for_orchestration("worker-7", WAIT_MS)
    assert (child.status, child.output) == ("Completed", {"detached": 7})
    # Detached: not a child of the launcher (no parent, so no tree and no cancel cascade).
    assert client.get_instance_info("worker-7").parent_instance_id is None


def test_all_with_mixed_kinds_never_raises(runtime_factory, client):
    def boom(ctx, _):
        raise ValueError("boom")

    def child(ctx, x):
        return x + 1
        yield  # pragma: no cover

    def orch(ctx, _):
        results = yield ctx.all(
            [
                ctx.schedule_activity("Echo", "a"),
                ctx.schedule_timer(50),
                ctx.wait_for_event("go"),
                ctx.schedule_sub_orchestration("Child", 1),
                ctx.schedule_activity("Boom", None),
            ]
        )
        empty = yield ctx.all([])
        return {"results": results, "empty": empty}

    runtime_factory({"Mixed": orch, "Child": child}, {"Echo": lambda ctx, x: x, "Boom": boom})
    client.start_orchestration("all-1", "Mixed")
    wait_for_kind(client, "all-1", "ExternalSubscribed")
    client.raise_event("all-1", "go", {"went": True})
    result = client.wait_for_orchestration("all-1", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output == {
        "results": [
            {"ok": "a"},
            {"ok": None},
            {"ok": {"went": True}},
            {"ok": 2},
            {"err": "Activity 'Boom' call failed: ValueError: boom"},
        ],
        "empty": [],
    }
    history_kinds = kinds(client, "all-1")
    for kind in ("ActivityFailed", "TimerFired", "ExternalEvent", "SubOrchestrationCompleted"):
        assert kind in history_kinds


def test_race_activity_beats_timer(runtime_factory, client):
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("Fast", 1), ctx.schedule_timer(30_000)))

    runtime_factory({"R": orch}, {"Fast": lambda ctx, x: x + 1})
    client.start_orchestration("race-act", "R")
    result = client.wait_for_orchestration("race-act", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"index": 0, "value": 2})
    assert "TimerFired" not in kinds(client, "race-act")


def test_race_timer_beats_activity_and_loser_is_cancelled(runtime_factory, client):
    started, saw_cancel, release = threading.Event(), threading.Event(), threading.Event()

    def slow(ctx, _):
        started.set()
        while not release.is_set():
            if ctx.is_cancelled():
                saw_cancel.set()
                return "cancelled"
            release.wait(0.02)
        return "finished"

    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("Slow", None), ctx.schedule_timer(100)))

    # A short activity lease so the running loser learns of its cancellation at the next renewal (~1 s).
    runtime_factory({"R": orch}, {"Slow": slow}, options=RuntimeOptions(worker_lock_timeout_ms=2000))
    client.start_orchestration("race-timer", "R")
    try:
        result = client.wait_for_orchestration("race-timer", WAIT_MS)
        assert (result.status, result.output) == ("Completed", {"index": 1, "value": None})
        assert started.is_set()
        history = client.read_execution_history("race-timer", 1)
        assert [e.kind for e in history] == [
            "OrchestrationStarted",
            "ActivityScheduled",
            "TimerCreated",
            "TimerFired",
            "ActivityCancelRequested",
            "OrchestrationCompleted",
        ]
        assert saw_cancel.wait(WAIT_MS / 1000), "the losing activity never saw is_cancelled()"
    finally:
        release.set()


def test_race_wait_vs_timer_both_ways(runtime_factory, client):
    def orch(ctx, _):
        return (yield ctx.race(ctx.wait_for_event("answer"), ctx.schedule_timer(30_000)))

    def orch_timeout(ctx, _):
        first = yield ctx.race(ctx.wait_for_event("answer"), ctx.schedule_timer(50))
        # The lost wait must not steal the next event.
        second = yield ctx.wait_for_event("answer")
        return [first, second]

    runtime_factory({"Wait": orch, "WaitTimeout": orch_timeout})
    client.start_orchestration("race-wait", "Wait")
    client.start_orchestration("race-wait-timeout", "WaitTimeout")
    wait_for_kind(client, "race-wait", "ExternalSubscribed")
    client.raise_event("race-wait", "answer", 42)
    result = client.wait_for_orchestration("race-wait", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"index": 0, "value": 42})

    # The timer wins the first race (its wait is cancelled), then the second wait subscribes.
    wait_until(lambda: kinds(client, "race-wait-timeout").count("ExternalSubscribed") == 2, what="second wait")
    client.raise_event("race-wait-timeout", "answer", "late")
    result = client.wait_for_orchestration("race-wait-timeout", WAIT_MS)
    assert (result.status, result.output) == ("Completed", [{"index": 1, "value": None}, "late"])
    assert kinds(client, "race-wait-timeout") == [
        "OrchestrationStarted",
        "ExternalSubscribed",
        "TimerCreated",
        "TimerFired",
        "ExternalSubscribedCancelled",
        "ExternalSubscribed",
        "ExternalEvent",
        "OrchestrationCompleted",
    ]


def test_continue_as_new(runtime_factory, client):
    def orch(ctx, n):
        if n < 2:
            ctx.set_custom_status(f"round {n}")
            yield ctx.schedule_timer(10)
            yield ctx.continue_as_new(n + 1)
            raise AssertionError("continue_as_new returned")
        return {"n": n, "execution": ctx.execution_id, "carried_status": ctx.get_custom_status()}

    runtime_factory({"Loop": orch})
    client.start_orchestration("can-1", "Loop", 0)
    result = client.wait_for_orchestration("can-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"n": 2, "execution": 3, "carried_status": "round 1"})
    assert result.custom_status == "round 1"
    assert client.list_executions("can-1") == [1, 2, 3]
    assert [client.get_execution_info("can-1", i).status for i in (1, 2, 3)] == [
        "ContinuedAsNew",
        "ContinuedAsNew",
        "Completed",
    ]
    assert client.get_instance_info("can-1").current_execution_id == 3
    assert kinds(client, "can-1", 1)[-1] == "OrchestrationContinuedAsNew"
    assert kinds(client, "can-1", 3) == ["OrchestrationStarted", "OrchestrationCompleted"]
    started = client.read_execution_history("can-1", 2)[0]
    assert json.loads(event_data(started)["input"]) == 1


def test_utc_now_and_new_guid_are_recorded_and_stable(runtime_factory, client):
    def orch(ctx, _):
        now = yield ctx.utc_now()
        guid = yield ctx.new_guid()
        echoed = yield ctx.schedule_activity("Echo", {"now": now, "guid": guid})  # forces a later replay
        return {"now": now, "guid": guid, "echoed": echoed}

    runtime_factory({"Clock": orch}, {"Echo": lambda ctx, x: x})
    client.start_orchestration("clock-1", "Clock")
    result = client.wait_for_orchestration("clock-1", WAIT_MS)
    assert result.status == "Completed", result.error
    out = result.output
    # Replayed on the last turn, the values equal those the first turn handed to the activity.
    assert out["echoed"] == {"now": out["now"], "guid": out["guid"]}
    assert isinstance(out["now"], int) and out["now"] > 1_600_000_000_000
    assert isinstance(out["guid"], str) and len(out["guid"]) == 36
    history = client.read_execution_history("clock-1", 1)
    assert [e.kind for e in history] == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "ActivityScheduled",
        "ActivityCompleted",
        "ActivityScheduled",
        "ActivityCompleted",
        "OrchestrationCompleted",
    ]
    assert event_data(history[1])["name"] == "__duroxide_syscall:utc_now_ms"
    assert json.loads(event_data(history[2])["result"]) == out["now"]
    assert event_data(history[3])["name"] == "__duroxide_syscall:new_guid"
    assert json.loads(event_data(history[4])["result"]) == out["guid"]


def test_trace_calls_do_not_crash(runtime_factory, client):
    def orch(ctx, _):
        ctx.trace_info("info")
        ctx.trace_warn("warn")
        ctx.trace_error("error")
        ctx.trace_debug({"not": "a string"})
        yield ctx.schedule_timer(10)
        ctx.trace_info("after replay")
        return "traced"

    def act(ctx, _):
        ctx.trace_info("in activity")
        ctx.trace_warn("w")
        ctx.trace_error("e")
        ctx.trace_debug("d")
        return "ok"

    def outer(ctx, _):
        yield ctx.schedule_activity("Act", None)
        return (yield ctx.schedule_sub_orchestration("Traced", None))

    runtime_factory({"Traced": orch, "Outer": outer}, {"Act": act})
    client.start_orchestration("trace-1", "Outer")
    result = client.wait_for_orchestration("trace-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "traced")


def test_custom_status(runtime_factory, client):
    def orch(ctx, _):
        before = ctx.get_custom_status()
        ctx.set_custom_status("a")
        yield ctx.schedule_activity("Noop", None)
        seen_a = ctx.get_custom_status()
        ctx.set_custom_status("b")
        ctx.reset_custom_status()
        after_reset = ctx.get_custom_status()
        ctx.set_custom_status("c")
        yield ctx.wait_for_event("finish")
        return {"before": before, "seen_a": seen_a, "after_reset": after_reset, "last": ctx.get_custom_status()}

    runtime_factory({"Status": orch}, {"Noop": lambda ctx, _: None})
    client.start_orchestration("status-1", "Status")
    wait_for_kind(client, "status-1", "ExternalSubscribed")
    running = client.get_status("status-1")
    assert (running.status, running.custom_status, running.custom_status_version) == ("Running", "c", 2)
    changed = client.wait_for_status_change("status-1", 1, 20, WAIT_MS)
    assert changed.custom_status == "c"
    client.raise_event("status-1", "finish")
    result = client.wait_for_orchestration("status-1", WAIT_MS)
    assert result.output == {"before": None, "seen_a": "a", "after_reset": None, "last": "c"}
    assert (result.custom_status, result.custom_status_version) == ("c", 2)
    assert kinds(client, "status-1").count("CustomStatusUpdated") == 4


def test_reset_custom_status_clears_it(runtime_factory, client):
    def orch(ctx, _):
        ctx.set_custom_status("working")
        yield ctx.schedule_timer(10)
        ctx.reset_custom_status()
        return ctx.get_custom_status()

    runtime_factory({"Reset": orch})
    client.start_orchestration("reset-1", "Reset")
    result = client.wait_for_orchestration("reset-1", WAIT_MS)
    assert (result.status, result.output, result.custom_status) == ("Completed", None, None)
    assert result.custom_status_version == 2


def test_context_properties(runtime_factory, client):
    rt = runtime_factory(start=False)

    @rt.register_orchestration_versioned("Props", "2.1.0")
    def props(ctx, _):
        info = {
            "instance_id": ctx.instance_id,
            "execution_id": ctx.execution_id,
            "orchestration_name": ctx.orchestration_name,
            "orchestration_version": ctx.orchestration_version,
        }
        if ctx.execution_id == 1:
            yield ctx.continue_as_new(None)
        return info

    rt.start()
    client.start_orchestration("props-1", "Props")
    result = client.wait_for_orchestration("props-1", WAIT_MS)
    assert (result.status, result.output) == (
        "Completed",
        {
            "instance_id": "props-1",
            "execution_id": 2,
            "orchestration_name": "Props",
            "orchestration_version": "2.1.0",
        },
    )
