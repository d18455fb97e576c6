"""Flow control without services: the admission plan (who gets the free slots, providers/flow.py), and the key and
priority of an activity (checked at the call, recorded in history, the key part of the determinism check)."""

from __future__ import annotations

import pytest

from duroxide_celery.providers.flow import ActivityLimit, HeldActivity, parse_rate, plan_admissions
from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import ScheduleActivity
from duroxide_celery.replay.yieldables import ActivityTask

from .sim import Sim, make_resolver, outgoing_of


def plan(free=None, key_limit=None, running=None, waiting=None, last_turn=None, key_room=None):
    return plan_admissions(
        free=free,
        key_limit=key_limit,
        running=running or {},
        waiting=waiting or {},
        last_turn=last_turn or {},
        key_room=key_room,
    )


def test_slots_alternate_between_keys_with_waiting_work():
    # busy got the last slot (turn 7): the quiet key, never served, goes first, then they take turns.
    assert plan(free=4, waiting={"busy": (20, 100), "quiet": (2, 500)}, last_turn={"busy": 7}) == [
        "quiet",
        "busy",
        "quiet",
        "busy",
    ]


def test_a_slot_goes_to_the_key_served_least_recently_then_to_the_oldest_work():
    waiting = {"a": (1, 300), "b": (1, 100), "c": (1, 200), "d": (1, 50)}
    assert plan(free=2, waiting=waiting, last_turn={"a": 1, "d": 9}) == ["b", "c"]  # never served: oldest first
    assert plan(free=4, waiting=waiting, last_turn={"a": 1, "d": 9}) == ["b", "c", "a", "d"]


def test_key_limit_caps_each_key_counting_what_already_runs():
    waiting = {"a": (5, 1), "b": (5, 2)}
    assert plan(key_limit=2, running={"a": 1}, waiting=waiting) == ["a", "b", "b"]
    assert plan(free=1, key_limit=2, running={"a": 2, "b": 2}, waiting=waiting) == []


def test_no_free_slot_or_no_waiting_work_admits_nothing_and_no_limit_admits_everything():
    assert plan(free=0, waiting={"a": (3, 1)}) == []
    assert plan(free=5, waiting={}) == []
    assert plan(waiting={"a": (2, 1), "b": (1, 2)}) == ["a", "b", "a"]


def test_a_key_rate_caps_what_each_key_may_take_now():
    waiting = {"a": (5, 1), "b": (5, 2), "c": (1, 3)}
    assert plan(free=6, waiting=waiting, key_room={"a": 2, "b": 0, "c": 1}) == ["a", "c", "a"]


def test_rates_are_parsed_and_bad_ones_refused():
    assert (
        parse_rate("10/s") == (10, 1000) and parse_rate(" 5 / m ") == (5, 60_000) and parse_rate("1/h")[1] == 3_600_000
    )
    for bad in ("10", "10/d", "-1/s", "1.5/s", "/s"):
        with pytest.raises(ValueError, match="must read 'N/s', 'N/m' or 'N/h'"):
            parse_rate(bad)
    with pytest.raises(ValueError, match="from 1 to 100000"):
        parse_rate("100001/s")
    with pytest.raises(TypeError, match="string like '10/s'"):
        parse_rate(10)
    assert ActivityLimit("A", 2, None, (10, 1000), (1, 60_000)).describe() == "A(limit=2, rate='10/s', key_rate='1/m')"


def test_held_work_says_which_limit_holds_it():
    held = HeldActivity("i", 1, 2, "CallApi", "tenant:42", 0, 0, ActivityLimit("CallApi", 2, 1).describe())
    assert held.reason == "held by limit CallApi(limit=2, key_limit=1) for key 'tenant:42'"
    assert ActivityLimit("CallApi", key_limit=3).describe() == "CallApi(key_limit=3)"


@pytest.mark.parametrize(
    ("key", "error", "text"),
    [
        ("", ValueError, "must not be empty"),
        (42, TypeError, "must be a str, got int"),
        ("a\x00b", ValueError, "must not contain NUL"),
        ("k" * 257, ValueError, "is 257 characters; the limit is 256"),
    ],
)
def test_bad_keys_are_refused_at_the_call(key, error, text):
    with pytest.raises(error, match=text):
        ActivityTask("A", "null").with_key(key)


@pytest.mark.parametrize(
    ("priority", "error", "text"),
    [(10, ValueError, "from 0 to 9, got 10"), (-1, ValueError, "got -1"), (True, TypeError, "an int from 0 to 9")],
)
def test_bad_priorities_are_refused_at_the_call(priority, error, text):
    with pytest.raises(error, match=text):
        ActivityTask("A", "null").with_priority(priority)


def keyed(ctx, _):
    a = yield ctx.schedule_activity("Call", 1).with_key("tenant:42").with_priority(7)
    b = yield ctx.schedule_activity("Call", 2)
    return [a, b]


def test_key_and_priority_are_recorded_in_history_and_sent_with_the_work():
    sim = Sim({"o": keyed}).start("o")
    result = sim.turn()
    assert sim.event(2).kind == ev.ACTIVITY_SCHEDULED
    assert sim.event(2).data["key"] == "tenant:42" and sim.event(2).data["priority"] == 7
    [work] = outgoing_of(result, ScheduleActivity)
    assert (work.key, work.priority) == ("tenant:42", 7)
    sim.complete(2, "x")
    sim.turn()
    assert "key" not in sim.event(4).data and "priority" not in sim.event(4).data  # unset: not recorded


def test_a_changed_key_is_nondeterminism_and_a_changed_priority_is_not():
    sim = Sim({"o": keyed}).start("o")
    sim.turn()

    def other_key(ctx, _):
        a = yield ctx.schedule_activity("Call", 1).with_key("tenant:43").with_priority(7)
        return a

    def other_priority(ctx, _):
        a = yield ctx.schedule_activity("Call", 1).with_key("tenant:42").with_priority(1)
        b = yield ctx.schedule_activity("Call", 2)
        return [a, b]

    sim.resolve = make_resolver({"o": other_key})
    result = sim.replay()
    assert result.status == "Failed" and "key: 'tenant:43'" in result.error["message"]
    sim.resolve = make_resolver({"o": other_priority})
    assert sim.replay().status == "Running"
