"""ctx.all and ctx.race over every kind of task (semantics.md 2.6, 2.7)."""

from __future__ import annotations

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import (
    CancelActivity,
    CancelInstance,
    CancelTimer,
    ScheduleActivity,
    ScheduleTimer,
    StartOrchestration,
)

from .sim import Sim, assert_replay_stable, error_message, outgoing_of, output_of

# -- all --------------------------------------------------------------------------------------------------------


def fan_out(ctx, items):
    results = yield ctx.all([ctx.schedule_activity("Square", i) for i in items])
    return results


def test_all_schedules_every_member_in_one_turn():
    sim = Sim({"f": fan_out}).start("f", [1, 2, 3])
    r = sim.turn()
    assert r.status == "Running"
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED] + [ev.ACTIVITY_SCHEDULED] * 3
    assert outgoing_of(r, ScheduleActivity) == [
        ScheduleActivity(2, "Square", "1"),
        ScheduleActivity(3, "Square", "2"),
        ScheduleActivity(4, "Square", "3"),
    ]


def test_all_partial_completions_keep_waiting_then_return_in_input_order():
    sim = Sim({"f": fan_out}).start("f", [1, 2, 3])
    sim.turn()
    sim.complete(4, 9)
    r = sim.turn()
    assert r.status == "Running"
    assert [e.kind for e in r.new_events] == [ev.ACTIVITY_COMPLETED]
    assert r.outgoing == []
    assert_replay_stable(sim)  # a partially completed all() replays without new actions
    sim.complete(2, 1)
    r = sim.turn()
    assert r.status == "Running" and r.outgoing == []
    sim.complete(3, 4)
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [{"ok": 1}, {"ok": 4}, {"ok": 9}]
    assert_replay_stable(sim)


def test_all_completions_in_one_batch():
    sim = Sim({"f": fan_out}).start("f", [1, 2])
    sim.turn()
    sim.complete(3, 4).complete(2, 1)
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [{"ok": 1}, {"ok": 4}]
    assert [e.source_event_id for e in r.new_events if e.kind == ev.ACTIVITY_COMPLETED] == [3, 2]


def test_all_never_raises_and_reports_errors_in_place():
    sim = Sim({"f": fan_out}).start("f", [1, 2, 3])
    sim.turn()
    sim.complete(2, 1).fail(3, "Activity 'Square' call failed: ValueError: two").complete(4, 9)
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [{"ok": 1}, {"err": "Activity 'Square' call failed: ValueError: two"}, {"ok": 9}]
    assert_replay_stable(sim)


def test_all_of_empty_list_is_empty_list():
    def orch(ctx, _):
        first = yield ctx.all([])
        second = yield ctx.schedule_activity("A")
        return [first, second]

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.status == "Running" and sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ACTIVITY_SCHEDULED]
    sim.complete(2, "a")
    assert output_of(sim.turn()) == [[], "a"]


def every_kind(ctx, _):
    return (
        yield ctx.all(
            [
                ctx.schedule_activity("A", 1),
                ctx.schedule_timer(50),
                ctx.wait_for_event("approve"),
                ctx.dequeue_event("jobs"),
                ctx.schedule_sub_orchestration("child", {"n": 1}),
            ]
        )
    )


def test_all_with_every_kind_of_task():
    sim = Sim({"o": every_kind}, instance_id="p").start("o")
    r = sim.turn()
    assert sim.kinds() == [
        ev.ORCHESTRATION_STARTED,
        ev.ACTIVITY_SCHEDULED,
        ev.TIMER_CREATED,
        ev.EXTERNAL_SUBSCRIBED,
        ev.QUEUE_SUBSCRIBED,
        ev.SUB_ORCHESTRATION_SCHEDULED,
    ]
    assert outgoing_of(r, ScheduleTimer) == [ScheduleTimer(3, sim.turn_clocks[0] + 50)]
    assert outgoing_of(r, StartOrchestration) == [StartOrchestration("p::sub::6", "child", '{"n":1}', None, "p", 1, 6)]
    sim.sub_completed(6, "child-out").enqueue("jobs", {"job": 7}).raise_event("approve", True)
    r = sim.turn()
    assert r.status == "Running"
    sim.fire(3).complete(2, "act")
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [{"ok": "act"}, {"ok": None}, {"ok": True}, {"ok": {"job": 7}}, {"ok": "child-out"}]
    assert_replay_stable(sim)


def test_all_with_failed_sub_orchestration_reports_err():
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_sub_orchestration("c"), ctx.schedule_timer(1)]))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.sub_failed(2, "child broke").fire(3)
    r = sim.turn()
    assert output_of(r) == [{"err": "child broke"}, {"ok": None}]


def test_all_with_non_application_failure_is_not_catchable():
    def orch(ctx, _):
        try:
            return (yield ctx.all([ctx.schedule_activity("A"), ctx.schedule_activity("Missing")]))
        except BaseException:  # noqa: BLE001 - nothing must reach user code
            return "caught"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(3, "poison: activity Missing#3 exceeded 4 attempts (max 3)", category=ev.POISON)
    r = sim.turn()
    assert r.status == "Failed"
    assert r.error["category"] == "Poison"
    assert error_message(r) == "poison: activity Missing#3 exceeded 4 attempts (max 3)"
    # the still-open member is cancelled as the instance ends
    assert sim.kinds()[-3:] == [ev.ACTIVITY_FAILED, ev.ACTIVITY_CANCEL_REQUESTED, ev.ORCHESTRATION_FAILED]
    assert sim.history[-2].source_event_id == 2
    assert r.outgoing == [CancelActivity(2)]
    assert_replay_stable(sim)


@pytest.mark.parametrize("outer", ["all", "race"])
@pytest.mark.parametrize("inner", ["all", "race"])
def test_nested_all_or_race_is_a_catchable_error(outer, inner):
    def orch(ctx, _):
        if inner == "all":
            nested = ctx.all([ctx.schedule_timer(1)])
        else:
            nested = ctx.race(ctx.schedule_timer(1), ctx.schedule_timer(2))
        try:
            if outer == "all":
                yield ctx.all([nested, ctx.schedule_timer(3)])
            else:
                yield ctx.race(nested, ctx.schedule_timer(3))
        except ValueError as exc:
            return str(exc)
        return "no error"

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.status == "Completed"
    expected_word = "join/select inside " + ("join" if outer == "all" else "select")  # duroxide's wording
    assert output_of(r) == f"nested {expected_word} is not supported"
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_COMPLETED]  # nothing was scheduled


def test_uncaught_nested_all_fails_the_orchestration():
    def orch(ctx, _):
        yield ctx.all([ctx.all([])])

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Failed"
    assert error_message(r).startswith("ValueError: nested join/select inside join is not supported")


def test_all_member_must_be_a_task():
    def orch(ctx, _):
        yield ctx.all([ctx.schedule_timer(1), 42])

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Failed"
    assert error_message(r).startswith("TypeError: all() takes tasks to wait on; got 42 (type int)")


def test_all_of_syscalls_is_rejected():
    def orch(ctx, _):
        yield ctx.all([ctx.utc_now()])

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Failed"
    assert "all() takes tasks to wait on" in error_message(r)


# -- race -------------------------------------------------------------------------------------------------------


def race_then_more(first, second):
    """race(first, second), then one more activity so the instance stays Running after the race."""

    def orch(ctx, _):
        won = yield ctx.race(first(ctx), second(ctx))
        after = yield ctx.schedule_activity("After", won)
        return after

    return orch


activity = lambda ctx: ctx.schedule_activity("Slow", "x")  # noqa: E731
timer = lambda ctx: ctx.schedule_timer(1000)  # noqa: E731
wait = lambda ctx: ctx.wait_for_event("go")  # noqa: E731
dequeue = lambda ctx: ctx.dequeue_event("q")  # noqa: E731
sub = lambda ctx: ctx.schedule_sub_orchestration("child", 1)  # noqa: E731


def test_race_activity_beats_timer_and_timer_loser_is_cancelled_without_event():
    sim = Sim({"o": race_then_more(activity, timer)}).start("o")
    r = sim.turn()
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ACTIVITY_SCHEDULED, ev.TIMER_CREATED]
    sim.complete(2, "fast")
    r = sim.turn()
    assert r.status == "Running"
    assert [e.kind for e in r.new_events] == [ev.ACTIVITY_COMPLETED, ev.ACTIVITY_SCHEDULED]
    assert sim.event(5).data["input"] == '{"index":0,"value":"fast"}'
    assert CancelTimer(3) in r.outgoing
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(5, "After", '{"index":0,"value":"fast"}')]
    sim.complete(5, "done")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == "done"
    assert_replay_stable(sim)


def test_race_timer_beats_activity_and_activity_loser_gets_cancel_breadcrumb():
    sim = Sim({"o": race_then_more(activity, timer)}).start("o")
    sim.turn()
    sim.fire(3)
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [ev.TIMER_FIRED, ev.ACTIVITY_CANCEL_REQUESTED, ev.ACTIVITY_SCHEDULED]
    cancel = r.new_events[1]
    assert cancel.source_event_id == 2 and cancel.data == {"reason": "dropped_future"}
    assert CancelActivity(2) in r.outgoing
    assert output_of(r) is None
    assert sim.event(6).data["input"] == '{"index":1,"value":null}'
    # the loser's late completion is dropped, not recorded
    sim.complete(2, "late")
    r = sim.turn()
    assert r.dropped_messages == 1 and r.new_events == []
    assert_replay_stable(sim)


def test_race_wait_loser_gets_breadcrumb_and_does_not_steal_later_events():
    def orch(ctx, _):
        first = yield ctx.race(ctx.wait_for_event("go"), ctx.schedule_timer(10))
        second = yield ctx.wait_for_event("go")
        return [first, second]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(3)
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [ev.TIMER_FIRED, ev.EXTERNAL_SUBSCRIBED_CANCELLED, ev.EXTERNAL_SUBSCRIBED]
    assert r.new_events[1].source_event_id == 2 and r.new_events[1].data == {"reason": "dropped_future"}
    assert r.outgoing == []
    sim.raise_event("go", "payload")
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [{"index": 1, "value": None}, "payload"]
    assert_replay_stable(sim)


def test_race_wait_wins():
    sim = Sim({"o": race_then_more(wait, timer)}).start("o")
    sim.turn()
    sim.raise_event("go", {"ok": 1})
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [ev.EXTERNAL_EVENT, ev.ACTIVITY_SCHEDULED]
    assert CancelTimer(3) in r.outgoing
    assert sim.event(5).data["input"] == '{"index":0,"value":{"ok":1}}'
    assert_replay_stable(sim)


def test_race_dequeue_loser_consumes_nothing():
    def orch(ctx, _):
        first = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
        second = yield ctx.dequeue_event("q")
        return [first, second]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(3)
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [ev.TIMER_FIRED, ev.QUEUE_SUBSCRIPTION_CANCELLED, ev.QUEUE_SUBSCRIBED]
    assert r.new_events[1].source_event_id == 2 and r.new_events[1].data == {"reason": "dropped_future"}
    sim.enqueue("q", "m1")
    r = sim.turn()
    assert output_of(r) == [{"index": 1, "value": None}, "m1"]
    assert_replay_stable(sim)


def test_race_dequeue_winner_value_is_decoded_once():
    sim = Sim({"o": race_then_more(dequeue, timer)}).start("o")
    sim.turn()
    sim.enqueue("q", {"a": "b"})
    sim.turn()
    assert sim.event(5).data["input"] == '{"index":0,"value":{"a":"b"}}'


def test_race_sub_orchestration_loser_is_cancelled_with_cancel_instance():
    sim = Sim({"o": race_then_more(sub, timer)}, instance_id="par").start("o")
    r = sim.turn()
    assert outgoing_of(r, StartOrchestration) == [StartOrchestration("par::sub::2", "child", "1", None, "par", 1, 2)]
    sim.fire(3)
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [
        ev.TIMER_FIRED,
        ev.SUB_ORCHESTRATION_CANCEL_REQUESTED,
        ev.ACTIVITY_SCHEDULED,
    ]
    assert r.new_events[1].source_event_id == 2 and r.new_events[1].data == {"reason": "dropped_future"}
    assert outgoing_of(r, CancelInstance) == [CancelInstance("par::sub::2", "parent dropped sub-orchestration future")]
    sim.sub_completed(2, "too late")
    r = sim.turn()
    assert r.dropped_messages == 1 and r.new_events == []
    assert_replay_stable(sim)


def test_race_sub_orchestration_wins():
    sim = Sim({"o": race_then_more(sub, timer)}).start("o")
    sim.turn()
    sim.sub_completed(2, [1, 2])
    r = sim.turn()
    assert CancelTimer(3) in r.outgoing
    assert sim.event(5).data["input"] == '{"index":0,"value":[1,2]}'


@pytest.mark.parametrize(
    "loser, breadcrumb",
    [
        (activity, ev.ACTIVITY_CANCEL_REQUESTED),
        (wait, ev.EXTERNAL_SUBSCRIBED_CANCELLED),
        (dequeue, ev.QUEUE_SUBSCRIPTION_CANCELLED),
        (sub, ev.SUB_ORCHESTRATION_CANCEL_REQUESTED),
    ],
)
def test_race_loser_in_second_position(loser, breadcrumb):
    sim = Sim({"o": race_then_more(timer, loser)}).start("o")
    sim.turn()
    sim.fire(2)
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [ev.TIMER_FIRED, breadcrumb, ev.ACTIVITY_SCHEDULED]
    assert r.new_events[1].source_event_id == 3
    assert sim.event(6).data["input"] == '{"index":0,"value":null}'
    assert_replay_stable(sim)


def test_race_first_arrival_wins_regardless_of_argument_order():
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("A"), ctx.schedule_activity("B")))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.complete(3, "b").complete(2, "a")  # both in one batch; B's arrives first
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == {"index": 1, "value": "b"}
    # A already completed in history, yet it lost: it still gets its cancel breadcrumb
    assert [e.kind for e in r.new_events] == [
        ev.ACTIVITY_COMPLETED,
        ev.ACTIVITY_COMPLETED,
        ev.ACTIVITY_CANCEL_REQUESTED,
        ev.ORCHESTRATION_COMPLETED,
    ]
    assert_replay_stable(sim)


def test_failed_race_winner_raises():
    def orch(ctx, _):
        try:
            yield ctx.race(ctx.schedule_activity("A"), ctx.schedule_timer(100))
        except Exception as exc:  # noqa: BLE001
            return f"caught: {exc}"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(2, "Activity 'A' call failed: ValueError: x")
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == "caught: Activity 'A' call failed: ValueError: x"
    assert CancelTimer(3) in r.outgoing
    assert_replay_stable(sim)


def test_uncaught_failed_race_winner_fails_the_orchestration():
    def orch(ctx, _):
        yield ctx.race(ctx.schedule_sub_orchestration("c"), ctx.schedule_timer(100))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.sub_failed(2, "child exploded")
    r = sim.turn()
    assert r.status == "Failed"
    assert error_message(r).startswith("child exploded\n")


@pytest.mark.parametrize("as_list", [False, True])
def test_race_with_three_tasks_fails(as_list):
    def orch(ctx, _):
        tasks = [ctx.schedule_timer(1), ctx.schedule_timer(2), ctx.schedule_timer(3)]
        yield (ctx.race(tasks) if as_list else ctx.race(*tasks))

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Failed"
    assert "select currently supports exactly 2 tasks" in error_message(r)  # duroxide's wording, kept
    assert error_message(r).startswith("ValueError: race takes exactly 2 tasks, got 3")
    assert r.new_events[-1].kind == ev.ORCHESTRATION_FAILED
    assert [e.kind for e in r.new_events] == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_FAILED]


def test_race_with_one_task_fails_and_is_catchable():
    def orch(ctx, _):
        try:
            yield ctx.race(ctx.schedule_timer(1))
        except ValueError as exc:
            return str(exc)

    r = Sim({"o": orch}).start("o").turn()
    assert output_of(r) == "race takes exactly 2 tasks, got 1 (select currently supports exactly 2 tasks)"


def test_race_with_no_task_fails_saying_so():
    def orch(ctx, _):
        yield ctx.race()

    r = Sim({"o": orch}).start("o").turn()
    assert error_message(r).startswith("ValueError: race takes exactly 2 tasks, got 0")


def test_retry_activity_cannot_be_a_race_member():
    def orch(ctx, _):
        try:
            yield ctx.race(ctx.schedule_activity_with_retry("A", 1, {"max_attempts": 2}), ctx.schedule_timer(1))
        except ValueError as exc:
            return str(exc)

    r = Sim({"o": orch}).start("o").turn()
    assert output_of(r) == "an activity with a retry policy cannot be a member of race"


def test_race_of_two_buffered_dequeues_picks_first_and_loses_no_message():
    def orch(ctx, _):
        yield ctx.schedule_timer(1)  # let both messages arrive before the race
        won = yield ctx.race(ctx.dequeue_event("a"), ctx.dequeue_event("b"))
        rest = yield ctx.dequeue_event("b")
        return [won, rest]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.enqueue("a", "A1").enqueue("b", "B1").fire(2)
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [{"index": 0, "value": "A1"}, "B1"]
    # the ready-but-losing dequeue gets its breadcrumb and hands its message back
    assert [e.kind for e in r.new_events] == [
        ev.QUEUE_EVENT_DELIVERED,
        ev.QUEUE_EVENT_DELIVERED,
        ev.TIMER_FIRED,
        ev.QUEUE_SUBSCRIBED,
        ev.QUEUE_SUBSCRIBED,
        ev.QUEUE_SUBSCRIPTION_CANCELLED,
        ev.QUEUE_SUBSCRIBED,
        ev.ORCHESTRATION_COMPLETED,
    ]
    cancelled = [e for e in sim.history if e.kind == ev.QUEUE_SUBSCRIPTION_CANCELLED]
    assert [(e.source_event_id, e.data) for e in cancelled] == [
        (sim.ids(ev.QUEUE_SUBSCRIBED, name="b")[0], {"reason": "dropped_future"})
    ]
    assert_replay_stable(sim)


def test_race_of_two_buffered_dequeues_on_one_queue_keeps_fifo_order():
    def orch(ctx, _):
        yield ctx.schedule_timer(1)
        won = yield ctx.race(ctx.dequeue_event("q"), ctx.dequeue_event("q"))
        rest = [(yield ctx.dequeue_event("q")), (yield ctx.dequeue_event("q"))]
        return [won, rest]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.enqueue("q", 1).enqueue("q", 2).enqueue("q", 3).fire(2)
    r = sim.turn()
    assert output_of(r) == [{"index": 0, "value": 1}, [2, 3]]
    assert_replay_stable(sim)


def test_timer_loser_cancel_is_sent_once_not_on_every_later_turn():
    def orch(ctx, _):
        yield ctx.race(ctx.schedule_activity("A"), ctx.schedule_timer(1000))
        yield ctx.schedule_activity("B")
        yield ctx.schedule_activity("C")

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.complete(2, None)
    assert sim.turn().outgoing == [CancelTimer(3), ScheduleActivity(5, "B", "null")]
    sim.complete(5, None)
    assert sim.turn().outgoing == [ScheduleActivity(7, "C", "null")]
    assert sim.replay().outgoing == []


def test_race_of_two_timers_first_fired_wins():
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_timer(100), ctx.schedule_timer(50)))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(3)
    r = sim.turn()
    assert output_of(r) == {"index": 1, "value": None}
    assert r.outgoing == [CancelTimer(2)]
