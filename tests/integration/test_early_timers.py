"""Timers fired ahead of their time (beat's lead, or a firer whose clock runs ahead of the workers'): the TimerFired
message reaches the inbox early, and no turn consumes it before its fire time. History records it at or after
fire_at_ms; a message that arrives beside it is processed at once. Waits are on conditions, never asserted times."""

from __future__ import annotations

import pytest

from duroxide_celery.providers.base import now_ms

from .helpers import WAIT_MS, assert_well_formed, event_data, wait_for_kind, wait_until

TIMER_MS = 1000


def _nap(ctx, _):
    yield ctx.schedule_timer(TIMER_MS)
    return "rested"


def _go_and_nap(ctx, _):
    go, _ = yield ctx.all([ctx.wait_for_event("go"), ctx.schedule_timer(TIMER_MS)])
    return go


def _timer_fire_at(client, instance_id: str) -> int:
    created = [e for e in client.read_execution_history(instance_id, 1) if e.kind == "TimerCreated"]
    return int(event_data(created[0])["fire_at_ms"])


def _fire_ahead(provider, fire_at: int) -> None:
    """Move the timer into the inbox now, ahead of its time, as beat does with its lead (no poke)."""
    provider.store.fire_due_timers(lead_ms=fire_at - now_ms() + 1000)


def _assert_fired_on_time(client, instance_id: str, fire_at: int) -> None:
    history = assert_well_formed(client, instance_id)
    fired = [e for e in history if e.kind == "TimerFired"]
    assert len(fired) == 1
    assert event_data(fired[0])["fire_at_ms"] == fire_at  # the timer's own time, not when it was fired
    assert fired[0].timestamp_ms >= fire_at, f"TimerFired {fire_at - fired[0].timestamp_ms} ms before fire_at"


@pytest.mark.parametrize("ahead_ms", [30, 800], ids=["near", "far"])
def test_a_timer_fired_ahead_is_consumed_no_earlier_than_its_time(runtime_factory, provider, client, ahead_ms):
    # near: on PostgreSQL the turn waits for it (no transaction open); far, or on SQLite (whose turn holds the
    # write transaction), the turn gives its lease back and a poke with a countdown brings it back.
    runtime = runtime_factory({"Nap": _nap})
    client.start_orchestration("nap", "Nap")
    wait_for_kind(client, "nap", "TimerCreated")
    fire_at = _timer_fire_at(client, "nap")
    wait_until(lambda: fire_at - now_ms() <= ahead_ms, what=f"the timer to be {ahead_ms} ms from due")
    _fire_ahead(provider, fire_at)
    runtime.publisher.poke([("nap", "Nap")])

    result = client.wait_for_orchestration("nap", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "rested")
    _assert_fired_on_time(client, "nap", fire_at)


def test_a_message_beside_an_early_timer_is_processed_and_the_timer_waits(runtime_factory, provider, client):
    runtime_factory({"GoAndNap": _go_and_nap})
    client.start_orchestration("both", "GoAndNap")
    wait_for_kind(client, "both", "ExternalSubscribed")
    fire_at = _timer_fire_at(client, "both")
    _fire_ahead(provider, fire_at)  # the early TimerFired is first in the inbox
    client.raise_event("both", "go", "went")  # and its wake-up takes both messages in one load

    result = client.wait_for_orchestration("both", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"ok": "went"})  # ctx.all gives each outcome
    _assert_fired_on_time(client, "both", fire_at)
    kinds = [e.kind for e in client.read_execution_history("both", 1)]
    assert kinds.index("ExternalEvent") < kinds.index("TimerFired")  # the due message did not wait for the timer


def test_fire_due_timers_fires_within_its_lead_only(runtime_factory, provider, client):
    # Beat's lead, at the store: a timer further away than the lead stays a timer row.
    runtime = runtime_factory({"Nap": _nap})
    client.start_orchestration("lead", "Nap")
    wait_for_kind(client, "lead", "TimerCreated")
    fire_at = _timer_fire_at(client, "lead")
    assert provider.store.fire_due_timers(lead_ms=-60_000) == ([], 0)
    targets, fired = provider.store.fire_due_timers(lead_ms=fire_at - now_ms() + 60_000)
    assert (targets, fired) in (([("lead", "Nap")], 1), ([], 0))  # 0 only if the runtime's scheduler fired it first
    runtime.publisher.poke(targets)
    result = client.wait_for_orchestration("lead", WAIT_MS)
    assert result.status == "Completed"
    _assert_fired_on_time(client, "lead", fire_at)
