"""Positional external events (wait_for_event / raise_event) and FIFO queues (dequeue_event / enqueue_event)."""

from __future__ import annotations

from duroxide_celery.replay import events as ev

from .sim import Sim, assert_replay_stable, output_of

# -- positional events (semantics.md 2.4) -----------------------------------------------------------------------


def wait_once(ctx, _):
    return (yield ctx.wait_for_event("approve"))


def test_wait_for_event_records_subscription_and_delivers_payload():
    sim = Sim({"w": wait_once}).start("w")
    r = sim.turn()
    assert r.status == "Running" and r.outgoing == []
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.EXTERNAL_SUBSCRIBED]
    assert sim.event(2).data == {"name": "approve"}
    sim.raise_event("approve", {"by": "bob", "n": [1, 2]})
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == {"by": "bob", "n": [1, 2]}
    assert sim.event(3).kind == ev.EXTERNAL_EVENT
    assert sim.event(3).data == {"name": "approve", "data": '{"by":"bob","n":[1,2]}'}
    assert sim.event(3).source_event_id is None
    assert_replay_stable(sim)


def test_event_with_other_name_is_recorded_but_not_delivered():
    sim = Sim({"w": wait_once}).start("w")
    sim.turn()
    sim.raise_event("reject", 1)
    r = sim.turn()
    assert r.status == "Running"
    assert [e.kind for e in r.new_events] == [ev.EXTERNAL_EVENT]
    sim.raise_event("approve", 2)
    assert output_of(sim.turn()) == 2
    assert_replay_stable(sim)


def test_event_raised_before_the_wait_is_not_delivered():
    def orch(ctx, _):
        yield ctx.schedule_timer(100)
        return (yield ctx.wait_for_event("go"))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.raise_event("go", "early")  # nobody is waiting yet
    r = sim.turn()
    assert [e.kind for e in r.new_events] == [ev.EXTERNAL_EVENT]
    sim.fire(2)
    r = sim.turn()
    assert r.status == "Running"  # the early event is not handed to the later wait
    assert [e.kind for e in r.new_events] == [ev.TIMER_FIRED, ev.EXTERNAL_SUBSCRIBED]
    sim.raise_event("go", "on time")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == "on time"
    assert_replay_stable(sim)


def test_event_arriving_in_the_batch_after_the_unblocking_completion_is_delivered():
    """Arrivals are fed one at a time in history order: the timer unblocks the code, the wait subscribes,
    and the event that was recorded after the timer is the next arrival."""

    def orch(ctx, _):
        yield ctx.schedule_timer(100)
        return (yield ctx.wait_for_event("go"))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.fire(2).raise_event("go", "after")
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == "after"
    sim2 = Sim({"o": orch}).start("o")
    sim2.turn()
    sim2.raise_event("go", "before").fire(2)  # same batch, other order: the event precedes the wait
    assert sim2.turn().status == "Running"
    assert_replay_stable(sim)
    assert_replay_stable(sim2)


def test_nth_wait_gets_nth_event():
    def orch(ctx, _):
        got = []
        for _ in range(3):
            got.append((yield ctx.wait_for_event("tick")))
        return got

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.raise_event("tick", 1)
    sim.turn()
    sim.raise_event("tick", 2).raise_event("tick", 3)
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == [1, 2, 3]
    assert sim.kinds().count(ev.EXTERNAL_SUBSCRIBED) == 3
    assert_replay_stable(sim)


def test_concurrent_waits_for_one_name_pair_in_order():
    def orch(ctx, _):
        return (yield ctx.all([ctx.wait_for_event("x"), ctx.wait_for_event("x"), ctx.wait_for_event("y")]))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.raise_event("y", "Y").raise_event("x", "first").raise_event("x", "second")
    r = sim.turn()
    assert output_of(r) == [{"ok": "first"}, {"ok": "second"}, {"ok": "Y"}]
    assert_replay_stable(sim)


def test_extra_events_beyond_open_waits_are_not_delivered_later():
    def orch(ctx, _):
        first = yield ctx.wait_for_event("x")
        yield ctx.schedule_timer(10)
        second = yield ctx.wait_for_event("x")
        return [first, second]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.raise_event("x", 1).raise_event("x", 2)  # the 2nd arrives while the code waits on the timer
    r = sim.turn()
    assert r.status == "Running"
    sim.fire(sim.timers()[0])
    r = sim.turn()
    assert r.status == "Running"
    sim.raise_event("x", 3)
    assert output_of(sim.turn()) == [1, 3]
    assert_replay_stable(sim)


def test_event_with_no_data_yields_none():
    sim = Sim({"w": wait_once}).start("w")
    sim.turn()
    sim.send({"kind": ev.MSG_EXTERNAL_RAISED, "name": "approve"})
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) is None


def test_event_data_that_is_not_json_comes_back_raw():
    sim = Sim({"w": wait_once}).start("w")
    sim.turn()
    sim.send({"kind": ev.MSG_EXTERNAL_RAISED, "name": "approve", "data": "plain text"})
    assert output_of(sim.turn()) == "plain text"


# -- queues (semantics.md 2.5) ----------------------------------------------------------------------------------


def test_dequeue_waits_for_a_message():
    def orch(ctx, _):
        return (yield ctx.dequeue_event("inbox"))

    sim = Sim({"o": orch}).start("o")
    r = sim.turn()
    assert sim.kinds() == [ev.ORCHESTRATION_STARTED, ev.QUEUE_SUBSCRIBED]
    assert sim.event(2).data == {"name": "inbox"} and r.outgoing == []
    sim.enqueue("inbox", {"m": 1})
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == {"m": 1}
    assert sim.event(3).kind == ev.QUEUE_EVENT_DELIVERED
    assert sim.event(3).data == {"name": "inbox", "data": '{"m":1}'}
    assert_replay_stable(sim)


def test_queue_messages_are_buffered_and_dequeued_fifo():
    def orch(ctx, _):
        yield ctx.schedule_timer(100)
        got = []
        for _ in range(3):
            got.append((yield ctx.dequeue_event("q")))
        return got

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.enqueue("q", "m1").enqueue("q", "m2")
    r = sim.turn()
    assert r.status == "Running" and [e.kind for e in r.new_events] == [ev.QUEUE_EVENT_DELIVERED] * 2
    sim.enqueue("q", "m3").fire(2)
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == ["m1", "m2", "m3"]
    assert_replay_stable(sim)


def test_queue_message_enqueued_with_the_start_is_delivered():
    def orch(ctx, _):
        return (yield ctx.dequeue_event("q"))

    sim = Sim({"o": orch}).start("o").enqueue("q", 42)
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == 42
    assert sim.kinds() == [
        ev.ORCHESTRATION_STARTED,
        ev.QUEUE_EVENT_DELIVERED,
        ev.QUEUE_SUBSCRIBED,
        ev.ORCHESTRATION_COMPLETED,
    ]


def test_queues_are_isolated_by_name_and_from_positional_events():
    def orch(ctx, _):
        a = yield ctx.dequeue_event("a")
        b = yield ctx.dequeue_event("b")
        e = yield ctx.wait_for_event("a")
        return [a, b, e]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.enqueue("b", "B1").raise_event("a", "event-a").enqueue("a", "A1")
    r = sim.turn()
    # "event-a" arrived before the wait for "a" existed: not delivered. Queue "b" was buffered.
    assert r.status == "Running"
    sim.raise_event("a", "event-a2")
    r = sim.turn()
    assert output_of(r) == ["A1", "B1", "event-a2"]
    assert_replay_stable(sim)


def test_dequeue_in_all_consumes_in_fifo_order():
    def orch(ctx, _):
        return (yield ctx.all([ctx.dequeue_event("q"), ctx.dequeue_event("q")]))

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.enqueue("q", 1)
    assert sim.turn().status == "Running"
    sim.enqueue("q", 2)
    assert output_of(sim.turn()) == [{"ok": 1}, {"ok": 2}]
    assert_replay_stable(sim)


def test_unconsumed_queue_messages_do_not_fail_completion():
    def orch(ctx, _):
        return (yield ctx.dequeue_event("q"))

    sim = Sim({"o": orch}).start("o").enqueue("q", 1).enqueue("q", 2)
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == 1


def test_carry_forward_over_the_limit_is_an_explicit_catchable_error(monkeypatch):
    from duroxide_celery.replay import engine

    monkeypatch.setattr(engine, "MAX_CARRY_FORWARD", 2)

    def orch(ctx, _):
        yield ctx.schedule_timer(10)
        try:
            yield ctx.continue_as_new("again")
        except ValueError as exc:
            return str(exc)

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    for n in range(3):
        sim.enqueue("inbox", n)
    sim.fire(sim.timers()[0])
    r = sim.turn()
    assert r.status == "Completed"
    assert output_of(r) == (
        "continue_as_new would carry 3 undelivered queue messages; the limit is 2: "
        "dequeue some before continuing as new"
    )


def test_try_dequeue_drains_what_has_arrived_without_waiting():
    def orch(ctx, _):
        yield ctx.schedule_activity("Work", None)
        drained = []
        while True:
            msg = yield ctx.try_dequeue_event("inbox")
            if msg is None:
                break
            drained.append(msg)
        return drained

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.complete(2, "done")
    for n in range(3):  # these arrive in the same turn as the completion that resumes the code
        sim.enqueue("inbox", n)
    r = sim.turn()
    assert r.status == "Completed" and output_of(r) == [0, 1, 2]
    tries = [e.data for e in sim.history if e.kind == ev.QUEUE_SUBSCRIBED]
    assert [t["try"] for t in tries] == [True] * 4 and tries[-1]["taken"] is None
    assert_replay_stable(sim)


def test_try_dequeue_takes_buffered_messages_first_and_returns_none_when_empty():
    def orch(ctx, _):
        first = yield ctx.dequeue_event("q")  # blocks; the second message stays buffered
        second = yield ctx.try_dequeue_event("q")
        third = yield ctx.try_dequeue_event("q")
        return [first, second, third]

    sim = Sim({"o": orch}).start("o")
    sim.turn()
    sim.enqueue("q", "a").enqueue("q", "b")
    r = sim.turn()
    assert output_of(r) == ["a", "b", None]
    assert_replay_stable(sim)


def test_replacing_try_dequeue_with_dequeue_is_nondeterministic():
    def v1(ctx, _):
        yield ctx.try_dequeue_event("q")
        yield ctx.schedule_timer(5)

    def v2(ctx, _):
        yield ctx.dequeue_event("q")
        yield ctx.schedule_timer(5)

    sim = Sim({"o": v1}).start("o")
    sim.turn()
    sim.resolve = Sim({"o": v2}).resolve
    sim.fire(sim.timers()[0])
    r = sim.turn()
    assert r.status == "Failed" and r.error["message"].startswith("nondeterministic:")
