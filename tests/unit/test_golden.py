"""Golden histories: recorded histories in tests/fixtures/golden/*.json must replay to the same outcome.

Each fixture's last turn (or every turn, when the fixture lists them) is re-run from the history that preceded it
and the messages that produced it, against today's code in golden_orchestrations.REGISTRY. The new events must be
exactly the recorded ones and the outcome the expected one, unless the fixture says today's code diverges
(`"replays_history": false`), in which case only the outcome (e.g. a nondeterminism failure) is checked.
Fixtures may come from real runs with only the required keys; their last turn is derived from the history.
See make_golden.py for the format and for regenerating the fixtures it owns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import TurnInput, TurnResult
from duroxide_celery.replay.engine import run_turn
from duroxide_celery.replay.events import HistoryEvent

from .golden_orchestrations import REGISTRY
from .sim import make_resolver

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
FIXTURES = sorted(GOLDEN_DIR.glob("*.json"))
REPRESENTATIVE = {
    "sequence",
    "fan_out",
    "race_with_timer",
    "sub_orchestration",
    "continue_as_new_exec1",
    "continue_as_new_exec2",
    "retry",
    "payment_changed",
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def events_of(fixture: dict[str, Any]) -> list[HistoryEvent]:
    return [HistoryEvent.from_json(e) for e in fixture["history"]]


# -- deriving the last turn of a history that carries no turn boundaries ----------------------------------------


def derive_last_turn(history: list[HistoryEvent], execution_id: int) -> dict[str, Any]:
    """The engine stamps every event of a turn with that turn's clock: the last turn is the trailing run of events
    with the last timestamp. Its arrival events are turned back into the inbox messages that produced them."""
    now = history[-1].timestamp_ms
    start = len(history)
    while start > 0 and history[start - 1].timestamp_ms == now:
        start -= 1
    syscalls = {
        e.event_id
        for e in history
        if e.kind == ev.ACTIVITY_SCHEDULED and e.data.get("name", "").startswith(ev.SYSCALL_PREFIX)
    }
    messages = []
    for e in history[start:]:
        src = {"execution_id": execution_id, "event_id": e.source_event_id}
        if e.kind == ev.ORCHESTRATION_STARTED:
            d = e.data
            messages.append(
                {
                    "kind": ev.MSG_START,
                    "name": d["name"],
                    "version": d.get("version"),
                    "input": d.get("input"),
                    "parent_instance_id": d.get("parent_instance"),
                    "parent_execution_id": d.get("parent_execution_id"),
                    "parent_event_id": d.get("parent_id"),
                    "carry_forward_events": d.get("carry_forward_events") or [],
                    "initial_custom_status": d.get("initial_custom_status"),
                }
            )
        elif e.kind == ev.ORCHESTRATION_CANCEL_REQUESTED:
            messages.append({"kind": ev.MSG_CANCEL, "reason": e.data.get("reason")})
        elif e.kind == ev.ACTIVITY_COMPLETED and e.source_event_id not in syscalls:
            messages.append({"kind": ev.MSG_ACTIVITY_COMPLETED, **src, "result": e.data.get("result")})
        elif e.kind == ev.ACTIVITY_FAILED:
            messages.append({"kind": ev.MSG_ACTIVITY_FAILED, **src, "details": e.data["details"]})
        elif e.kind == ev.TIMER_FIRED:
            messages.append({"kind": ev.MSG_TIMER_FIRED, **src, "fire_at_ms": e.data.get("fire_at_ms")})
        elif e.kind == ev.SUB_ORCHESTRATION_COMPLETED:
            messages.append({"kind": ev.MSG_SUB_COMPLETED, **src, "result": e.data.get("result")})
        elif e.kind == ev.SUB_ORCHESTRATION_FAILED:
            messages.append({"kind": ev.MSG_SUB_FAILED, **src, "details": e.data["details"]})
        elif e.kind == ev.EXTERNAL_EVENT:
            messages.append({"kind": ev.MSG_EXTERNAL_RAISED, "name": e.data["name"], "data": e.data.get("data")})
        elif e.kind == ev.QUEUE_EVENT_DELIVERED:
            messages.append({"kind": ev.MSG_QUEUE_MESSAGE, "name": e.data["name"], "data": e.data.get("data")})
    return {"start": start, "now_ms": now, "messages": messages}


def recorded_guids(events: list[HistoryEvent]) -> list[str]:
    """The guids drawn in these events, in order: a re-run turn gets the same ones."""
    ids = {e.event_id for e in events if e.kind == ev.ACTIVITY_SCHEDULED and e.data.get("name") == ev.SYSCALL_NEW_GUID}
    return [ev.loads(e.data["result"]) for e in events if e.kind == ev.ACTIVITY_COMPLETED and e.source_event_id in ids]


def run_recorded_turn(fixture: dict[str, Any], turn: dict[str, Any], end: int | None = None) -> TurnResult:
    history = events_of(fixture)
    guids = iter(recorded_guids(history[turn["start"] : end]))
    inp = TurnInput(
        instance_id=fixture.get("instance_id", "golden"),
        execution_id=fixture.get("execution_id", 1),
        history=history[: turn["start"]],
        messages=turn["messages"],
        now_ms=turn["now_ms"],
        new_guid=lambda: next(guids),
        kv_snapshot={k: (v[0], v[1]) for k, v in (fixture.get("kv_snapshot") or {}).items()},
    )
    return run_turn(inp, make_resolver(REGISTRY))


def check_expectation(result: TurnResult, expect: dict[str, Any]) -> None:
    assert result.status == expect["status"]
    if "output" in expect and result.status == "Completed":
        assert ev.loads(result.output) == expect["output"]
    if "error" in expect:
        assert result.error is not None and result.error["message"].split("\n", 1)[0] == expect["error"]
    if "error_category" in expect:
        assert result.error["category"] == expect["error_category"]
    if "continue_as_new_input" in expect:
        assert ev.loads(result.continue_as_new["input"]) == expect["continue_as_new_input"]
    if "custom_status" in expect:
        assert result.custom_status == expect["custom_status"]


# -- the tests --------------------------------------------------------------------------------------------------


def test_representative_fixtures_are_present():
    assert REPRESENTATIVE <= {p.stem for p in FIXTURES}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_last_turn_replays_to_the_recorded_outcome(path):
    fixture = load(path)
    assert fixture["orchestration"] in REGISTRY, f"{path.name}: no orchestration {fixture['orchestration']!r}"
    history = fixture["history"]
    turn = (fixture.get("turns") or [None])[-1] or derive_last_turn(events_of(fixture), fixture.get("execution_id", 1))
    result = run_recorded_turn(fixture, turn)
    expect = fixture["expect"]
    check_expectation(result, expect)
    if expect.get("replays_history", True):
        assert [e.to_json() for e in result.new_events] == history[turn["start"] :]
        assert ev.loads(events_of(fixture)[0].data["input"]) == fixture["input"]


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_every_recorded_turn_replays_exactly(path):
    fixture = load(path)
    turns = fixture.get("turns")
    if not turns or not fixture["expect"].get("replays_history", True):
        pytest.skip("fixture records no turn boundaries, or is expected to diverge")
    history = fixture["history"]
    for i, turn in enumerate(turns):
        end = turns[i + 1]["start"] if i + 1 < len(turns) else len(history)
        result = run_recorded_turn(fixture, turn, end)
        assert [e.to_json() for e in result.new_events] == history[turn["start"] : end], f"turn {i}"
        if i + 1 < len(turns):
            assert result.status == "Running", f"turn {i}"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_derived_last_turn_matches_the_recorded_one(path):
    """The derivation used for fixtures without turn boundaries agrees with the recorded boundaries."""
    fixture = load(path)
    if not fixture.get("turns"):
        pytest.skip("no recorded boundaries to compare with")
    recorded = fixture["turns"][-1]
    derived = derive_last_turn(events_of(fixture), fixture.get("execution_id", 1))
    assert (derived["start"], derived["now_ms"]) == (recorded["start"], recorded["now_ms"])
    if fixture["expect"].get("replays_history", True):
        by_derived = run_recorded_turn(fixture, derived)
        by_recorded = run_recorded_turn(fixture, recorded)
        assert [e.to_json() for e in by_derived.new_events] == [e.to_json() for e in by_recorded.new_events]
        assert by_derived.status == by_recorded.status and by_derived.output == by_recorded.output


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_full_history_replay_adds_nothing(path):
    fixture = load(path)
    if not fixture["expect"].get("replays_history", True):
        pytest.skip("expected to diverge")
    result = run_recorded_turn(fixture, {"start": len(fixture["history"]), "now_ms": 0, "messages": []})
    terminal = fixture["history"][-1]["kind"] in ev.TERMINAL_KINDS
    assert result.status == ("Idle" if terminal else "Running")
    assert result.new_events == [] and result.outgoing == []


def test_changed_code_fixture_fails_as_nondeterministic():
    fixture = load(GOLDEN_DIR / "payment_changed.json")
    result = run_recorded_turn(fixture, fixture["turns"][-1])
    assert result.status == "Failed"
    assert result.error["category"] == "Configuration"
    assert result.error["message"].startswith(
        "nondeterministic: schedule mismatch: action=ActivityScheduled{name: 'ChargeV2'"
    )
    assert "vs event=ActivityScheduled#2{name: 'Charge'" in result.error["message"]
    assert result.new_events[-1].kind == ev.ORCHESTRATION_FAILED
