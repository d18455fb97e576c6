"""Continue-as-new, cancellation, sub-orchestrations, detached starts (semantics.md 2.8, 2.10-2.12)."""

from __future__ import annotations

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import (
    CancelActivity,
    CancelInstance,
    CancelTimer,
    NotifyParent,
    ScheduleActivity,
    StartOrchestration,
)

from .sim import Sim, assert_replay_stable, error_message, outgoing_of, output_of

# -- continue-as-new --------------------------------------------------------------------------------------------


def counter(ctx, n):
    yield ctx.schedule_activity("Work", n)
    if n < 2:
        ctx.set_custom_status(f"gen-{n}")
        yield ctx.continue_as_new(n + 1)
        raise AssertionError("continue_as_new must not return")  # pragma: no cover
    return {"n": n, "exec": ctx.execution_id, "status": ctx.get_custom_status()}


def test_continue_as_new_ends_the_execution_and_describes_the_next_one():
    sim = Sim({"counter": counter}, instance_id="c").start("counter", 0)
    sim.turn()
    sim.complete(2, None)
    r = sim.turn()
    assert r.status == "ContinuedAsNew"
    assert sim.kinds()[-3:] == [ev.ACTIVITY_COMPLETED, ev.CUSTOM_STATUS_UPDATED, ev.ORCHESTRATION_CONTINUED_AS_NEW]
    assert sim.history[-1].data == {"input": "1"}
    assert r.continue_as_new == {
        "name": "counter",
        "version": None,
        "input": "1",
        "carry_forward_events": [],
        "initial_custom_status": "gen-0",
        "parent_instance_id": None,
        "parent_execution_id": None,
        "parent_event_id": None,
    }
    assert r.output is None and r.error is None
    assert_replay_stable(sim)


def test_continue_as_new_chain_runs_to_completion_with_status_carried():
    sim = Sim({"counter": counter}, instance_id="c").start("counter", 0)
    sim.turn()
    sim.complete(2, None)
    sim.turn()
    execs = [sim]
    for _ in range(2):
        sim = sim.next_execution()
        r = sim.turn()
        assert r.status == "Running"
        started = sim.event(1)
        assert started.kind == ev.ORCHESTRATION_STARTED
        assert started.data["initial_custom_status"] == f"gen-{sim.execution_id - 2}"
        assert r.custom_status == f"gen-{sim.execution_id - 2}" and r.custom_status_changed is False
        sim.complete(2, None)
        r = sim.turn()
        execs.append(sim)
    assert [s.execution_id for s in execs] == [1, 2, 3]
    assert r.status == "Completed"
    assert output_of(r) == {"n": 2, "exec": 3, "status": "gen-1"}
    for s in execs:
        assert_replay_stable(s)


def test_continue_as_new_carries_unconsumed_queue_messages_first():
    def orch(ctx, gen):
        if gen == 0:
            first = yield ctx.dequeue_event("q")
            yield ctx.schedule_timer(10)
            yield ctx.continue_as_new({"gen": 1, "first": first})
        got = []
        for _ in range(3):
            got.append((yield ctx.dequeue_event("q")))
        return {"input": gen, "got": got}

    sim = Sim({"o": orch}).start("o", 0).enqueue("q", "m1").enqueue("q", "m2")
    sim.turn()
    sim.enqueue("q", "m3").fire(sim.timers()[0]).enqueue("q", "m4")
    r = sim.turn()
    assert r.status == "ContinuedAsNew"
    # m2 was buffered; m3 arrived before the timer and m4 after it: none was consumed
    assert r.continue_as_new["carry_forward_events"] == [["q", '"m2"'], ["q", '"m3"'], ["q", '"m4"']]
    assert_replay_stable(sim)
    nxt = sim.next_execution().enqueue("q", "m5")
    r = nxt.turn()
    assert nxt.event(1).data["carry_forward_events"] == [["q", '"m2"'], ["q", '"m3"'], ["q", '"m4"']]
    assert r.status == "Completed"
    assert output_of(r) == {"input": {"gen": 1, "first": "m1"}, "got": ["m2", "m3", "m4"]}
    assert_replay_stable(nxt)


def test_positional_events_do_not_carry_across_continue_as_new():
    def orch(ctx, gen):
        if gen == 0:
            yield ctx.schedule_timer(1)
            yield ctx.continue_as_new(1)
        return (yield ctx.wait_for_event("e"))

    sim = Sim({"o": orch}).start("o", 0)
    sim.turn()
    sim.raise_event("e", "old").fire(2)
    assert sim.turn().continue_as_new["carry_forward_events"] == []
    nxt = sim.next_execution()
    assert nxt.turn().status == "Running"


def test_continue_as_new_versioned_pins_the_next_version():
    def v1(ctx, inp):
        yield ctx.continue_as_new_versioned({"from": ctx.orchestration_version}, "2.0.0")

    def v2(ctx, inp):
        return {"inp": inp, "version": ctx.orchestration_version}

    sim = Sim({"o@1.0.0": v1, "o@2.0.0": v2}).start("o", version="1.0.0")
    r = sim.turn()
    assert r.status == "ContinuedAsNew" and r.continue_as_new["version"] == "2.0.0"
    r = sim.next_execution().turn()
    assert output_of(r) == {"inp": {"from": "1.0.0"}, "version": "2.0.0"}


def test_kv_and_stale_completions_across_continue_as_new():
    def orch(ctx, gen):
        if gen == 0:
            ctx.set_kv_value("k", "v0")
            yield ctx.race(ctx.schedule_activity("Slow"), ctx.schedule_timer(1))
            yield ctx.continue_as_new(1)
        yield ctx.schedule_timer(5)
        return ctx.get_kv_value("k")

    sim = Sim({"o": orch}).start("o", 0)
    sim.turn()
    sim.fire(4)
    r = sim.turn()
    assert r.status == "ContinuedAsNew" and r.kv_state == {"k": ("v0", sim.turn_clocks[0])}
    nxt = sim.next_execution()
    nxt.turn()
    # exec 1's activity (event 3) completes late: another execution, so it is dropped
    nxt.complete(3, "late", execution_id=1).fire(2, execution_id=1).fire(2)
    r = nxt.turn()
    assert r.dropped_messages == 2
    assert r.status == "Completed" and output_of(r) == "v0"
    assert r.kv_ops == []


def test_sub_orchestration_auto_ids_after_continue_as_new():
    def orch(ctx, gen):
        child = yield ctx.schedule_sub_orchestration("child", gen)
        if gen == 0:
            yield ctx.continue_as_new(1)
        return child

    sim = Sim({"o": orch}, instance_id="lp").start("o", 0)
    r = sim.turn()
    assert outgoing_of(r, StartOrchestration)[0].instance_id == "lp::sub::2"
    sim.sub_completed(2, "c0")
    sim.turn()
    nxt = sim.next_execution()
    r = nxt.turn()
    assert outgoing_of(r, StartOrchestration) == [StartOrchestration("lp::sub::2_2", "child", "1", None, "lp", 2, 2)]
    assert nxt.event(2).data["instance"] == "lp::sub::2_2"
    nxt.sub_completed(2, "c1")
    assert output_of(nxt.turn()) == "c1"


def test_continue_as_new_of_a_child_keeps_the_parent_link():
    def child(ctx, n):
        if n == 0:
            yield ctx.continue_as_new(1)
        return n

    sim = Sim({"child": child}, instance_id="p::sub::2").start(
        "child", 0, parent_instance_id="p", parent_execution_id=1, parent_event_id=2
    )
    r = sim.turn()
    assert r.status == "ContinuedAsNew"
    assert not outgoing_of(r, NotifyParent)  # the child is not finished yet
    assert r.continue_as_new["parent_instance_id"] == "p"
    nxt = sim.next_execution()
    r = nxt.turn()
    assert r.status == "Completed"
    assert r.outgoing == [NotifyParent("p", 1, 2, ev.MSG_SUB_COMPLETED, result="1")]


# -- cancellation (semantics.md 2.12) ---------------------------------------------------------------------------


def waits_on_activity(ctx, _):
    return (yield ctx.schedule_activity("Long"))


def test_cancel_records_request_then_fails_with_reason_and_cancels_work():
    sim = Sim({"o": waits_on_activity}).start("o")
    sim.turn()
    sim.cancel("user asked")
    r = sim.turn()
    assert r.status == "Failed"
    assert [e.kind for e in r.new_events] == [
        ev.ORCHESTRATION_CANCEL_REQUESTED,
        ev.ACTIVITY_CANCEL_REQUESTED,
        ev.ORCHESTRATION_FAILED,
    ]
    assert r.new_events[0].data == {"reason": "user asked"}
    assert r.new_events[1].source_event_id == 2
    assert r.error == {"category": "Application", "message": "canceled: user asked", "kind": "Cancelled"}
    assert r.outgoing == [CancelActivity(2)]
    assert_replay_stable(sim)


def test_cancel_without_reason():
    sim = Sim({"o": waits_on_activity}).start("o")
    sim.turn()
    sim.cancel(None)
    assert error_message(sim.turn()) == "canceled: "


def test_cancel_beats_a_completion_in_the_same_turn():
    sim = Sim({"o": waits_on_activity}).start("o")
    sim.turn()
    sim.complete(2, "result").cancel("stop")  # the completion is first in the batch
    r = sim.turn()
    assert r.status == "Failed" and error_message(r) == "canceled: stop"
    assert [e.kind for e in r.new_events][:2] == [ev.ORCHESTRATION_CANCEL_REQUESTED, ev.ACTIVITY_COMPLETED]
    assert r.new_events[-1].kind == ev.ORCHESTRATION_FAILED
    assert_replay_stable(sim)


def test_duplicate_cancels_are_ignored_and_terminal_instances_untouched():
    sim = Sim({"o": waits_on_activity}).start("o")
    sim.turn()
    sim.cancel("a").cancel("b")
    r = sim.turn()
    assert r.dropped_messages == 1 and error_message(r) == "canceled: a"
    sim.cancel("c")
    r = sim.turn()
    assert r.status == "Idle" and r.new_events == [] and r.dropped_messages == 1


def test_cancel_is_not_catchable():
    def orch(ctx, _):
        try:
            yield ctx.schedule_timer(1000)
        except BaseException:  # noqa: BLE001
            pass
        return "escaped"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.cancel("x")
    r = sim.turn()
    assert r.status == "Failed" and error_message(r) == "canceled: x"
    assert r.outgoing == [CancelTimer(2)]


def test_cancel_cascades_to_open_children_and_closes_subscriptions():
    def orch(ctx, _):
        return (
            yield ctx.all(
                [
                    ctx.schedule_sub_orchestration("child", 1),
                    ctx.schedule_sub_orchestration_with_id("child", "explicit-kid", 2),
                    ctx.wait_for_event("e"),
                    ctx.dequeue_event("q"),
                    ctx.schedule_timer(100),
                    ctx.schedule_activity("A"),
                ]
            )
        )

    sim = Sim({"o": orch}, instance_id="par").start("o")
    sim.turn()
    sim.sub_completed(3, "explicit done")  # one child already finished: it is not cancelled
    sim.turn()
    sim.cancel("shutdown")
    r = sim.turn()
    assert r.status == "Failed" and error_message(r) == "canceled: shutdown"
    kinds = [e.kind for e in r.new_events]
    assert kinds[0] == ev.ORCHESTRATION_CANCEL_REQUESTED and kinds[-1] == ev.ORCHESTRATION_FAILED
    assert sorted(kinds[1:-1]) == sorted(
        [
            ev.SUB_ORCHESTRATION_CANCEL_REQUESTED,
            ev.EXTERNAL_SUBSCRIBED_CANCELLED,
            ev.QUEUE_SUBSCRIPTION_CANCELLED,
            ev.ACTIVITY_CANCEL_REQUESTED,
        ]
    )
    sub_cancel = next(e for e in r.new_events if e.kind == ev.SUB_ORCHESTRATION_CANCEL_REQUESTED)
    assert sub_cancel.source_event_id == 2
    assert outgoing_of(r, CancelInstance) == [CancelInstance("par::sub::2", "parent canceled")]
    assert CancelTimer(6) in r.outgoing and CancelActivity(7) in r.outgoing
    assert_replay_stable(sim)


def test_canceled_child_reports_failure_to_parent():
    def child(ctx, _):
        yield ctx.schedule_timer(1000)

    sim = Sim({"child": child}, instance_id="par::sub::2").start(
        "child", None, parent_instance_id="par", parent_execution_id=1, parent_event_id=2
    )
    r = sim.turn()
    assert r.parent == {"instance_id": "par", "execution_id": 1, "event_id": 2}
    sim.cancel("parent canceled")
    r = sim.turn()
    notes = outgoing_of(r, NotifyParent)
    assert notes == [
        NotifyParent(
            "par",
            1,
            2,
            ev.MSG_SUB_FAILED,
            details={"category": "Application", "message": "canceled: parent canceled", "kind": "Cancelled"},
        )
    ]


def test_cancel_in_the_start_batch_fails_at_the_first_wait():
    sim = Sim({"o": waits_on_activity}).start("o").cancel("early")
    r = sim.turn()
    assert r.status == "Failed" and error_message(r) == "canceled: early"
    assert sim.kinds() == [
        ev.ORCHESTRATION_STARTED,
        ev.ORCHESTRATION_CANCEL_REQUESTED,
        ev.ACTIVITY_SCHEDULED,
        ev.ACTIVITY_CANCEL_REQUESTED,
        ev.ORCHESTRATION_FAILED,
    ]
    assert r.outgoing == []  # scheduled and cancelled within one turn: no work is sent at all


# -- sub-orchestrations (semantics.md 2.10) ---------------------------------------------------------------------


def parent(ctx, inp):
    a = yield ctx.schedule_sub_orchestration("child", inp)
    b = yield ctx.schedule_sub_orchestration_with_id("child", "kid-explicit", {"x": a})
    c = yield ctx.schedule_sub_orchestration_versioned("child", "2.0.0", "v")
    return [a, b, c]


def test_sub_orchestration_ids_and_start_messages():
    sim = Sim({"parent": parent}, instance_id="P").start("parent", 1)
    r = sim.turn()
    assert sim.event(2).kind == ev.SUB_ORCHESTRATION_SCHEDULED
    assert sim.event(2).data == {"name": "child", "instance": "P::sub::2", "input": "1", "version": None}
    assert r.outgoing == [StartOrchestration("P::sub::2", "child", "1", None, "P", 1, 2)]
    sim.sub_completed(2, "A")
    r = sim.turn()
    assert r.outgoing == [StartOrchestration("kid-explicit", "child", '{"x":"A"}', None, "P", 1, 4)]
    sim.sub_completed(4, "B")
    r = sim.turn()
    assert r.outgoing == [StartOrchestration("P::sub::6", "child", '"v"', "2.0.0", "P", 1, 6)]
    assert sim.event(6).data["version"] == "2.0.0"
    sim.sub_completed(6, {"c": True})
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == ["A", "B", {"c": True}]
    assert sim.event(3).kind == ev.SUB_ORCHESTRATION_COMPLETED and sim.event(3).source_event_id == 2
    assert_replay_stable(sim)


def test_sub_orchestration_application_failure_is_catchable():
    def orch(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration("child")
        except Exception as exc:  # noqa: BLE001
            return f"child failed: {exc}"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.sub_failed(2, "ValueError: inner")
    r = sim.turn()
    assert output_of(r) == "child failed: ValueError: inner"
    assert sim.event(3).kind == ev.SUB_ORCHESTRATION_FAILED
    assert sim.event(3).data["details"]["message"] == "ValueError: inner"


@pytest.mark.parametrize("category", [ev.POISON, ev.CONFIGURATION, ev.INFRASTRUCTURE])
def test_sub_orchestration_non_application_failure_aborts_the_parent(category):
    def orch(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration("child")
        except BaseException:  # noqa: BLE001
            return "caught"

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.sub_failed(2, f"{category.lower()}: child broke", category=category)
    r = sim.turn()
    assert r.status == "Failed"
    assert r.error["category"] == category and error_message(r) == f"{category.lower()}: child broke"


def test_child_notifies_parent_on_completion_and_failure():
    def ok_child(ctx, inp):
        return (yield ctx.schedule_activity("A", inp))

    sim = Sim({"c": ok_child}, instance_id="P::sub::2").start(
        "c", 5, parent_instance_id="P", parent_execution_id=3, parent_event_id=2
    )
    sim.turn()
    assert sim.event(1).data["parent_instance"] == "P"
    assert sim.event(1).data["parent_execution_id"] == 3 and sim.event(1).data["parent_id"] == 2
    sim.complete(2, 50)
    r = sim.turn()
    assert r.outgoing == [NotifyParent("P", 3, 2, ev.MSG_SUB_COMPLETED, result="50")]

    sim = Sim({"c": ok_child}, instance_id="P::sub::2").start(
        "c", 5, parent_instance_id="P", parent_execution_id=3, parent_event_id=2
    )
    sim.turn()
    sim.fail(2, "boom")
    r = sim.turn()
    (note,) = outgoing_of(r, NotifyParent)
    assert note.kind == ev.MSG_SUB_FAILED and note.result is None
    assert note.details["category"] == "Application" and note.details["message"].startswith("boom")


def test_orchestration_without_parent_sends_no_notification():
    r = Sim({"o": lambda ctx, _: 1}).start("o").turn()
    assert r.parent is None and r.outgoing == []


def test_completing_with_an_open_child_cancels_it():
    def orch(ctx, _):
        yield ctx.race(ctx.schedule_sub_orchestration("slow"), ctx.schedule_timer(5))
        return "done"

    sim = Sim({"o": orch}, instance_id="P").start("o")
    sim.turn()
    sim.fire(3)
    r = sim.turn()
    assert r.status == "Completed"
    assert outgoing_of(r, CancelInstance) == [CancelInstance("P::sub::2", "parent dropped sub-orchestration future")]


# -- detached starts (semantics.md 2.11) ------------------------------------------------------------------------


def test_detached_start_records_chained_event_and_yields_none():
    def orch(ctx, _):
        got = yield ctx.start_orchestration("worker", "job-7", {"job": 7})
        got2 = yield ctx.start_orchestration_versioned("worker", "3.0.0", "job-8")
        return [got, got2]

    sim = Sim({"o": orch}, instance_id="P").start("o")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == [None, None]
    assert sim.kinds() == [
        ev.ORCHESTRATION_STARTED,
        ev.ORCHESTRATION_CHAINED,
        ev.ORCHESTRATION_CHAINED,
        ev.ORCHESTRATION_COMPLETED,
    ]
    assert sim.event(2).data == {"name": "worker", "instance": "job-7", "input": '{"job":7}', "version": None}
    # exact id, no parent, honoured though the parent completed in the same turn
    assert r.outgoing == [
        StartOrchestration("job-7", "worker", '{"job":7}'),
        StartOrchestration("job-8", "worker", "null", "3.0.0"),
    ]
    assert_replay_stable(sim)


def test_detached_start_is_not_resent_on_replay():
    def orch(ctx, _):
        yield ctx.start_orchestration("worker", "job-1")
        return (yield ctx.schedule_activity("A"))

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert outgoing_of(r, StartOrchestration) == [StartOrchestration("job-1", "worker", "null")]
    assert outgoing_of(r, ScheduleActivity) == [ScheduleActivity(3, "A", "null")]
    assert sim.replay().outgoing == []
    sim.complete(3, 1)
    assert sim.turn().outgoing == []


def test_cancel_beats_completion_of_code_that_never_blocks():
    sim = Sim({"plain": lambda ctx, _: "done"}).start("plain").cancel("right away")
    r = sim.turn()
    assert r.status == "Failed" and error_message(r) == "canceled: right away"
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.ORCHESTRATION_CANCEL_REQUESTED, ev.ORCHESTRATION_FAILED]
    assert_replay_stable(sim)


def test_cancel_beats_continue_as_new_in_the_same_turn():
    def orch(ctx, n):
        yield ctx.utc_now()
        yield ctx.continue_as_new(n + 1)

    sim = Sim({"o": orch}).start("o", 0).cancel("stop looping")
    r = sim.turn()
    assert r.status == "Failed" and r.continue_as_new is None
    assert error_message(r) == "canceled: stop looping"
    assert sim.history[-1].kind == ev.ORCHESTRATION_FAILED
