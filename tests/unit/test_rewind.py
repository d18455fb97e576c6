"""Rewind, pure part (replay/rewind.py): which events a rewind sets aside, and how replay then resumes from the
failed step with the code now deployed."""

from __future__ import annotations

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import ScheduleActivity
from duroxide_celery.replay.poison import poisoned_turn
from duroxide_celery.replay.rewind import (
    REWOUND_PLACEHOLDER,
    CannotRewind,
    custom_status_after,
    effective_history,
    kv_after,
    plan_rewind,
)

from .sim import Sim, error_message, outgoing_of, output_of

FIXED = {"on": False}


def rewind(sim: Sim, reason: str = "fixed"):
    """Apply a rewind the way the store does: append its event (the caller recreates the reopened work)."""
    plan = plan_rewind(sim.history, reason, sim.now_ms, sim.execution_id)
    sim.history.append(plan.event)
    sim._engine = None  # history changed outside a turn: no engine of an earlier turn resumes (as in workers)
    return plan


def kinds_of(events):
    return [e.kind for e in events]


def test_activity_failure_rewinds_the_failure_and_the_terminal_and_reruns_the_same_step():
    def orch(ctx, x):
        a = yield ctx.schedule_activity("A", x)
        b = yield ctx.schedule_activity("B", a)
        return [a, b]

    sim = Sim({"o": orch}).start("o", 1)
    sim.turn()
    sim.complete(2, "a1").turn()
    (b_id,) = sim.open_activities()
    sim.fail(b_id, "Activity 'B' call failed: ValueError: boom")
    assert sim.turn().status == "Failed"
    failed_len = len(sim.history)

    plan = rewind(sim, "deployed fix")
    assert kinds_of(plan.rewound) == [ev.ACTIVITY_FAILED, ev.ORCHESTRATION_FAILED]
    assert plan.failed_steps == [b_id]
    assert [(s.kind, s.event.event_id) for s in plan.reopened] == [(ev.ACTIVITY_SCHEDULED, b_id)]
    assert plan.event.event_id == failed_len + 1
    assert plan.event.data["reason"] == "deployed fix"
    assert plan.event.data["rewound_event_ids"] == [e.event_id for e in plan.rewound]
    assert plan.event.data["error"] == "Activity 'B' call failed: ValueError: boom"

    # Replay over the rewound history: nothing new, blocked on B again (its rerun is the caller's work item).
    again = sim.replay()
    assert again.status == "Running" and again.new_events == [] and again.outgoing == []
    sim.complete(b_id, "b2")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == ["a1", "b2"]
    # Nothing deleted: the failure and the old terminal are still stored, followed by one audit record.
    assert sim.kinds().count(ev.ORCHESTRATION_FAILED) == 1
    assert sim.kinds().count(ev.ORCHESTRATION_REWOUND) == 1
    assert sim.kinds()[-1] == ev.ORCHESTRATION_COMPLETED


def test_effective_history_masks_only_the_rewound_events_and_keeps_ids_dense():
    def orch(ctx, _):
        return (yield ctx.schedule_activity("A"))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(2, "no").turn()
    plan = rewind(sim)
    view = effective_history(sim.history)
    assert [e.event_id for e in view] == list(range(1, len(sim.history) + 1))
    masked = {e.event_id for e in view if e.kind == REWOUND_PLACEHOLDER}
    assert masked == set(plan.event.data["rewound_event_ids"])
    assert all(e.source_event_id is None for e in view if e.kind == REWOUND_PLACEHOLDER)
    assert effective_history(sim.history[:-1]) == sim.history[:-1]  # before the rewind: unchanged


def test_retry_exhausted_reruns_the_last_attempt_once_keeping_the_earlier_attempts():
    def orch(ctx, _):
        return (yield ctx.schedule_activity_with_retry("Flaky", None, {"max_attempts": 2, "backoff": "none"}))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    first = sim.open_activities()[0]
    sim.fail(first, "fail-1").turn()
    second = sim.open_activities()[0]
    assert sim.fail(second, "fail-2").turn().status == "Failed"
    plan = rewind(sim)
    assert plan.failed_steps == [second]  # attempt 1's handled failure stays in the effective history
    assert [s.event.event_id for s in plan.reopened] == [second]
    sim.complete(second, "ok")
    assert output_of(sim.turn()) == "ok"


def test_retry_rerun_that_fails_again_fails_the_instance_again_and_can_be_rewound_again():
    def orch(ctx, _):
        return (yield ctx.schedule_activity_with_retry("Flaky", None, {"max_attempts": 2, "backoff": "none"}))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(sim.open_activities()[0], "fail-1").turn()
    last = sim.open_activities()[0]
    sim.fail(last, "fail-2").turn()
    rewind(sim)
    r = sim.fail(last, "fail-3").turn()
    assert r.status == "Failed" and error_message(r).startswith("fail-3")
    plan = rewind(sim, "second try")
    assert plan.failed_steps == [last]
    assert output_of(sim.complete(last, "ok").turn()) == "ok"
    assert sim.kinds().count(ev.ORCHESTRATION_REWOUND) == 2


def test_own_exception_reruns_the_last_turn_with_the_new_code_and_its_inputs():
    def orch(ctx, _):
        got = yield ctx.wait_for_event("go")
        ctx.set_custom_status(f"got {got}")
        if not FIXED["on"]:
            raise RuntimeError("bug")
        return got * 2

    FIXED["on"] = False
    sim = Sim({"o": orch}).start("o")
    sim.turn()
    r = sim.raise_event("go", 21).turn()
    assert r.status == "Failed"
    plan = rewind(sim)
    # The failing turn's input (the event) stays; what its code recorded goes.
    assert kinds_of(plan.rewound) == [ev.CUSTOM_STATUS_UPDATED, ev.ORCHESTRATION_FAILED]
    assert plan.failed_steps == [] and plan.reopened == []
    assert plan.custom_status_changed and custom_status_after(plan.kept) is None
    still = sim.replay()
    assert still.status == "Failed" and "bug" in error_message(still)  # unfixed code fails the same way
    FIXED["on"] = True
    r = sim.turn()  # the wake-up turn (no message needed)
    assert r.status == "Completed" and output_of(r) == 42
    assert r.custom_status == "got 21"


def test_nondeterminism_after_rewind_is_detected_not_ignored():
    def v1(ctx, _):
        a = yield ctx.schedule_activity("A")
        return (yield ctx.schedule_activity("B", a))

    def v2(ctx, _):  # the "fix" reorders steps already in history
        a = yield ctx.schedule_activity("Other")
        return (yield ctx.schedule_activity("B", a))

    code = {"o": v1}
    sim = Sim(lambda name, version: ("1.0.0", code["o"])).start("o")
    sim.turn()
    sim.complete(2, 1).turn()
    sim.fail(sim.open_activities()[0], "boom").turn()
    rewind(sim)
    code["o"] = v2
    r = sim.replay()
    assert r.status == "Failed"
    assert error_message(r).startswith("nondeterministic: schedule mismatch: action=ActivityScheduled{name: 'Other'")


def test_race_decided_by_the_failure_is_undecided_again():
    def orch(ctx, _):
        won = yield ctx.race(ctx.schedule_activity("A"), ctx.wait_for_event("stop"))
        return won["value"]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(2, "A broke")
    assert sim.turn().status == "Failed"
    plan = rewind(sim)
    assert kinds_of(plan.rewound) == [ev.ACTIVITY_FAILED, ev.EXTERNAL_SUBSCRIBED_CANCELLED, ev.ORCHESTRATION_FAILED]
    again = sim.replay()
    assert again.status == "Running" and again.new_events == []
    r = sim.raise_event("stop", "manual").turn()
    assert r.status == "Completed" and output_of(r) == "manual"
    # The rerun of A lost the race this time: its cancel is recorded anew.
    assert ev.ACTIVITY_CANCEL_REQUESTED in kinds_of(r.new_events)


def test_failed_child_is_reopened_and_its_completion_is_accepted():
    def orch(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Child", 3))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    (sub,) = sim.subs()
    sim.sub_failed(sub, "child broke").turn()
    plan = rewind(sim)
    assert plan.failed_steps == [sub]
    assert [(s.kind, s.event.data["instance"]) for s in plan.reopened] == [
        (ev.SUB_ORCHESTRATION_SCHEDULED, "inst::sub::2")
    ]
    r = sim.sub_completed(sub, 9).turn()
    assert output_of(r) == 9


def test_kv_written_by_the_rewound_turn_is_recomputed():
    def orch(ctx, _):
        ctx.set_kv_value("before", "1")
        try:
            yield ctx.schedule_activity("A")
        except Exception:
            ctx.set_kv_value("after", "bad")
            raise

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(sim.open_activities()[0], "x").turn()
    plan = rewind(sim)
    assert plan.kv_changed
    assert set(kv_after({}, plan.kept)) == {"before"}


def test_poisoned_turn_reopens_the_steps_whose_completions_it_consumed():
    def orch(ctx, _):
        a = yield ctx.schedule_activity("A")
        return a

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    # A poisoned turn consumed A's completion without recording it, and recorded only the failure.
    sim.history.append(
        ev.HistoryEvent(
            len(sim.history) + 1,
            ev.ORCHESTRATION_FAILED,
            {"details": ev.error_details(ev.POISON, "poison: orchestration inst exceeded 11 attempts", "Poison")},
        )
    )
    plan = rewind(sim)
    assert kinds_of(plan.rewound) == [ev.ORCHESTRATION_FAILED]
    assert [s.event.event_id for s in plan.reopened] == [2]
    assert sim.replay().status == "Running"


@pytest.mark.parametrize(
    "last",
    [
        ("complete", ev.ORCHESTRATION_COMPLETED),
        ("cancel", "canceled"),
        ("running", ev.ACTIVITY_SCHEDULED),
    ],
)
def test_refusals(last):
    def orch(ctx, _):
        return (yield ctx.schedule_activity("A"))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    if last[0] == "complete":
        sim.complete(2, 1).turn()
    elif last[0] == "cancel":
        sim.cancel("stop").turn()
    with pytest.raises(CannotRewind, match=last[1]):
        plan_rewind(sim.history, "r", 0)
    with pytest.raises(CannotRewind, match="no OrchestrationStarted"):
        plan_rewind([], "r", 0)


def test_rerun_work_of_a_reopened_activity_matches_its_schedule():
    def orch(ctx, x):
        return (yield ctx.schedule_activity("A", x).with_tag("gpu"))

    sim = Sim({"o": orch}).start("o", {"n": 1})
    first = sim.turn()
    (scheduled,) = outgoing_of(first, ScheduleActivity)
    sim.fail(2, "x").turn()
    (step,) = rewind(sim).reopened
    assert step.event.data["name"] == scheduled.name
    assert step.event.data["input"] == scheduled.input and step.event.data["tag"] == "gpu"


def test_messages_a_poisoned_turn_consumed_are_redelivered_and_their_steps_not_rerun():
    def orch(ctx, _):
        a = yield ctx.schedule_activity("A")
        got = yield ctx.wait_for_event("go")
        return [a, got]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    consumed = [
        {"kind": ev.MSG_ACTIVITY_COMPLETED, "execution_id": 1, "event_id": 2, "result": '"a"'},
        {"kind": ev.MSG_EXTERNAL_RAISED, "name": "go", "data": "1"},
        {"kind": ev.MSG_ACTIVITY_COMPLETED, "execution_id": 7, "event_id": 2, "result": '"stale"'},
    ]
    details = ev.error_details(ev.POISON, "poison: ...", "Poison")
    sim.history.append(
        ev.HistoryEvent(
            len(sim.history) + 1, ev.ORCHESTRATION_FAILED, {"details": details, "unprocessed_messages": consumed}
        )
    )
    plan = rewind(sim)
    assert plan.redeliver == consumed[:1] + consumed[1:2]
    assert plan.reopened == []  # A's completion comes back: A does not run again
    sim.inbox.extend(plan.redeliver)
    r = sim.turn()
    assert (r.status, output_of(r)) == ("Completed", ["a", 1])


def test_a_turn_failed_without_the_code_keeps_what_it_consumed_for_a_rewind():
    def orch(ctx, _):
        return (yield ctx.wait_for_event("go"))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    consumed = [{"kind": ev.MSG_EXTERNAL_RAISED, "name": "go", "data": "5"}]
    details = ev.error_details(ev.POISON, "poison: ...", "Poison")
    failed = poisoned_turn(sim.history, consumed, "o", "1.0.0", details, sim.now_ms)
    assert failed.new_events[-1].data == {"details": details, "unprocessed_messages": consumed}
    sim.history.extend(failed.new_events)
    sim.inbox.extend(rewind(sim).redeliver)
    assert output_of(sim.turn()) == 5


def test_a_cancel_from_the_parent_is_rewound_with_the_parent_and_a_requested_one_is_not():
    def child(ctx, _):
        return (yield ctx.schedule_activity("A"))

    for reason, undoable in (("parent dropped sub-orchestration future", True), ("ops said stop", False)):
        sim = Sim({"c": child}).start("c")
        sim.turn()
        assert sim.cancel(reason).turn().status == "Failed"
        with pytest.raises(CannotRewind, match="it was canceled"):
            plan_rewind(sim.history, "r", 0)
        if not undoable:
            with pytest.raises(CannotRewind, match="ops said stop"):
                plan_rewind(sim.history, "r", 0, undo_parent_cancel=True)
            continue
        plan = plan_rewind(sim.history, "r", 0, undo_parent_cancel=True)
        assert kinds_of(plan.rewound) == [
            ev.ORCHESTRATION_CANCEL_REQUESTED,
            ev.ACTIVITY_CANCEL_REQUESTED,
            ev.ORCHESTRATION_FAILED,
        ]
        assert [s.event.event_id for s in plan.reopened] == [2]
        sim.history.append(plan.event)
        sim._engine = None
        assert output_of(sim.complete(2, "a").turn()) == "a"


def test_the_dashboard_timeline_shows_a_rewound_step_as_it_ran_again():
    from duroxide_celery.dashboard.present import timeline

    def orch(ctx, _):
        return (yield ctx.schedule_activity("A"))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fail(2, "x").turn()
    failed_bars = timeline(sim.history, sim.now_ms, running=False)["bars"]
    assert [(b["label"], b["state"]) for b in failed_bars][1] == ("activity A #2", "failed")
    rewind(sim)
    sim.complete(2, "ok").turn()
    bars = timeline(sim.history, sim.now_ms, running=False)["bars"]
    assert [b["state"] for b in bars] == ["ok", "ok"]


def test_a_timed_out_attempt_is_not_a_failed_step_replay_times_out_again():
    def orch(ctx, _):
        return (yield ctx.schedule_activity_with_retry("Slow", None, {"max_attempts": 3, "timeout_ms": 50}))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    (timer,) = sim.timers()
    r = sim.fire(timer).turn()
    assert r.status == "Failed" and error_message(r).startswith("timeout: activity timed out")
    plan = rewind(sim)
    # The last turn runs again: the activity it dropped is open again until replay drops it again.
    assert plan.failed_steps == [] and [s.event.event_id for s in plan.reopened] == [2]
    again = sim.replay()
    assert again.status == "Failed" and error_message(again).startswith("timeout: activity timed out")
