"""Which subscriptions a history leaves open (providers/waits.open_work, behind Client.get_waits), checked on
histories the real replay engine writes (tests/unit/sim.py) and on hand-made ones for the pairing rules."""

from __future__ import annotations

import pytest

from duroxide_celery.providers.waits import open_work
from duroxide_celery.replay.events import HistoryEvent

from .sim import Sim


def approval(ctx, _):
    price = yield ctx.schedule_activity("Price", 1)
    decision = yield ctx.wait_for_event("approve")
    return [price, decision]


def _open_event_names(sim: Sim) -> list[str]:
    return [e.data["name"] for e in open_work(sim.history).events]


@pytest.mark.parametrize("advance_ms", [1000, 0])  # 0: both turns in the same millisecond
def test_event_arriving_with_the_completion_the_code_waited_for_is_delivered(advance_ms):
    sim = Sim({"O": approval})
    sim.start("O").turn(advance_ms)
    (price,) = sim.scheduled("Price")
    sim.complete(price, 10).raise_event("approve", "yes").turn(advance_ms)
    assert sim.last.status == "Completed"  # the engine fed the event to the wait made in the same turn
    assert _open_event_names(sim) == []


@pytest.mark.parametrize("advance_ms", [1000, 0])
def test_event_arriving_before_that_completion_is_dropped_and_the_wait_stays_open(advance_ms):
    sim = Sim({"O": approval})
    sim.start("O").turn(advance_ms)
    (price,) = sim.scheduled("Price")
    sim.raise_event("approve", "too early").complete(price, 10).turn(advance_ms)
    assert sim.last.status != "Completed"  # the event came before the code waited: never delivered
    assert _open_event_names(sim) == ["approve"]
    sim.raise_event("approve", "yes").turn(advance_ms)
    assert sim.last.status == "Completed" and _open_event_names(sim) == []


def test_waits_queues_and_race_losers_from_an_engine_history():
    def orch(ctx, _):
        yield ctx.race(ctx.wait_for_event("a"), ctx.schedule_timer(5))  # the timer wins: the wait is cancelled
        first = yield ctx.dequeue_event("jobs")
        return (yield ctx.all([ctx.wait_for_event("b"), ctx.dequeue_event("jobs")])) + [first]

    sim = Sim({"O": orch})
    sim.start("O").turn()
    (timer,) = sim.timers()
    sim.fire(timer).enqueue("jobs", 1).turn()
    found = open_work(sim.history)
    assert [e.data["name"] for e in found.events] == ["b"]
    assert [e.data["name"] for e in found.queues] == ["jobs"]  # the first message went to the first dequeue
    (cancelled,) = sim.ids("ExternalSubscribed", name="a")
    assert found.matched[cancelled] is None


def _e(event_id: int, kind: str, source: int | None = None, **data: object) -> HistoryEvent:
    return HistoryEvent(event_id, kind, dict(data), source, event_id * 10)  # one turn per event


def test_pairing_rules_on_a_hand_made_history():
    """Positional events pair with the oldest open wait (one before any wait is dropped), queue messages wait in
    a buffer for the next dequeue, try-dequeues and race losers open nothing."""
    events = [
        _e(1, "OrchestrationStarted", carry_forward_events=[["q", '"old"']]),
        _e(2, "ExternalEvent", name="a", data="1"),  # before any wait: never delivered
        _e(3, "ExternalSubscribed", name="a"),
        _e(4, "ExternalSubscribed", name="a"),
        _e(5, "ExternalEvent", name="a", data="2"),  # pairs with 3
        _e(6, "QueueSubscribed", name="q"),  # takes the carried-forward message
        _e(7, "QueueSubscribed", name="q"),
        _e(8, "QueueSubscribed", name="q", **{"try": True, "taken": None}),
        _e(9, "ExternalSubscribed", name="b"),
        _e(10, "ExternalSubscribedCancelled", 9, reason="dropped_future"),
        _e(11, "QueueEventDelivered", name="r", data="3"),  # buffered: no dequeue for r
        _e(12, "QueueSubscribed", name="r"),  # takes it
    ]
    found = open_work(events)
    assert [e.event_id for e in found.events] == [4]
    assert [e.event_id for e in found.queues] == [7]
    assert found.matched[3].event_id == 5 and found.matched[9] is None and found.matched[6].event_id == 6
    assert 12 in found.matched
