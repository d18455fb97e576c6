"""schedule_activity_with_retry: attempts as separate activities, backoff as durable timers, per-attempt timeout
(semantics.md 2.14)."""

from __future__ import annotations

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import CancelActivity, CancelTimer, ScheduleActivity, ScheduleTimer
from duroxide_celery.replay.retry import backoff_delay_ms

from .sim import Sim, assert_replay_stable, error_message, outgoing_of, output_of


def with_retry(policy, session=None):
    def orch(ctx, inp):
        if session:
            return (yield ctx.schedule_activity_with_retry_on_session("Flaky", inp, policy, session))
        return (yield ctx.schedule_activity_with_retry("Flaky", inp, policy))

    return orch


def fail_current(sim, n):
    (eid,) = sim.open_activities()
    sim.fail(eid, f"Activity 'Flaky' call failed: RuntimeError: fail-{n}")
    return sim.turn()


def test_fixed_backoff_attempts_and_timers_then_last_error():
    sim = Sim({"o": with_retry({"max_attempts": 3, "backoff": "fixed"})}).start("o", {"x": 1})
    r = sim.turn()
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(2, "Flaky", '{"x":1}')]
    r = fail_current(sim, 1)
    assert r.status == "Running"
    assert [e.kind for e in r.new_events] == [ev.ACTIVITY_FAILED, ev.TIMER_CREATED]
    assert r.outgoing == [ScheduleTimer(4, sim.turn_clocks[-1] + 1000)]
    sim.fire(4)
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [ev.TIMER_FIRED, ev.ACTIVITY_SCHEDULED]
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(6, "Flaky", '{"x":1}')]
    fail_current(sim, 2)
    sim.fire(sim.timers()[-1])
    sim.turn()
    r = fail_current(sim, 3)
    assert r.status == "Failed"
    assert error_message(r).startswith("Activity 'Flaky' call failed: RuntimeError: fail-3")
    assert len(sim.scheduled("Flaky")) == 3 and len(sim.timers()) == 2
    assert_replay_stable(sim)


def test_success_on_a_later_attempt_returns_the_value():
    sim = Sim({"o": with_retry({"max_attempts": 5, "backoff": "none"})}).start("o", 7)
    sim.turn()
    r = fail_current(sim, 1)
    # no backoff: the next attempt is scheduled in the same turn, without a timer
    assert [e.kind for e in r.new_events] == [ev.ACTIVITY_FAILED, ev.ACTIVITY_SCHEDULED]
    (eid,) = sim.open_activities()
    sim.complete(eid, "finally")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == "finally"
    assert_replay_stable(sim)


@pytest.mark.parametrize(
    "backoff, delays",
    [
        ("exponential", [100, 200, 400]),
        (None, [100, 200, 400]),
        ("linear", [100, 200, 300]),
        ("whatever", [100, 200, 300]),
        ("fixed", [1000, 1000, 1000]),
        ({"kind": "exponential", "base_ms": 10, "multiplier": 3, "max_ms": 50}, [10, 30, 50]),
        ({"kind": "fixed", "delay_ms": 250}, [250, 250, 250]),
    ],
)
def test_backoff_timers_follow_the_policy(backoff, delays):
    policy = {"max_attempts": 4}
    if backoff is not None:
        policy["backoff"] = backoff
    sim = Sim({"o": with_retry(policy)}).start("o")
    sim.turn()
    seen = []
    for n in range(1, 4):
        r = fail_current(sim, n)
        (timer,) = outgoing_of(r, ScheduleTimer)
        seen.append(timer.fire_at_ms - sim.turn_clocks[-1])
        sim.fire(timer.event_id)
        sim.turn()
    assert seen == delays
    r = fail_current(sim, 4)
    assert r.status == "Failed" and error_message(r).startswith("Activity 'Flaky' call failed: RuntimeError: fail-4")


def test_default_policy_is_three_attempts():
    sim = Sim({"o": with_retry({})}).start("o")
    sim.turn()
    for n in (1, 2):
        r = fail_current(sim, n)
        sim.fire(outgoing_of(r, ScheduleTimer)[0].event_id)
        sim.turn()
    r = fail_current(sim, 3)
    assert r.status == "Failed" and len(sim.scheduled("Flaky")) == 3


def test_single_attempt_fails_at_once():
    sim = Sim({"o": with_retry({"max_attempts": 1})}).start("o")
    sim.turn()
    r = fail_current(sim, 1)
    assert r.status == "Failed" and sim.timers() == []


def test_retry_error_is_catchable():
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_with_retry("Flaky", None, {"max_attempts": 2, "backoff": "none"})
        except Exception as exc:  # noqa: BLE001
            return f"gave up: {exc}"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    fail_current(sim, 1)
    r = fail_current(sim, 2)
    assert output_of(r) == "gave up: Activity 'Flaky' call failed: RuntimeError: fail-2"


def test_timeout_races_each_attempt_and_is_not_retried():
    sim = Sim({"o": with_retry({"max_attempts": 3, "timeout_ms": 500})}).start("o")
    r = sim.turn()
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ACTIVITY_SCHEDULED, ev.TIMER_CREATED]
    assert outgoing_of(r, ScheduleTimer) == [ScheduleTimer(3, sim.turn_clocks[0] + 500)]
    sim.fire(3)
    r = sim.turn()
    assert r.status == "Failed"
    assert error_message(r).startswith("timeout: activity timed out")
    assert [e.kind for e in r.new_events] == [ev.TIMER_FIRED, ev.ACTIVITY_CANCEL_REQUESTED, ev.ORCHESTRATION_FAILED]
    assert r.new_events[1].source_event_id == 2
    assert r.outgoing == [CancelActivity(2)]
    assert len(sim.scheduled("Flaky")) == 1
    assert_replay_stable(sim)


def test_total_timeout_is_a_budget_that_bounds_the_attempt_and_is_catchable():
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_with_retry("Flaky", None, {"total_timeout_ms": 50})
        except Exception as exc:  # noqa: BLE001
            return str(exc)

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    (timer,) = sim.timers()
    assert sim.event(timer).data["fire_at_ms"] == sim.turn_clocks[0] + 50
    assert [e.data["name"] for e in sim.history if e.kind == ev.ACTIVITY_SCHEDULED][:2] == [
        ev.SYSCALL_UTC_NOW,
        ev.SYSCALL_UTC_NOW,
    ]
    sim.fire(timer)
    assert output_of(sim.turn()) == "timeout: retry budget of 50 ms exhausted"
    assert_replay_stable(sim)


def test_total_timeout_stops_retrying_when_the_next_attempt_cannot_fit():
    policy = {"max_attempts": 5, "total_timeout_ms": 1500, "backoff": "fixed"}  # fixed backoff: 1 s
    sim = Sim({"o": with_retry(policy)}).start("o")
    sim.turn()  # the sim clock moves 1 s per turn
    (first,) = [i for i in sim.scheduled("Flaky")]
    sim.fail(first, "fail-1")
    r = sim.turn()
    assert r.status == "Failed" and error_message(r).startswith("fail-1")
    assert len(sim.scheduled("Flaky")) == 1  # no second attempt: 1 s backoff would overrun the 0.5 s left
    assert_replay_stable(sim)


def test_attempt_that_beats_its_timeout_returns_value_and_cancels_the_timer():
    sim = Sim({"o": with_retry({"max_attempts": 3, "timeout_ms": 500, "backoff": "none"})}).start("o")
    sim.turn()
    sim.fail(2, "first attempt failed")
    r = sim.turn()
    # the failed attempt's timer is cancelled, the next attempt gets a new timer
    assert CancelTimer(3) in r.outgoing
    assert [e.kind for e in r.new_events] == [ev.ACTIVITY_FAILED, ev.ACTIVITY_SCHEDULED, ev.TIMER_CREATED]
    sim.complete(5, "ok")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == "ok"
    assert r.outgoing == [CancelTimer(6)]
    assert_replay_stable(sim)


@pytest.mark.parametrize("category", [ev.POISON, ev.CONFIGURATION, ev.INFRASTRUCTURE])
def test_non_application_failure_is_not_retried_nor_catchable(category):
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_with_retry("Flaky", None, {"max_attempts": 5, "backoff": "none"})
        except BaseException:  # noqa: BLE001
            return "caught"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(2, "poison: activity Flaky#2 exceeded 11 attempts (max 10)", category=category)
    r = sim.turn()
    assert r.status == "Failed"
    assert r.error["category"] == category
    assert error_message(r) == "poison: activity Flaky#2 exceeded 11 attempts (max 10)"
    assert len(sim.scheduled("Flaky")) == 1


def test_retry_on_session_pins_every_attempt():
    sim = Sim({"o": with_retry({"max_attempts": 2, "backoff": "none"}, session="s-1")}).start("o")
    r = sim.turn()
    assert outgoing_of(r, ScheduleActivity)[0].session_id == "s-1"
    r = fail_current(sim, 1)
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(4, "Flaky", "null", "s-1", None)]


def test_backoff_delay_helper():
    assert [backoff_delay_ms({}, n) for n in (1, 2, 3, 10)] == [100, 200, 400, 30000]
    assert [backoff_delay_ms({"backoff": "linear"}, n) for n in (1, 2, 400)] == [100, 200, 30000]
    assert backoff_delay_ms({"backoff": "fixed"}, 5) == 1000
    assert backoff_delay_ms({"backoff": "none"}, 5) == 0
    assert backoff_delay_ms({"backoff": {"kind": "linear", "base_ms": 7, "max_ms": 20}}, 3) == 20
