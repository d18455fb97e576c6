"""The dashboard's timeline and history rows (dashboard/present.py), from histories the replay engine writes."""

from __future__ import annotations

import json

import pytest

from duroxide_celery.replay.events import error_details

from .sim import NOW_MS, Sim

pytest.importorskip("flask", reason="the dashboard needs Flask (pip install -e '.[dev]')")

from duroxide_celery.dashboard.present import history_rows, timeline  # noqa: E402


def saga(ctx, _):
    yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(60_000))  # the timer wins
    yield ctx.schedule_activity("Charge", {"card": "4111"})
    return (yield ctx.schedule_timer(5_000))


def test_timeline_bars_states_and_positions():
    sim = Sim({"Saga": saga})
    sim.start("Saga").turn()
    (race_timer,) = sim.timers()
    sim.fire(race_timer).turn()
    (charge,) = sim.scheduled("Charge")
    sim.complete(charge, "ok").turn()
    drawn = timeline(sim.history, sim.now_ms, running=True)
    by_label = {b["label"].split(" #")[0]: b for b in drawn["bars"]}
    assert by_label["orchestration"]["state"] == "pending"
    assert by_label["wait event 'approve'"]["state"] == "cancelled"  # the race's loser
    assert by_label["activity Charge"]["state"] == "ok"
    pending_timer = [b for b in drawn["bars"] if b["kind"] == "timer" and b["state"] == "pending"]
    assert len(pending_timer) == 1 and pending_timer[0]["end"] == sim.now_ms  # drawn up to now
    assert "(fires " in pending_timer[0]["label"]
    assert all(drawn["label_width"] <= b["x"] and b["w"] >= 3 for b in drawn["bars"])
    assert max(b["x"] + b["w"] for b in drawn["bars"]) <= drawn["width"]


def test_failures_are_marked_and_payloads_hidden_or_decoded_once():
    sim = Sim({"Saga": saga})
    sim.start("Saga", {"order": 7}).turn()
    (race_timer,) = sim.timers()
    sim.fire(race_timer).turn()
    (charge,) = sim.scheduled("Charge")
    sim.fail(charge, "card 4111 declined").turn()
    assert sim.last.status == "Failed"
    drawn = timeline(sim.history, NOW_MS + 10**6, running=False)
    states = {b["kind"]: b["state"] for b in drawn["bars"] if b["kind"] in ("orchestration", "activity")}
    assert states == {"orchestration": "failed", "activity": "failed"}

    hidden = history_rows(sim.history, show=False)
    failed = next(r for r in hidden if r["kind"] == "ActivityFailed")
    assert failed["failed"] and failed["plain"]["category"] == "Application"
    assert failed["payloads"]["details"].hidden and "4111" not in json.dumps(failed["plain"])
    scheduled = next(r for r in hidden if r["kind"] == "ActivityScheduled")
    assert scheduled["plain"]["name"] == "Charge" and scheduled["payloads"]["input"].hidden

    shown = history_rows(sim.history, show=True)
    scheduled = next(r for r in shown if r["kind"] == "ActivityScheduled")
    assert scheduled["payloads"]["input"].text == json.dumps({"card": "4111"}, indent=2)  # decoded once
    failed = next(r for r in shown if r["kind"] == "ActivityFailed")
    details = json.loads(failed["payloads"]["details"].text)
    assert details == error_details("Application", "card 4111 declined", "ActivityFailed")
