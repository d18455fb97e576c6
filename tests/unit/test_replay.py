"""Replay: re-running turns, message filtering, and nondeterminism detection (semantics.md 2.1, 2.2)."""

from __future__ import annotations

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.events import HistoryEvent

from .sim import Sim, assert_replay_stable, make_resolver, output_of, result_summary


def two_step(ctx, inp):
    a = yield ctx.schedule_activity("A", inp)
    b = yield ctx.schedule_activity("B", a)
    return [a, b]


# -- replay with and without completions ------------------------------------------------------------------------


def test_replay_without_new_messages_adds_nothing():
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    for _ in range(3):
        r = sim.replay()
        assert r.status == "Running" and r.new_events == [] and r.outgoing == [] and r.dropped_messages == 0


def test_replay_with_completions_in_history_reaches_the_same_point():
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.complete(2, "a")
    sim.turn()
    r = sim.replay()
    assert r.status == "Running" and r.new_events == [] and r.outgoing == []
    assert sim.kinds() == [
        ev.ORCHESTRATION_STARTED,
        ev.ACTIVITY_SCHEDULED,
        ev.ACTIVITY_COMPLETED,
        ev.ACTIVITY_SCHEDULED,
    ]


def test_rerunning_a_turn_from_the_same_history_and_messages_is_identical():
    """A crash after computing a turn but before committing it: the retry computes exactly the same turn."""
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.complete(2, "a")
    first = sim.turn()
    again = sim.rerun_last_turn()
    assert result_summary(again) == result_summary(first)
    sim.complete(4, "b")
    done = sim.turn()
    assert result_summary(sim.rerun_last_turn()) == result_summary(done)
    assert output_of(done) == ["a", "b"]
    assert_replay_stable(sim)


def test_replay_of_a_terminal_history_is_idle():
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.complete(2, "a")
    sim.turn()
    sim.complete(4, "b")
    sim.turn()
    r = sim.replay()
    assert r.status == "Idle" and r.new_events == []


def test_history_round_trips_through_json_and_still_replays():
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.complete(2, {"deep": [1, {"x": None}]})
    sim.turn()
    restored = [HistoryEvent.from_json(e.to_json()) for e in sim.history]
    r = sim.replay(history=restored)
    assert r.status == "Running" and r.new_events == []


# -- filtering of duplicate and stale messages ------------------------------------------------------------------


def test_duplicate_completion_in_one_batch_is_recorded_once():
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.complete(2, "a").complete(2, "a-again")
    r = sim.turn()
    assert r.dropped_messages == 1
    assert [e.kind for e in r.new_events] == [ev.ACTIVITY_COMPLETED, ev.ACTIVITY_SCHEDULED]
    assert r.new_events[0].data == {"result": '"a"'}


def test_duplicate_completion_in_a_later_turn_is_dropped():
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.complete(2, "a")
    sim.turn()
    sim.complete(2, "a").fail(2, "late failure")
    r = sim.turn()
    assert r.status == "Running" and r.dropped_messages == 2 and r.new_events == [] and r.outgoing == []


@pytest.mark.parametrize("execution_id", [0, 2, None])
def test_completion_for_another_execution_is_dropped(execution_id):
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.send({"kind": ev.MSG_ACTIVITY_COMPLETED, "execution_id": execution_id, "event_id": 2, "result": "1"})
    r = sim.turn()
    assert r.dropped_messages == 1 and r.new_events == []


def test_completion_for_unknown_or_wrong_kind_of_schedule_is_dropped():
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("A"), ctx.schedule_timer(10)]))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.complete(99, "x")  # no such event
    sim.complete(3, "x")  # event 3 is a timer, not an activity
    sim.fire(2)  # event 2 is an activity, not a timer
    sim.sub_completed(2, "x")  # ... nor a sub-orchestration
    sim.complete(1, "x")  # the OrchestrationStarted event
    r = sim.turn()
    assert r.dropped_messages == 5 and r.new_events == []
    sim.complete(2, "a").fire(3)
    assert output_of(sim.turn()) == [{"ok": "a"}, {"ok": None}]


def test_completion_of_a_cancelled_activity_is_dropped():
    def orch(ctx, _):
        yield ctx.race(ctx.schedule_activity("A"), ctx.schedule_timer(1))
        return (yield ctx.wait_for_event("never"))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(3)
    sim.turn()
    sim.fail(2, "too late")
    r = sim.turn()
    assert r.dropped_messages == 1 and r.new_events == []


def test_unknown_message_kind_is_dropped():
    sim = Sim({"o": two_step}).start("o", 1)
    sim.turn()
    sim.send({"kind": "SomethingElse"})
    r = sim.turn()
    assert r.dropped_messages == 1 and r.new_events == []


# -- nondeterminism ---------------------------------------------------------------------------------------------


def record(code, steps):
    """Run `code` through `steps` (callables that enqueue messages on the sim after each turn)."""
    sim = Sim({"o": code}).start("o", 1)
    sim.turn()
    for step in steps:
        step(sim)
        sim.turn()
    return sim


def replay_with(sim, code, messages=()):
    sim.resolve = make_resolver({"o": code})
    return sim.replay(messages)


def assert_nondeterministic(result, *fragments):
    assert result.status == "Failed", result.status
    assert result.error["category"] == "Configuration"
    assert result.error.get("kind") == "Nondeterminism"
    msg = result.error["message"]
    assert msg.startswith("nondeterministic: "), msg
    for fragment in fragments:
        assert fragment in msg, msg
    assert result.new_events[-1].kind == ev.ORCHESTRATION_FAILED
    assert result.new_events[-1].data["details"] == result.error


def a_then_b(ctx, _):
    yield ctx.schedule_activity("A", 1)
    yield ctx.schedule_activity("B", 2)
    return "ok"


def test_activity_swapped_for_a_timer():
    def changed(ctx, _):
        yield ctx.schedule_activity("A", 1)
        yield ctx.schedule_timer(5)

    sim = record(a_then_b, [lambda s: s.complete(2, None)])
    r = replay_with(sim, changed)
    assert_nondeterministic(r, "schedule mismatch", "action=TimerCreated{}", "vs event=ActivityScheduled#4", "'B'")


def test_wrong_activity_name():
    def changed(ctx, _):
        yield ctx.schedule_activity("A", 1)
        yield ctx.schedule_activity("C", 2)

    sim = record(a_then_b, [lambda s: s.complete(2, None)])
    r = replay_with(
        sim, changed, [{"kind": ev.MSG_ACTIVITY_COMPLETED, "execution_id": 1, "event_id": 4, "result": "null"}]
    )
    assert_nondeterministic(
        r,
        "schedule mismatch: action=ActivityScheduled{name: 'C', input: '2', session_id: None, tag: None}",
        "vs event=ActivityScheduled#4{name: 'B', input: '2'}",
    )


def test_wrong_activity_input():
    def changed(ctx, _):
        yield ctx.schedule_activity("A", 999)

    sim = record(a_then_b, [])
    r = replay_with(sim, changed)
    assert_nondeterministic(r, "input: '999'", "ActivityScheduled#2{name: 'A', input: '1'}")


@pytest.mark.parametrize(
    "change",
    [
        lambda ctx: ctx.schedule_activity_on_session("A", 1, "s1"),
        lambda ctx: ctx.schedule_activity("A", 1).with_tag("gpu"),
    ],
    ids=["session", "tag"],
)
def test_session_and_tag_are_compared(change):
    def changed(ctx, _):
        yield change(ctx)

    sim = record(a_then_b, [])
    assert_nondeterministic(replay_with(sim, changed), "schedule mismatch")


def test_extra_schedule_in_the_middle():
    def changed(ctx, _):
        yield ctx.schedule_activity("A", 1)
        yield ctx.schedule_activity("Extra", 0)
        yield ctx.schedule_activity("B", 2)
        return "ok"

    sim = record(a_then_b, [lambda s: s.complete(2, None), lambda s: s.complete(4, None)])
    assert sim.last.status == "Completed"
    # replay the last turn (B's completion) against the changed code
    sim.resolve = make_resolver({"o": changed})
    r = sim.replay(sim.turn_messages[-1], history=sim.history[: sim.turn_starts[-1]])
    assert_nondeterministic(r, "name: 'Extra'", "ActivityScheduled#4{name: 'B'")


def test_missing_schedule_in_the_middle():
    def a_b_c(ctx, _):
        for name in "ABC":
            yield ctx.schedule_activity(name, 1)

    def changed(ctx, _):
        yield ctx.schedule_activity("A", 1)
        yield ctx.schedule_activity("C", 1)

    sim = record(a_b_c, [lambda s: s.complete(2, None), lambda s: s.complete(4, None)])
    assert_nondeterministic(replay_with(sim, changed), "name: 'C'", "vs event=ActivityScheduled#4{name: 'B'")


def test_missing_schedule_at_the_end():
    def changed(ctx, _):
        yield ctx.schedule_activity("A", 1)
        return "early"

    sim = record(a_then_b, [lambda s: s.complete(2, None)])
    assert_nondeterministic(
        replay_with(sim, changed),
        "history has 1 more scheduled event(s) than the orchestration produced; "
        "next unmatched: ActivityScheduled#4{name: 'B'",
    )


def test_missing_schedule_while_blocked():
    def changed(ctx, _):
        yield ctx.schedule_activity("A", 1)
        yield ctx.wait_for_event("x")  # blocks; but history already has B scheduled here

    sim = record(a_then_b, [lambda s: s.complete(2, None)])
    assert_nondeterministic(replay_with(sim, changed), "action=ExternalSubscribed{name: 'x'}")


def test_completion_of_a_schedule_the_code_no_longer_makes():
    def both(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("A"), ctx.schedule_activity("B")]))

    def only_a(ctx, _):
        return (yield ctx.schedule_activity("A"))

    sim = record(both, [lambda s: s.complete(3, "b")])
    assert_nondeterministic(
        replay_with(sim, only_a), "ActivityCompleted#4{result: '\"b\"'} completes event 3, which the orchestration"
    )


def test_dropped_future_breadcrumb_no_longer_reproduced():
    def raced(ctx, _):
        yield ctx.race(ctx.schedule_activity("A"), ctx.schedule_timer(1))
        yield ctx.wait_for_event("x")

    def joined(ctx, _):
        yield ctx.all([ctx.schedule_activity("A"), ctx.schedule_timer(1)])

    sim = record(raced, [lambda s: s.fire(3)])
    assert sim.ids(ev.ACTIVITY_CANCEL_REQUESTED) == [5]
    assert_nondeterministic(replay_with(sim, joined), "next unmatched: ActivityCancelRequested#5")


@pytest.mark.parametrize(
    "original, changed, fragment",
    [
        (lambda c: c.wait_for_event("a"), lambda c: c.wait_for_event("b"), "ExternalSubscribed{name: 'b'}"),
        (lambda c: c.dequeue_event("a"), lambda c: c.dequeue_event("b"), "QueueSubscribed{name: 'b'}"),
        (lambda c: c.wait_for_event("a"), lambda c: c.dequeue_event("a"), "QueueSubscribed{name: 'a'}"),
        (
            lambda c: c.schedule_sub_orchestration("child", 1),
            lambda c: c.schedule_sub_orchestration("child", 2),
            "SubOrchestrationScheduled{name: 'child', input: '2'}",
        ),
        (
            lambda c: c.schedule_sub_orchestration("child", 1),
            lambda c: c.schedule_sub_orchestration("other", 1),
            "name: 'other'",
        ),
        (
            lambda c: c.start_orchestration("w", "id-1"),
            lambda c: c.start_orchestration("w", "id-2"),
            "OrchestrationChained{name: 'w', instance: 'id-2', input: 'null'}",
        ),
        (lambda c: c.utc_now(), lambda c: c.new_guid(), "name: '__duroxide_syscall:new_guid'"),
    ],
)
def test_other_schedule_mismatches(original, changed, fragment):
    def v1(ctx, _):
        yield original(ctx)
        yield ctx.wait_for_event("hold")

    def v2(ctx, _):
        yield changed(ctx)
        yield ctx.wait_for_event("hold")

    sim = record(v1, [])
    assert sim.last.status == "Running"
    assert_nondeterministic(replay_with(sim, v2), fragment)


def test_kv_set_value_and_key_are_compared():
    def v1(ctx, _):
        ctx.set_kv_value("k", "1")
        yield ctx.wait_for_event("hold")

    def v2(ctx, _):
        ctx.set_kv_value("k", "2")
        yield ctx.wait_for_event("hold")

    sim = record(v1, [])
    assert_nondeterministic(replay_with(sim, v2), "KeyValueSet{key: 'k', value: '2'}", "KeyValueSet#2")


def test_nondeterminism_inside_fire_and_forget_is_not_catchable():
    def v1(ctx, _):
        ctx.set_custom_status("s")
        yield ctx.wait_for_event("hold")

    def v2(ctx, _):
        try:
            ctx.clear_kv_value("k")  # new in v2: history has CustomStatusUpdated here
        except:  # noqa: E722 - a bare except must not swallow the mismatch
            pass
        yield ctx.wait_for_event("hold")

    sim = record(v1, [])
    assert_nondeterministic(replay_with(sim, v2), "KeyValueCleared{key: 'k'}", "CustomStatusUpdated#2")


def test_swallowed_mismatch_is_not_tolerated_even_if_the_code_then_matches():
    def v1(ctx, _):
        ctx.set_custom_status("s")
        yield ctx.wait_for_event("hold")

    def v2(ctx, _):
        try:
            ctx.set_kv_value("k", "v")  # inserted in v2
        except BaseException:  # noqa: BLE001
            pass
        ctx.set_custom_status("s")  # ... after which v2 matches history again
        yield ctx.wait_for_event("hold")

    def plain_v2(ctx, _):
        try:
            ctx.set_kv_value("k", "v")
        except BaseException:  # noqa: BLE001
            pass
        return "done"

    sim = record(v1, [])
    assert_nondeterministic(replay_with(sim, v2), "KeyValueSet{key: 'k', value: 'v'}")
    assert_nondeterministic(replay_with(sim, plain_v2), "KeyValueSet{key: 'k', value: 'v'}")


# -- what replay tolerates --------------------------------------------------------------------------------------


def test_timer_delay_and_custom_status_value_are_not_compared():
    def v1(ctx, _):
        ctx.set_custom_status("one")
        yield ctx.schedule_timer(100)
        yield ctx.wait_for_event("hold")

    def v2(ctx, _):
        ctx.set_custom_status("two")
        yield ctx.schedule_timer(5000)
        yield ctx.wait_for_event("hold")

    sim = record(v1, [lambda s: s.fire(3)])
    r = replay_with(sim, v2)
    assert r.status == "Running" and r.new_events == []


def test_appending_after_the_end_of_history_is_fine():
    def v1(ctx, _):
        yield ctx.schedule_activity("A", 1)
        return "v1"

    def v2(ctx, _):
        yield ctx.schedule_activity("A", 1)
        yield ctx.schedule_activity("New", 2)
        return "v2"

    sim = record(v1, [])
    sim.resolve = make_resolver({"o": v2})
    sim.complete(2, None)
    r = sim.turn()
    assert r.status == "Running" and [e.kind for e in r.new_events] == [ev.ACTIVITY_COMPLETED, ev.ACTIVITY_SCHEDULED]


def test_sub_orchestration_instance_and_version_are_not_compared():
    def v1(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("child", "id-a", 1))

    def v2(ctx, _):
        return (yield ctx.schedule_sub_orchestration_versioned_with_id("child", "9.9.9", "id-b", 1))

    sim = record(v1, [])
    sim.resolve = make_resolver({"o": v2})
    sim.sub_completed(2, "r")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == "r"
