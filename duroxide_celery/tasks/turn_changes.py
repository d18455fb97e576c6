"""What a turn's replay result means for the store: `TurnChanges`, committed by `Store.commit_turn` (pure)."""

from __future__ import annotations

from typing import Any

from ..providers.dto import (
    ChildStart,
    InboxMessage,
    InstanceLease,
    NewTimer,
    NextExecution,
    TurnChanges,
)
from ..replay import events as ev
from ..replay.commands import (
    CancelActivity,
    CancelInstance,
    CancelTimer,
    NotifyParent,
    ScheduleActivity,
    ScheduleTimer,
    StartOrchestration,
    TurnResult,
)
from ..replay.events import REPLAY_VERSION, error_details
from ..types import TERMINAL_STATUSES


def turn_changes(
    lease: InstanceLease, result: TurnResult, consumed: list[int], now: int, default_ttl_ms: int | None
) -> TurnChanges:
    """The rows one turn writes: its history, consumed messages, work, messages to others and new state."""
    changes = TurnChanges(
        history=result.new_events,
        consumed=consumed,
        orchestration=(result.orchestration_name or "", result.orchestration_version or ""),
        default_activity_ttl_ms=default_ttl_ms,
        kv_ops=result.kv_ops,
        custom_status_changed=result.custom_status_changed,
        custom_status=result.custom_status,
    )
    for out in result.outgoing:
        _add_outgoing(changes, lease, out)
    changes.execution, changes.instance = state_changes(result, lease.execution_id, started_fresh(result), now)
    if result.status == "ContinuedAsNew":
        changes.next_execution = NextExecution(result.kv_state, result.continue_as_new or {})
    return changes


def _add_outgoing(changes: TurnChanges, lease: InstanceLease, out: Any) -> None:
    """One command of the replay, as the row (or message) it becomes."""
    if isinstance(out, ScheduleActivity):
        changes.activities.append(out)  # its row's columns, as the replay decided them
    elif isinstance(out, ScheduleTimer):
        changes.timers.append(NewTimer(out.event_id, out.fire_at_ms))
    elif isinstance(out, CancelActivity):
        changes.cancelled_activities.append(out.event_id)
    elif isinstance(out, CancelTimer):
        changes.cancelled_timers.append(out.event_id)
    elif isinstance(out, StartOrchestration):
        changes.child_starts.append(_child_start(lease, out))
    elif isinstance(out, CancelInstance):
        changes.cancels.append(InboxMessage(out.instance_id, ev.MSG_CANCEL, {"reason": out.reason}))
    elif isinstance(out, NotifyParent):
        payload = {
            "execution_id": out.parent_execution_id,
            "event_id": out.parent_event_id,
            "result": out.result,
            "details": out.details,
        }
        changes.parent_notifications.append(InboxMessage(out.parent_instance_id, out.kind, payload))


def _child_start(lease: InstanceLease, out: StartOrchestration) -> ChildStart:
    if not out.parent_instance_id:
        return ChildStart(out.instance_id, out.name, out.input, out.version)
    # An explicit child id that is already taken fails the parent's call at once, instead of hanging it.
    taken = error_details(
        ev.APPLICATION, f"sub-orchestration instance id '{out.instance_id}' already exists", "SubOrchestrationFailed"
    )
    if_taken = InboxMessage(
        lease.instance_id,
        ev.MSG_SUB_FAILED,
        {"execution_id": lease.execution_id, "event_id": out.parent_event_id, "details": taken},
    )
    return ChildStart(out.instance_id, out.name, out.input, out.version, out.parent_event_id, if_taken)


def started_fresh(result: TurnResult) -> bool:
    """Whether this turn started its execution (its first new event is OrchestrationStarted)."""
    return bool(result.new_events) and result.new_events[0].kind == ev.ORCHESTRATION_STARTED


def state_changes(result: TurnResult, exec_id: int, started: bool, now: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The execution row's and the instance row's new column values after this turn."""
    exec_values: dict[str, Any] = {}
    inst_values: dict[str, Any] = {}
    if started:
        exec_values.update(orchestration_version=result.orchestration_version, replay_version=REPLAY_VERSION)
        inst_values["orchestration_version"] = result.orchestration_version
    error_text = result.error["message"] if result.error else None
    if result.status in TERMINAL_STATUSES:
        exec_values.update(status=result.status, output=result.output, error=error_text, completed_at=now)
        inst_values.update(status=result.status, output=result.output, error=error_text)
    elif result.status == "ContinuedAsNew":
        can = result.continue_as_new or {}
        exec_values.update(status="ContinuedAsNew", output=can.get("input"), completed_at=now)
        inst_values.update(current_execution_id=exec_id + 1, status="Running", output=None, error=None)
    return exec_values, inst_values
