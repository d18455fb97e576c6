"""Starting, completing and failing an orchestration; activities; what the code may and may not yield."""

from __future__ import annotations

import json

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import ScheduleActivity, TurnInput
from duroxide_celery.replay.engine import run_turn
from duroxide_celery.replay.events import HistoryEvent
from tests.unit import sim as sim_module

from .sim import NOW_MS, Sim, assert_replay_stable, error_message, outgoing_of, output_of


def hello(ctx, name):
    greeting = yield ctx.schedule_activity("Greet", name)
    return f"{greeting}!"


def test_start_schedules_first_activity_and_records_started_event():
    sim = Sim({"hello": hello}, instance_id="h1").start("hello", "ann")
    r = sim.turn()
    assert r.status == "Running"
    assert r.orchestration_name == "hello" and r.orchestration_version == "1.0.0"
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ACTIVITY_SCHEDULED]
    started = sim.event(1)
    assert started.data["name"] == "hello"
    assert started.data["version"] == "1.0.0"
    assert started.data["input"] == '"ann"'
    assert started.data["parent_instance"] is None
    assert started.timestamp_ms == NOW_MS
    assert sim.event(2).data == {"name": "Greet", "input": '"ann"', "session_id": None, "tag": None}
    assert r.outgoing == [ScheduleActivity(2, "Greet", '"ann"')]
    assert r.output is None and r.error is None and r.dropped_messages == 0


def test_activity_completion_completes_orchestration():
    sim = Sim({"hello": hello}).start("hello", "ann")
    sim.turn()
    sim.complete(2, "hi ann")
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == "hi ann!"
    assert r.output == '"hi ann!"'
    assert sim.kinds() == [
        ev.ORCHESTRATION_STARTED,
        ev.ACTIVITY_SCHEDULED,
        ev.ACTIVITY_COMPLETED,
        ev.ORCHESTRATION_COMPLETED,
    ]
    assert sim.event(3).source_event_id == 2
    assert sim.event(3).data == {"result": '"hi ann"'}
    assert sim.event(4).data == {"output": '"hi ann!"'}
    assert r.outgoing == []
    assert_replay_stable(sim)


def test_sequence_of_activities_passes_results_along():
    def seq(ctx, n):
        total = n
        for i in range(3):
            total = yield ctx.schedule_activity("Add", [total, i])
        return total

    sim = Sim({"seq": seq}).start("seq", 10)
    sim.turn()
    for _ in range(3):
        (eid,) = sim.open_activities()
        a, b = json.loads(sim.event(eid).data["input"])
        sim.complete(eid, a + b)
        r = sim.turn()
    assert r.status == "Completed" and output_of(r) == 13
    assert [json.loads(sim.event(i).data["input"]) for i in sim.scheduled()] == [[10, 0], [10, 1], [11, 2]]
    assert_replay_stable(sim)


def test_activity_failure_raises_inside_generator_and_can_be_caught():
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("Boom")
        except Exception as exc:  # noqa: BLE001
            recovered = yield ctx.schedule_activity("Fallback", str(exc))
            return {"caught": str(exc), "type": type(exc).__name__, "recovered": recovered}
        return "unreachable"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(2, "Activity 'Boom' call failed: ValueError: boom")
    r = sim.turn()
    assert r.status == "Running"
    assert sim.event(3).kind == ev.ACTIVITY_FAILED
    assert sim.event(3).data["details"] == {
        "category": "Application",
        "message": "Activity 'Boom' call failed: ValueError: boom",
        "kind": "ActivityFailed",
    }
    assert json.loads(sim.event(4).data["input"]) == "Activity 'Boom' call failed: ValueError: boom"
    sim.complete(4, "ok")
    r = sim.turn()
    assert r.status == "Completed"
    out = output_of(r)
    assert out["caught"] == "Activity 'Boom' call failed: ValueError: boom"
    assert out["recovered"] == "ok"
    assert out["type"] != "BaseException"
    assert_replay_stable(sim)


def test_uncaught_activity_failure_fails_with_its_message():
    sim = Sim({"hello": hello}).start("hello", "x")
    sim.turn()
    sim.fail(2, "Activity 'Greet' call failed: RuntimeError: nope")
    r = sim.turn()
    assert r.status == "Failed"
    assert r.error["category"] == "Application"
    assert error_message(r).startswith("Activity 'Greet' call failed: RuntimeError: nope")
    assert sim.kinds()[-2:] == [ev.ACTIVITY_FAILED, ev.ORCHESTRATION_FAILED]
    assert sim.history[-1].data["details"] == r.error
    assert_replay_stable(sim)


def test_uncaught_exception_fails_with_type_message_and_traceback():
    def orch(ctx, _):
        yield ctx.schedule_timer(0)
        raise KeyError("missing-thing")

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(2)
    r = sim.turn()
    assert r.status == "Failed"
    msg = error_message(r)
    assert msg.startswith("KeyError: 'missing-thing'")
    assert "Traceback" in msg and "orch" in msg
    assert r.error["category"] == "Application"
    assert_replay_stable(sim)


def test_exception_before_first_yield_fails_in_first_turn():
    def orch(ctx, _):
        raise ValueError("bad input")
        yield  # pragma: no cover

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.status == "Failed"
    assert error_message(r).startswith("ValueError: bad input")
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_FAILED]


def test_plain_function_handler_completes_at_once():
    def plain(ctx, inp):
        return {"echo": inp, "id": ctx.instance_id}

    sim = Sim({"plain": plain}, instance_id="p1").start("plain", [1, 2])
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == {"echo": [1, 2], "id": "p1"}
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_COMPLETED]
    assert_replay_stable(sim)


def test_plain_function_that_raises_fails():
    def plain(ctx, inp):
        raise RuntimeError("plain failure")

    r = Sim({"plain": plain}).start("plain").turn()
    assert r.status == "Failed"
    assert error_message(r).startswith("RuntimeError: plain failure")


def test_generator_returning_none_completes_with_null():
    def orch(ctx, _):
        yield ctx.schedule_timer(0)

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(2)
    r = sim.turn()
    assert r.status == "Completed" and r.output == "null"


def test_non_json_output_fails_clearly():
    def orch(ctx, _):
        yield ctx.schedule_timer(1)
        return {"when": object()}

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(2)
    r = sim.turn()
    assert r.status == "Failed"
    msg = error_message(r)
    assert msg.startswith("orchestration output value is not JSON-serializable")
    assert "object" in msg
    assert r.error["category"] == "Application"
    assert sim.kinds()[-1] == ev.ORCHESTRATION_FAILED


def test_nan_output_is_not_json():
    r = Sim({"o": lambda ctx, _: float("nan")}).start("o").turn()
    assert r.status == "Failed"
    assert "not JSON-serializable" in error_message(r)


def test_non_json_activity_input_raises_type_error_at_the_call():
    seen = {}

    def orch(ctx, _):
        try:
            ctx.schedule_activity("A", {1, 2})
        except TypeError as exc:
            seen["msg"] = str(exc)
        return (yield ctx.schedule_activity("A", "fine"))

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.status == "Running"
    assert seen["msg"].startswith("input of activity 'A': value is not JSON-serializable")
    assert "set" in seen["msg"]
    assert [sim.event(i).data["input"] for i in sim.scheduled()] == ['"fine"']


def test_uncaught_non_json_input_fails_the_orchestration():
    def orch(ctx, _):
        yield ctx.schedule_activity("A", object())

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Failed"
    assert error_message(r).startswith("TypeError: input of activity 'A': value is not JSON-serializable")


@pytest.mark.parametrize("bad", [5, "text", None, {"kind": "activity"}])
def test_yielding_a_non_task_fails_naming_what_was_yielded(bad):
    def orch(ctx, _):
        yield bad

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Failed"
    msg = error_message(r)
    assert msg.startswith(f"TypeError: orchestration yielded {bad!r} (type {type(bad).__name__}), which is not a task")


def test_yielding_a_non_task_is_catchable():
    def orch(ctx, _):
        try:
            yield 5
        except TypeError as exc:
            return f"caught: {exc}"

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Completed"
    assert output_of(r).startswith("caught: orchestration yielded 5 (type int)")


def test_unregistered_orchestration_commits_nothing():
    sim = Sim({"other": hello}).start("missing", 1)
    r = sim.turn()
    assert r.status == "Unregistered"
    assert r.unregistered == ("missing", None)
    assert r.new_events == [] and r.outgoing == []


def test_unregistered_version_on_replay_reports_the_recorded_version():
    sim = Sim({"o@2.0.0": hello}).start("o", "x")
    sim.turn()
    assert sim.event(1).data["version"] == "2.0.0"
    other = Sim({"o@1.0.0": hello})
    other.history = list(sim.history)
    r = other.replay()
    assert r.status == "Unregistered" and r.unregistered == ("o", "2.0.0")


def test_no_history_and_no_start_is_idle():
    sim = Sim({"hello": hello}).raise_event("x", 1)
    r = sim.turn()
    assert r.status == "Idle" and r.dropped_messages == 1 and r.new_events == []


def test_messages_to_a_terminal_instance_are_dropped():
    sim = Sim({"plain": lambda ctx, _: 1}).start("plain")
    sim.turn()
    sim.raise_event("e", 1).start("plain")
    r = sim.turn()
    assert r.status == "Idle" and r.dropped_messages == 2 and r.new_events == []


def test_second_start_for_a_running_instance_is_dropped():
    sim = Sim({"hello": hello}).start("hello", "a").start("hello", "b")
    r = sim.turn()
    assert r.dropped_messages == 1
    assert sim.event(1).data["input"] == '"a"'
    sim.start("hello", "c")
    r = sim.turn()
    assert r.status == "Running" and r.dropped_messages == 1 and r.new_events == []


def test_context_properties_and_versioned_start():
    seen = {}

    def orch(ctx, inp):
        seen.update(
            instance_id=ctx.instance_id,
            execution_id=ctx.execution_id,
            name=ctx.orchestration_name,
            version=ctx.orchestration_version,
            input=inp,
        )
        return None

    sim = Sim({"o@1.0.0": orch, "o@1.5.0": orch}, instance_id="props").start("o", {"a": [1]}, version="1.0.0")
    sim.turn()
    assert seen == {"instance_id": "props", "execution_id": 1, "name": "o", "version": "1.0.0", "input": {"a": [1]}}
    latest = Sim({"o@1.0.0": orch, "o@1.5.0": orch}).start("o")
    r = latest.turn()
    assert r.orchestration_version == "1.5.0" and seen["version"] == "1.5.0"


def test_is_replaying_is_true_only_for_steps_already_in_history(monkeypatch):
    monkeypatch.setattr(sim_module, "RESUME_CHECK", False)  # counts side effects of each run
    seen = []

    def orch(ctx, _):
        seen.append(("start", ctx.is_replaying()))
        yield ctx.schedule_activity("A")
        seen.append(("after A", ctx.is_replaying()))
        yield ctx.schedule_activity("B")
        seen.append(("after B", ctx.is_replaying()))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    assert seen == [("start", False)]
    seen.clear()
    sim.complete(2, 1)
    sim.turn()
    assert seen == [("start", True), ("after A", False)]


def test_traces_are_suppressed_while_replaying(caplog, monkeypatch):
    monkeypatch.setattr(sim_module, "RESUME_CHECK", False)  # counts side effects of each run

    def orch(ctx, _):
        ctx.trace_info("before")
        yield ctx.schedule_activity("A")
        ctx.trace_warn("after")

    sim = Sim({"o": orch}).start("o")
    with caplog.at_level("DEBUG", logger="duroxide_celery.orchestration"):
        sim.turn()
        sim.complete(2, None)
        sim.turn()
    assert [r.getMessage() for r in caplog.records] == ["before", "after"]


def test_history_event_json_round_trip():
    e = HistoryEvent(7, ev.ACTIVITY_COMPLETED, {"result": "1"}, 3, 99)
    assert HistoryEvent.from_json(json.loads(json.dumps(e.to_json()))) == e
    assert HistoryEvent.from_json({"event_id": 1, "kind": "X"}) == HistoryEvent(1, "X", {}, None, 0)


def test_loads_and_dumps_helpers():
    assert ev.dumps({"a": [1, None]}) == '{"a":[1,null]}'
    assert ev.loads(None) is None
    assert ev.loads("not json") == "not json"
    with pytest.raises(TypeError, match="not JSON-serializable"):
        ev.dumps(float("inf"))


def test_activity_session_and_tag_are_recorded_and_sent():
    def orch(ctx, _):
        a = yield ctx.schedule_activity_on_session("A", 1, "sess-1")
        b = yield ctx.schedule_activity("B", 2).with_tag("gpu")
        return [a, b]

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(2, "A", "1", "sess-1", None)]
    assert sim.event(2).data["session_id"] == "sess-1"
    sim.complete(2, "a")
    r = sim.turn()
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(4, "B", "2", None, "gpu")]
    assert sim.event(4).data["tag"] == "gpu"
    sim.complete(4, "b")
    assert output_of(sim.turn()) == ["a", "b"]
    assert_replay_stable(sim)


def test_argument_validation_errors():
    def orch(ctx, _):
        errors = []
        for call in (
            lambda: ctx.schedule_activity(""),
            lambda: ctx.schedule_activity("A", session_id=""),
            lambda: ctx.schedule_timer(-1),
            lambda: ctx.schedule_timer(True),
            lambda: ctx.wait_for_event(""),
            lambda: ctx.dequeue_event(None),
            lambda: ctx.schedule_activity("A").with_tag(""),
            lambda: ctx.schedule_activity("A").with_tag("x" * 257),
            lambda: ctx.schedule_activity_with_retry("A", 1, {"max_attempts": 0}),
            lambda: ctx.schedule_activity_with_retry("A", 1, "3 times"),
            lambda: ctx.set_custom_status(5),
        ):
            try:
                call()
            except (TypeError, ValueError) as exc:
                errors.append(type(exc).__name__)
        return errors
        yield  # pragma: no cover

    r = Sim({"o": orch}).start("o").turn()
    assert output_of(r) == ["ValueError"] * 8 + ["ValueError", "TypeError", "TypeError"]


def test_turn_input_is_not_mutated():
    sim = Sim({"hello": hello}).start("hello", "x")
    sim.turn()
    history = [HistoryEvent.from_json(e.to_json()) for e in sim.history]
    messages = [{"kind": ev.MSG_ACTIVITY_COMPLETED, "execution_id": 1, "event_id": 2, "result": '"y"'}]
    inp = TurnInput("inst", 1, history, messages, NOW_MS, lambda: "g")
    r = run_turn(inp, sim.resolve)
    assert r.status == "Completed"
    assert len(inp.history) == 2 and len(inp.messages) == 1
