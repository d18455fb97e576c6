"""Every history event kind is produced by some orchestration, and every history replays (consumes) cleanly."""

from __future__ import annotations

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.rewind import plan_rewind

from .sim import ActivityError, Sim, assert_replay_stable, drive, error_message, output_of

NOT_EVENT_KINDS = {ev.APPLICATION, ev.INFRASTRUCTURE, ev.CONFIGURATION, ev.POISON}
ALL_EVENT_KINDS = {
    value
    for name, value in vars(ev).items()
    if name.isupper()
    and isinstance(value, str)
    and not name.startswith(("MSG_", "SYSCALL"))
    and value not in NOT_EVENT_KINDS
}


def test_event_kind_catalogue_is_consistent():
    assert ALL_EVENT_KINDS == (
        ev.ACTION_KINDS | ev.INPUT_KINDS | ev.TERMINAL_KINDS | ev.AUDIT_KINDS | {ev.ORCHESTRATION_STARTED}
    )
    assert len(ALL_EVENT_KINDS) == 27
    assert not ev.ACTION_KINDS & ev.INPUT_KINDS


def kitchen_sink(ctx, _):
    ctx.set_custom_status("working")
    ctx.set_kv_value("k", "v")
    ctx.clear_kv_value("k")
    ctx.clear_all_kv_values()
    yield ctx.start_orchestration("child", "detached-1", {"x": 1})
    out = {"now": (yield ctx.utc_now()), "act": (yield ctx.schedule_activity("Echo", 1))}
    try:
        yield ctx.schedule_activity("Boom")
    except Exception as exc:  # noqa: BLE001
        out["boom"] = str(exc)
    yield ctx.schedule_timer(10)
    out["event"] = yield ctx.wait_for_event("go")
    out["queue"] = yield ctx.dequeue_event("q")
    out["child"] = yield ctx.schedule_sub_orchestration("child", 5)
    try:
        yield ctx.schedule_sub_orchestration("bad_child")
    except Exception as exc:  # noqa: BLE001
        out["bad_child"] = str(exc)
    out["losers"] = [
        (yield ctx.race(ctx.wait_for_event("never"), ctx.schedule_timer(1)))["index"],
        (yield ctx.race(ctx.dequeue_event("never"), ctx.schedule_timer(1)))["index"],
        (yield ctx.race(ctx.schedule_activity("Hang"), ctx.schedule_timer(1)))["index"],
        (yield ctx.race(ctx.schedule_sub_orchestration("hang_child"), ctx.schedule_timer(1)))["index"],
    ]
    return out


def boom(_):
    raise ActivityError("Activity 'Boom' call failed: ValueError: boom")


def bad_child(_):
    raise ActivityError("child failed")


def run_kitchen_sink():
    activities = {"Echo": lambda x: x, "Boom": boom}
    children = {"child": lambda x: x * 2, "bad_child": bad_child}
    sim = Sim({"sink": kitchen_sink}, instance_id="ks").start("sink")
    r = drive(sim, activities, children)
    assert r.status == "Running" and sim.history[-1].kind == ev.EXTERNAL_SUBSCRIBED  # waiting for "go"
    sim.raise_event("go", "went").enqueue("q", "queued")
    return sim, drive(sim, activities, children)


def test_kitchen_sink_completes_with_the_expected_values():
    sim, r = run_kitchen_sink()
    assert r.status == "Completed"
    out = output_of(r)
    assert out["act"] == 1 and out["child"] == 10 and out["event"] == "went" and out["queue"] == "queued"
    assert out["boom"] == "Activity 'Boom' call failed: ValueError: boom"
    assert out["bad_child"] == "child failed"
    assert out["losers"] == [1, 1, 1, 1]
    assert_replay_stable(sim)


def test_every_event_kind_is_produced_and_replayed():
    seen = set()
    sim, _ = run_kitchen_sink()
    seen |= set(sim.kinds())

    def can(ctx, n):
        if n == 0:
            yield ctx.continue_as_new(1)
        return n

    can_sim = Sim({"can": can}).start("can", 0)
    assert can_sim.turn().status == "ContinuedAsNew"
    assert_replay_stable(can_sim)
    seen |= set(can_sim.kinds())

    def waits(ctx, _):
        yield ctx.schedule_timer(100)

    cancel_sim = Sim({"w": waits}).start("w")
    cancel_sim.turn()
    cancel_sim.cancel("bye")
    assert error_message(cancel_sim.turn()) == "canceled: bye"
    assert_replay_stable(cancel_sim)
    seen |= set(cancel_sim.kinds())

    def fails(ctx, _):
        raise RuntimeError("x")

    fail_sim = Sim({"f": fails}).start("f")
    assert fail_sim.turn().status == "Failed"
    fail_sim.history.append(plan_rewind(fail_sim.history, "fixed", fail_sim.now_ms).event)
    seen |= set(fail_sim.kinds())

    assert seen == ALL_EVENT_KINDS, ALL_EVENT_KINDS - seen


def test_non_application_activity_failure_is_not_catchable():
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("Missing")
        except BaseException:  # noqa: BLE001
            return "caught"

    for category, message in [
        (ev.POISON, "poison: activity Missing#2 exceeded 4 attempts (max 3)"),
        (ev.CONFIGURATION, "unregistered activity 'Missing'"),
    ]:
        sim = Sim({"o": orch}).start("o")
        sim.turn()
        sim.fail(2, message, category=category)
        r = sim.turn()
        assert r.status == "Failed"
        assert r.error == {"category": category, "message": message, "kind": "ActivityFailed"}
        assert sim.kinds()[-2:] == [ev.ACTIVITY_FAILED, ev.ORCHESTRATION_FAILED]
        assert_replay_stable(sim)
