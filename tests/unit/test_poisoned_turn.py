"""poisoned_turn: the failed turn decided without running the code (poison, or code that raised BaseException)
records the same OrchestrationStarted a replayed turn would, then OrchestrationFailed, and tells the parent."""

from __future__ import annotations

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import NotifyParent, TurnInput
from duroxide_celery.replay.engine import run_turn
from duroxide_celery.replay.events import REPLAY_VERSION, HistoryEvent, error_details
from duroxide_celery.replay.poison import poisoned_turn

NOW = 1_700_000_000_000
DETAILS = error_details(ev.POISON, "poison: orchestration c exceeded 5 attempts (max 5)", "Poison")
START = {
    "kind": ev.MSG_START,
    "name": "child",
    "version": None,
    "input": '{"n": 1}',
    "parent_instance_id": "p",
    "parent_execution_id": 2,
    "parent_event_id": 7,
}


def test_before_start_it_records_the_started_event_the_engine_records():
    def child(ctx, _):
        yield ctx.wait_for_event("never")

    ran = run_turn(TurnInput("c", 1, [], [dict(START)], NOW, lambda: "g"), lambda name, version: ("1.0.0", child))
    result = poisoned_turn([], [dict(START)], "child", "1.0.0", DETAILS, NOW)

    assert result.status == "Failed" and result.error == DETAILS
    assert [(e.event_id, e.kind) for e in result.new_events] == [
        (1, ev.ORCHESTRATION_STARTED),
        (2, ev.ORCHESTRATION_FAILED),
    ]
    assert result.new_events[0].data == ran.new_events[0].data
    assert result.new_events[0].data["replay_version"] == REPLAY_VERSION
    assert result.new_events[1].data == {"details": DETAILS}
    assert (result.orchestration_name, result.orchestration_version) == ("child", "1.0.0")
    assert result.outgoing == [NotifyParent("p", 2, 7, ev.MSG_SUB_FAILED, details=DETAILS)]


def test_without_a_start_message_it_names_the_orchestration_it_was_given():
    result = poisoned_turn(
        [], [{"kind": ev.MSG_TIMER_FIRED, "event_id": 3, "execution_id": 1}], "o", None, DETAILS, NOW
    )

    started = result.new_events[0]
    assert (started.kind, started.data["name"], started.data["version"]) == (ev.ORCHESTRATION_STARTED, "o", None)
    assert started.data["parent_instance"] is None
    assert result.outgoing == []


def test_after_start_it_appends_only_the_failure_and_reads_the_parent_from_history():
    started = HistoryEvent(
        1,
        ev.ORCHESTRATION_STARTED,
        {"name": "child", "version": "1.0.0", "parent_instance": "p", "parent_execution_id": 1, "parent_id": 4},
        None,
        NOW,
    )
    scheduled = HistoryEvent(2, ev.ACTIVITY_SCHEDULED, {"name": "A", "input": "null"}, None, NOW)

    result = poisoned_turn([started, scheduled], [], "child", "1.0.0", DETAILS, NOW + 5)

    assert [(e.event_id, e.kind, e.timestamp_ms) for e in result.new_events] == [(3, ev.ORCHESTRATION_FAILED, NOW + 5)]
    assert result.outgoing == [NotifyParent("p", 1, 4, ev.MSG_SUB_FAILED, details=DETAILS)]
