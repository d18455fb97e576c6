"""Inbox ingestion: a turn's new inbox messages become history events before the code runs.

A start message becomes OrchestrationStarted; completions, raised events and cancel requests become arrival
events. Filtering keeps history exact: a completion of another execution, of nothing this execution scheduled, or
of work already completed or cancelled is dropped (and counted), so a redelivered or stale message changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import events as ev
from .events import REPLAY_VERSION, HistoryEvent

#: Appends a new event (kind, data, source event id) to the turn's history and returns it.
AppendEvent = Callable[[str, dict[str, Any], "int | None"], HistoryEvent]

#: Completion message kind -> the kind of the schedule event it must complete.
_SCHEDULED_BY_MESSAGE = {
    ev.MSG_ACTIVITY_COMPLETED: ev.ACTIVITY_SCHEDULED,
    ev.MSG_ACTIVITY_FAILED: ev.ACTIVITY_SCHEDULED,
    ev.MSG_TIMER_FIRED: ev.TIMER_CREATED,
    ev.MSG_SUB_COMPLETED: ev.SUB_ORCHESTRATION_SCHEDULED,
    ev.MSG_SUB_FAILED: ev.SUB_ORCHESTRATION_SCHEDULED,
}
_CANCEL_KINDS = {ev.ACTIVITY_CANCEL_REQUESTED, ev.SUB_ORCHESTRATION_CANCEL_REQUESTED}


def start_message(messages: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The message that starts an execution (a start or a continue-as-new), if any."""
    return next((m for m in messages if m["kind"] in (ev.MSG_START, ev.MSG_CONTINUE_AS_NEW)), None)


def started_event_data(start: Mapping[str, Any], name: str, version: str | None) -> dict[str, Any]:
    """The OrchestrationStarted data for a start message (empty when the execution has none), with the name and
    the version this worker resolved it to. Every OrchestrationStarted is built here, so each records the same
    fields, `replay_version` included."""
    return {
        "name": name,
        "version": version,
        "input": start.get("input", "null"),
        "parent_instance": start.get("parent_instance_id"),
        "parent_execution_id": start.get("parent_execution_id"),
        "parent_id": start.get("parent_event_id"),
        "carry_forward_events": start.get("carry_forward_events") or [],
        "initial_custom_status": start.get("initial_custom_status"),
        "replay_version": REPLAY_VERSION,
    }


class InboxFilter:
    """What message filtering must know about history, kept current one event at a time: the open schedules,
    those already completed or cancelled, and whether cancellation was already requested."""

    def __init__(self, history: Iterable[HistoryEvent]) -> None:
        self.scheduled: dict[int, str] = {}
        self.closed: set[int] = set()
        self.cancel_seen = False
        for event in history:
            self.index(event)

    def index(self, e: HistoryEvent) -> None:
        if e.kind in (ev.ACTIVITY_SCHEDULED, ev.TIMER_CREATED, ev.SUB_ORCHESTRATION_SCHEDULED):
            self.scheduled[e.event_id] = e.kind
        elif e.source_event_id is not None and (e.kind in ev.INPUT_KINDS or e.kind in _CANCEL_KINDS):
            self.closed.add(e.source_event_id)
        elif e.kind == ev.ORCHESTRATION_CANCEL_REQUESTED:
            self.cancel_seen = True

    def ingest(self, messages: list[dict[str, Any]], execution_id: int, append: AppendEvent) -> int:
        """Append the arrival events of `messages` (a start message is not among them) through `append`, which
        must call `index` on each; return how many messages were dropped."""
        cancel_seen = self.cancel_seen
        dropped = 0
        cancels = [m for m in messages if m["kind"] == ev.MSG_CANCEL]
        if cancels and not cancel_seen:
            # Cancel beats any completion in the same turn (semantics.md 2.12): it is fed to the code first.
            append(ev.ORCHESTRATION_CANCEL_REQUESTED, {"reason": cancels[0].get("reason") or ""}, None)
        dropped += len(cancels) - (1 if cancels and not cancel_seen else 0)
        for msg in messages:
            kind = msg["kind"]
            if kind == ev.MSG_CANCEL:
                continue
            if kind in _SCHEDULED_BY_MESSAGE:
                source = msg.get("event_id")
                if (
                    not isinstance(source, int)
                    or msg.get("execution_id") != execution_id
                    or self.scheduled.get(source) != _SCHEDULED_BY_MESSAGE[kind]
                    or source in self.closed
                ):
                    dropped += 1  # stale execution, unknown schedule, duplicate or cancelled work
                    continue
                self.closed.add(source)
                append(*_completion(kind, msg), source)
            elif kind == ev.MSG_EXTERNAL_RAISED:
                append(ev.EXTERNAL_EVENT, {"name": msg["name"], "data": msg.get("data")}, None)
            elif kind == ev.MSG_QUEUE_MESSAGE:
                append(ev.QUEUE_EVENT_DELIVERED, {"name": msg["name"], "data": msg.get("data")}, None)
            else:
                dropped += 1  # a second start for a running instance: the first one wins
        return dropped


def _completion(kind: str, msg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The history event (kind, data) a completion message of `kind` becomes."""
    if kind == ev.MSG_ACTIVITY_COMPLETED:
        return ev.ACTIVITY_COMPLETED, {"result": msg.get("result")}
    if kind == ev.MSG_ACTIVITY_FAILED:
        return ev.ACTIVITY_FAILED, {"details": msg["details"]}
    if kind == ev.MSG_TIMER_FIRED:
        return ev.TIMER_FIRED, {"fire_at_ms": msg.get("fire_at_ms")}
    if kind == ev.MSG_SUB_COMPLETED:
        return ev.SUB_ORCHESTRATION_COMPLETED, {"result": msg.get("result")}
    return ev.SUB_ORCHESTRATION_FAILED, {"details": msg["details"]}
