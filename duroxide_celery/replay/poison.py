"""The turn that fails an instance without running its code: poison (its turns keep failing, or its handler
never appeared), or code that raised a BaseException, which would only raise it again.

Its history is built from the same pieces a replayed turn uses (ingest.started_event_data, NotifyParent), so a
poisoned instance's history reads like any other failed one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import events as ev
from .commands import NotifyParent, TurnResult
from .events import HistoryEvent
from .ingest import start_message, started_event_data
from .rewind import UNPROCESSED_MESSAGES


def poisoned_turn(
    history: list[HistoryEvent],
    messages: list[dict[str, Any]],
    name: str,
    version: str | None,
    details: dict[str, Any],
    now_ms: int,
) -> TurnResult:
    """A Failed turn with `details`: OrchestrationStarted first if the execution never started (from its start
    message in `messages`, if any), then OrchestrationFailed, and a SubOrchFailed for the parent if there is one.
    `name` and `version` identify the orchestration (the caller knows them even when no message does)."""
    new_events: list[HistoryEvent] = []
    if history:
        started: Mapping[str, Any] = history[0].data
    else:
        started = started_event_data(start_message(messages) or {}, name, version)
        new_events.append(HistoryEvent(1, ev.ORCHESTRATION_STARTED, started, None, now_ms))
    failed: dict[str, Any] = {"details": details}
    # No event records the messages this turn consumed: keep them on the failure, for Client.rewind to redeliver.
    unprocessed = [dict(m) for m in messages if m.get("kind") not in (ev.MSG_START, ev.MSG_CONTINUE_AS_NEW)]
    if unprocessed:
        failed[UNPROCESSED_MESSAGES] = unprocessed
    new_events.append(HistoryEvent(len(history) + len(new_events) + 1, ev.ORCHESTRATION_FAILED, failed, None, now_ms))
    result = TurnResult(
        status="Failed",
        new_events=new_events,
        error=details,
        orchestration_name=name,
        orchestration_version=version,
    )
    if started.get("parent_instance"):
        result.outgoing.append(
            NotifyParent(
                started["parent_instance"],
                started["parent_execution_id"],
                started["parent_id"],
                ev.MSG_SUB_FAILED,
                details=details,
            )
        )
    return result
