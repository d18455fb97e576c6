"""Deterministic helpers (utc_now, new_guid, cross-instance KV read), custom status and KV (semantics.md 2.15,
2.16, 2.22)."""

from __future__ import annotations

import re

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import ScheduleActivity, TurnInput
from duroxide_celery.replay.engine import run_turn
from tests.unit import sim as sim_module

from .sim import NOW_MS, Sim, assert_replay_stable, error_message, outgoing_of, output_of

# -- deterministic helpers --------------------------------------------------------------------------------------


def clocked(ctx, _):
    t1 = yield ctx.utc_now()
    g1 = yield ctx.new_guid()
    yield ctx.schedule_activity("Wait")
    t2 = yield ctx.utc_now()
    return {"t1": t1, "g1": g1, "t2": t2}


def test_utc_now_and_new_guid_are_recorded_as_syscall_pairs_within_the_turn():
    sim = Sim({"c": clocked}).start("c")
    r = sim.turn()
    assert sim.kinds() == [
        ev.ORCHESTRATION_STARTED,
        ev.ACTIVITY_SCHEDULED,
        ev.ACTIVITY_COMPLETED,
        ev.ACTIVITY_SCHEDULED,
        ev.ACTIVITY_COMPLETED,
        ev.ACTIVITY_SCHEDULED,
    ]
    assert sim.event(2).data == {"name": "__duroxide_syscall:utc_now_ms", "input": ""}
    assert sim.event(3).source_event_id == 2 and sim.event(3).data == {"result": str(NOW_MS)}
    assert sim.event(4).data == {"name": "__duroxide_syscall:new_guid", "input": ""}
    guid = ev.loads(sim.event(5).data["result"])
    assert isinstance(guid, str) and len(guid) == 36
    # syscalls are answered in the turn: no worker message for them
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(6, "Wait", "null")]


def test_syscall_values_replay_identically_on_later_turns():
    sim = Sim({"c": clocked}).start("c")
    sim.turn()
    guid = ev.loads(sim.event(5).data["result"])
    first_turn_now = sim.turn_clocks[0]
    sim.complete(6, None)
    r = sim.turn()
    assert sim.turn_clocks[1] != first_turn_now
    assert r.status == "Completed"
    assert output_of(r) == {"t1": first_turn_now, "g1": guid, "t2": sim.turn_clocks[1]}
    assert_replay_stable(sim)


def test_utc_now_uses_the_clock_callable_when_given():
    ticks = iter([111, 222])

    def orch(ctx, _):
        return [(yield ctx.utc_now()), (yield ctx.utc_now())]

    sim = Sim({"o": orch}).start("o")
    inp = sim.turn_input([], sim.inbox, NOW_MS)
    inp.clock = lambda: next(ticks)
    r = run_turn(inp, sim.resolve)
    assert ev.loads(r.output) == [111, 222]


def test_new_guid_uses_the_turn_guid_source():
    def orch(ctx, _):
        return [(yield ctx.new_guid()), (yield ctx.new_guid())]

    names = iter(["g-1", "g-2"])
    inp = TurnInput("i", 1, [], [{"kind": ev.MSG_START, "name": "o", "input": "null"}], NOW_MS, lambda: next(names))
    r = run_turn(inp, lambda name, version: ("1.0.0", orch))
    assert ev.loads(r.output) == ["g-1", "g-2"]


def test_get_kv_value_from_instance_is_a_recorded_syscall():
    def orch(ctx, _):
        v = yield ctx.get_kv_value_from_instance("other", "color")
        missing = yield ctx.get_kv_value_from_instance("other", "nope")
        yield ctx.schedule_timer(1)
        return [v, missing]

    sim = Sim({"o": orch}).start("o")
    sim.kv_store = {"other": {"color": "blue"}}
    r = sim.turn()
    assert sim.event(2).data == {"name": "__duroxide_syscall:get_kv_value", "input": '["other","color"]'}
    assert sim.event(3).data == {"result": '"blue"'}
    assert sim.event(5).data == {"result": "null"}
    assert r.outgoing and not outgoing_of(r, ScheduleActivity)
    sim.kv_store = {"other": {"color": "red"}}  # the value changes later: the recorded read wins on replay
    sim.fire(6)
    assert output_of(sim.turn()) == ["blue", None]


# -- custom status ----------------------------------------------------------------------------------------------


def test_custom_status_set_reset_get_and_changed_flag(monkeypatch):
    monkeypatch.setattr(sim_module, "RESUME_CHECK", False)  # counts side effects of each run
    seen = []

    def orch(ctx, _):
        seen.append(ctx.get_custom_status())
        ctx.set_custom_status("a")
        ctx.set_custom_status("b")
        seen.append(ctx.get_custom_status())
        yield ctx.schedule_timer(1)
        seen.append(ctx.get_custom_status())
        yield ctx.schedule_timer(1)
        ctx.reset_custom_status()
        seen.append(ctx.get_custom_status())

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.custom_status == "b" and r.custom_status_changed is True
    assert [e.data for e in sim.history if e.kind == ev.CUSTOM_STATUS_UPDATED] == [{"status": "a"}, {"status": "b"}]
    assert seen == [None, "b"]
    seen.clear()
    sim.fire(4)
    r = sim.turn()
    assert r.custom_status == "b" and r.custom_status_changed is False  # replayed, not changed
    assert seen == [None, "b", "b"]
    seen.clear()
    sim.fire(sim.timers()[1])
    r = sim.turn()
    assert r.status == "Completed"
    assert r.custom_status is None and r.custom_status_changed is True
    assert seen[-1] is None
    assert sim.history[-2].kind == ev.CUSTOM_STATUS_UPDATED and sim.history[-2].data == {"status": None}
    assert_replay_stable(sim)


def test_custom_status_over_the_limit_fails_the_instance_even_inside_try():
    def orch(ctx, _):
        try:
            ctx.set_custom_status("x" * (256 * 1024 + 1))
        except Exception:  # noqa: BLE001 - the limit is not an error the code can swallow
            return "swallowed"

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Failed"
    assert r.error["message"] == "custom status is 262145 bytes; the limit is 262144 bytes"
    assert r.custom_status_changed is False


def test_initial_custom_status_from_start_message():
    def orch(ctx, _):
        return ctx.get_custom_status()

    sim = Sim({"o": orch}).send({"kind": ev.MSG_START, "name": "o", "input": "null", "initial_custom_status": "s0"})
    r = sim.turn()
    assert output_of(r) == "s0" and r.custom_status == "s0" and r.custom_status_changed is False


# -- KV ---------------------------------------------------------------------------------------------------------


def test_kv_set_get_clear_and_ops():
    def orch(ctx, _):
        ctx.set_kv_value("a", "1")
        ctx.set_kv_value("n", 5)  # values are str()'d
        ctx.set_kv_value("b", "2")
        snapshot = [ctx.get_kv_value("a"), ctx.get_kv_value("n"), ctx.get_kv_value("zzz"), ctx.get_kv_length()]
        ctx.clear_kv_value("a")
        keys = ctx.get_kv_all_keys()
        yield ctx.schedule_timer(1)
        values = ctx.get_kv_all_values()
        ctx.clear_all_kv_values()
        return {"snapshot": snapshot, "keys": keys, "values": values, "after": ctx.get_kv_all_values()}

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    now = sim.turn_clocks[0]
    assert [e.kind for e in r.new_events][1:] == [ev.KEY_VALUE_SET] * 3 + [ev.KEY_VALUE_CLEARED, ev.TIMER_CREATED]
    assert sim.event(2).data == {"key": "a", "value": "1", "last_updated_at_ms": now}
    assert sim.event(5).data == {"key": "a"}
    assert r.kv_ops == [("set", "a", "1", now), ("set", "n", "5", now), ("set", "b", "2", now), ("clear", "a")]
    assert r.kv_state == {"n": ("5", now), "b": ("2", now)}
    sim.fire(6)
    r = sim.turn()
    assert r.kv_ops == [("clear_all",)]  # only this turn's changes
    assert r.kv_state == {}
    assert sim.history[-2].kind == ev.KEY_VALUES_CLEARED and sim.history[-2].data == {}
    assert output_of(r) == {
        "snapshot": ["1", "5", None, 3],
        "keys": ["n", "b"],
        "values": {"n": "5", "b": "2"},
        "after": {},
    }
    assert_replay_stable(sim)


def test_kv_snapshot_from_earlier_executions_is_visible_and_prunable():
    def orch(ctx, _):
        before = ctx.get_kv_all_values()
        removed = ctx.prune_kv_values_updated_before(NOW_MS)
        ctx.set_kv_value("fresh", "y")
        return {"before": before, "removed": removed, "after": ctx.get_kv_all_values()}
        yield  # pragma: no cover

    sim = Sim({"o": orch}).start("o")
    sim.kv_snapshot = {"old": ("x", NOW_MS - 10), "recent": ("z", NOW_MS)}
    r = sim.turn()
    assert output_of(r) == {
        "before": {"old": "x", "recent": "z"},
        "removed": 1,
        "after": {"recent": "z", "fresh": "y"},
    }
    assert r.kv_ops == [("clear", "old"), ("set", "fresh", "y", NOW_MS)]


def test_kv_150_keys_and_65536_byte_values_are_allowed():
    def orch(ctx, _):
        for i in range(149):
            ctx.set_kv_value(f"k{i}", i)
        ctx.set_kv_value("big", "x" * 65536)
        yield ctx.schedule_timer(1)
        return ctx.get_kv_length()

    sim = Sim({"o": orch}).start("o")
    assert sim.turn().status == "Running"
    sim.fire(152)
    assert output_of(sim.turn()) == 150


@pytest.mark.parametrize("then", ["block", "complete"])
def test_kv_151_keys_fails(then):
    def orch(ctx, _):
        for i in range(151):
            ctx.set_kv_value(f"k{i}", i)
        if then == "block":
            yield ctx.schedule_timer(1)
        return "should not complete"

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.status == "Failed"
    assert r.error == {
        "category": "Application",
        "message": "KV key count (151) exceeds limit (150)",
        "kind": "KvLimit",
    }
    assert sim.history[-1].kind == ev.ORCHESTRATION_FAILED
    assert r.output is None
    assert r.outgoing == []  # the timer scheduled in this turn is never sent


@pytest.mark.parametrize("then", ["block", "complete", "continue"])
def test_kv_value_over_65536_bytes_fails_naming_the_key(then):
    def orch(ctx, gen):
        ctx.set_kv_value("big", "y" * 65537)
        if then == "block":
            yield ctx.wait_for_event("never")
        elif then == "continue":
            yield ctx.continue_as_new(1)
        return "should not complete"

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert r.status == "Failed"
    assert error_message(r) == "KV value for key 'big' (65537 bytes) exceeds limit (65536 bytes)"
    assert r.continue_as_new is None


def test_kv_limit_counts_multibyte_characters_as_bytes():
    def orch(ctx, _):
        ctx.set_kv_value("wide", "é" * 32769)  # 65538 bytes, 32769 characters
        return None
        yield  # pragma: no cover

    r = Sim({"o": orch}).start("o").turn()
    assert error_message(r) == "KV value for key 'wide' (65538 bytes) exceeds limit (65536 bytes)"


def test_kv_keys_cleared_in_the_same_turn_do_not_count():
    def orch(ctx, _):
        for i in range(160):
            ctx.set_kv_value(f"k{i}", i)
        for i in range(10):
            ctx.clear_kv_value(f"k{i}")
        return ctx.get_kv_length()

    r = Sim({"o": orch}).start("o").turn()
    assert r.status == "Completed" and output_of(r) == 150


def test_syscall_names_are_the_duroxide_ones():
    assert ev.SYSCALL_UTC_NOW == "__duroxide_syscall:utc_now_ms"
    assert ev.SYSCALL_NEW_GUID == "__duroxide_syscall:new_guid"
    guid_shape = re.compile(r"^[0-9a-f-]{36}$")
    sim = Sim({"c": clocked}).start("c")
    sim.turn()
    assert guid_shape.match(ev.loads(sim.event(5).data["result"]))


def test_get_kv_value_from_instance_inside_all_and_race_is_answered_in_the_turn():
    def orch(ctx, _):
        joined = yield ctx.all([ctx.get_kv_value_from_instance("other", "color"), ctx.schedule_timer(5)])
        raced = yield ctx.race(ctx.schedule_timer(5), ctx.get_kv_value_from_instance("other", "size"))
        return [joined, raced]

    sim = Sim({"o": orch}).start("o")
    sim.kv_store = {"other": {"color": "blue", "size": "XL"}}
    r = sim.turn()
    assert not outgoing_of(r, ScheduleActivity)  # never sent to a worker
    assert sim.kinds()[1:4] == [ev.ACTIVITY_SCHEDULED, ev.ACTIVITY_COMPLETED, ev.TIMER_CREATED]
    sim.fire(4)
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [[{"ok": "blue"}, {"ok": None}], {"index": 1, "value": "XL"}]
    assert_replay_stable(sim)
