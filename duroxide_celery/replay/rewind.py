"""Rewind: which events of a failed execution to set aside so that it resumes from the failed step. Pure.

A rewind appends one `OrchestrationRewound {reason, rewound_event_ids, error, at_ms}` event and deletes nothing:
the rewound events stay in the stored history (the audit trail), and `effective_history` replaces them with
inert placeholders before replay, so the engine sees the execution as it was just before it failed. Event ids
stay dense (the engine addresses events by position), and new events follow the rewind.

What is rewound (`plan_rewind`):
- the terminal OrchestrationFailed;
- the failed steps: ActivityFailed / SubOrchestrationFailed events after the last step the code scheduled (so
  every attempt the code already handled, such as earlier retry attempts, stays), excluding completions of work
  the code had dropped (race losers carry a cancel breadcrumb);
- whatever the code recorded after that point that is not a scheduled step: cancel breadcrumbs (the race that
  the failure decided, the cancels of the terminal turn), custom status, KV writes, detached starts and
  utc_now/new_guid results. Replay records them again if the code, now deployed, still does those things.
With no failed step (the code raised, replay found nondeterminism, or the instance was poisoned), the point is
just after the last scheduled step and the last input: the last turn runs again with the code now deployed.

Scheduled steps are never rewound: a step with no effective completion is open again (`RewindPlan.reopened`),
and the caller makes sure each has its work (an activity work item for the same scheduled event id, a timer, a
child that will report back), so a rerun completion matches the schedule it always had.

Alternatives considered: deleting events (loses the audit trail and reuses ids the store keys on); copying the
kept events into a new execution (renumbers ids and changes sub-orchestration ids derived from them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .events import HistoryEvent

#: The kind a rewound event has in the effective history: no replay rule matches it.
REWOUND_PLACEHOLDER = "RewoundEvent"

#: On an OrchestrationFailed written without running the code (poison, a BaseException): the inbox messages that
#: turn consumed, which no history event records; a rewind puts them back in the inbox.
UNPROCESSED_MESSAGES = "unprocessed_messages"

_FAILURES = frozenset({ev.ACTIVITY_FAILED, ev.SUB_ORCHESTRATION_FAILED})
_COMPLETION_MESSAGES = frozenset(
    {ev.MSG_ACTIVITY_COMPLETED, ev.MSG_ACTIVITY_FAILED, ev.MSG_TIMER_FIRED, ev.MSG_SUB_COMPLETED, ev.MSG_SUB_FAILED}
)
_CANCEL_BREADCRUMBS = frozenset({ev.ACTIVITY_CANCEL_REQUESTED, ev.SUB_ORCHESTRATION_CANCEL_REQUESTED})
#: The reasons a parent's cancel gives its children (engine.py: a parent that ended, or was canceled, with the
#: child still running). Rewinding that parent takes such a cancel back; a cancel someone asked for stays.
PARENT_CANCEL_REASONS = frozenset({"parent dropped sub-orchestration future", "parent canceled"})


class CannotRewind(Exception):
    """This execution cannot be rewound; str() says why (the provider raises errors.RewindRefused with it)."""


@dataclass(frozen=True)
class OpenStep:
    """A scheduled step with no effective completion after the rewind: `kind` is the schedule event's kind
    (ActivityScheduled, TimerCreated or SubOrchestrationScheduled) and `event` the schedule event itself."""

    kind: str
    event: HistoryEvent


@dataclass
class RewindPlan:
    """What one rewind appends and what must run again."""

    #: The OrchestrationRewound event to append.
    event: HistoryEvent
    #: The events it sets aside, and the ones replay keeps (both without earlier rewinds' events).
    rewound: list[HistoryEvent]
    kept: list[HistoryEvent]
    #: Steps scheduled and not completed in `kept`: each needs its work to exist again.
    reopened: list[OpenStep] = field(default_factory=list)
    #: The schedule event ids of the failed steps rerun; empty when the last turn itself runs again.
    failed_steps: list[int] = field(default_factory=list)
    #: Inbox messages to deliver again ({"kind": ..., payload fields}): those the failed turn consumed unrecorded.
    redeliver: list[dict[str, Any]] = field(default_factory=list)
    #: Whether rewound events had written KV or custom status (the stored state then follows `kept`).
    kv_changed: bool = False
    custom_status_changed: bool = False


def rewound_ids(history: Iterable[HistoryEvent]) -> set[int]:
    """Ids of the events set aside by the OrchestrationRewound events of `history`."""
    hidden: set[int] = set()
    for e in history:
        if e.kind == ev.ORCHESTRATION_REWOUND:
            hidden.update(int(i) for i in e.data.get("rewound_event_ids") or ())
    return hidden


def effective_history(history: Sequence[HistoryEvent]) -> list[HistoryEvent]:
    """`history` as replay must see it: each rewound event replaced by a placeholder with the same id (no kind,
    no source, so no replay rule applies to it). Returns a new list; without rewinds, the same events."""
    hidden = rewound_ids(history)
    if not hidden:
        return list(history)
    return [
        HistoryEvent(e.event_id, REWOUND_PLACEHOLDER, {"kind": e.kind}, None, e.timestamp_ms)
        if e.event_id in hidden
        else e
        for e in history
    ]


def _is_syscall_schedule(e: HistoryEvent) -> bool:
    return e.kind == ev.ACTIVITY_SCHEDULED and str(e.data.get("name", "")).startswith(ev.SYSCALL_PREFIX)


def _is_scheduled_step(e: HistoryEvent) -> bool:
    """An event that makes the code wait on something outside it (kept by every rewind)."""
    if e.kind == ev.ACTIVITY_SCHEDULED:
        return not _is_syscall_schedule(e)
    if e.kind == ev.QUEUE_SUBSCRIBED:
        return not e.data.get("try")
    return e.kind in (ev.TIMER_CREATED, ev.SUB_ORCHESTRATION_SCHEDULED, ev.EXTERNAL_SUBSCRIBED)


def plan_rewind(
    history: Sequence[HistoryEvent],
    reason: str,
    now_ms: int,
    execution_id: int | None = None,
    *,
    undo_parent_cancel: bool = False,
) -> RewindPlan:
    """Plan the rewind of a failed execution's history (all its stored events, rewound ones included);
    `execution_id` is that execution's (completions recorded for another one are not redelivered). With
    `undo_parent_cancel` (a child rewound with its parent), a cancel the parent sent as it failed is rewound too.

    Raises CannotRewind when the execution has not failed, or failed because it was canceled."""
    view = effective_history(history)
    live = [e for e in view if e.kind not in (REWOUND_PLACEHOLDER, ev.ORCHESTRATION_REWOUND)]
    if not live or live[0].kind != ev.ORCHESTRATION_STARTED:
        raise CannotRewind("its history has no OrchestrationStarted event")
    terminal = live[-1]
    if terminal.kind != ev.ORCHESTRATION_FAILED:
        raise CannotRewind(f"its history ends with {terminal.kind}, not OrchestrationFailed")
    details = terminal.data.get("details") or {}
    cancels = [e for e in live if e.kind == ev.ORCHESTRATION_CANCEL_REQUESTED]
    undone: set[int] = set()
    if details.get("kind") == "Cancelled":
        if not (undo_parent_cancel and cancels and all(e.data.get("reason") in PARENT_CANCEL_REASONS for e in cancels)):
            raise CannotRewind(f"it was canceled ({details.get('message', '')}); restart it instead")
        undone = {e.event_id for e in cancels}
    body = [e for e in live[:-1] if e.event_id not in undone]
    syscalls = {e.event_id for e in body if _is_syscall_schedule(e)}

    def is_input(e: HistoryEvent) -> bool:
        return e.kind in ev.INPUT_KINDS and e.source_event_id not in syscalls

    last_step = max((i for i, e in enumerate(body) if _is_scheduled_step(e)), default=0)
    dropped = {e.source_event_id for e in body if e.kind in _CANCEL_BREADCRUMBS}
    causes = [
        i for i, e in enumerate(body) if i > last_step and e.kind in _FAILURES and e.source_event_id not in dropped
    ]
    if causes:
        cut = causes[0]
    else:
        last_input = max((i for i, e in enumerate(body) if is_input(e)), default=0)
        cut = max(last_step, last_input) + 1
    rewound_set = {body[i].event_id for i in causes} | undone
    for e in body[cut:]:
        # After the cut, everything the code recorded goes (it records it again on replay); arrivals stay.
        if e.kind in ev.ACTION_KINDS or e.source_event_id in syscalls:
            rewound_set.add(e.event_id)
    rewound_set.add(terminal.event_id)
    rewound = [e for e in live if e.event_id in rewound_set]
    kept = [e for e in live if e.event_id not in rewound_set]
    event = HistoryEvent(
        len(history) + 1,
        ev.ORCHESTRATION_REWOUND,
        {
            "reason": reason,
            "rewound_event_ids": sorted(rewound_set),
            "error": str(details.get("message", "")).split("\n", 1)[0],
            "at_ms": now_ms,
        },
        None,
        now_ms,
    )
    redeliver = [
        dict(m)
        for m in terminal.data.get(UNPROCESSED_MESSAGES) or []
        if m.get("kind") not in (ev.MSG_START, ev.MSG_CONTINUE_AS_NEW)
        and not (m.get("kind") in _COMPLETION_MESSAGES and execution_id not in (None, m.get("execution_id")))
    ]
    # A step whose completion is redelivered does not run again.
    arriving = {m.get("event_id") for m in redeliver if m.get("kind") in _COMPLETION_MESSAGES}
    return RewindPlan(
        event=event,
        rewound=rewound,
        kept=kept,
        reopened=[s for s in open_steps(kept) if s.event.event_id not in arriving],
        redeliver=redeliver,
        failed_steps=[int(body[i].source_event_id or 0) for i in causes],
        kv_changed=any(e.kind in (ev.KEY_VALUE_SET, ev.KEY_VALUE_CLEARED, ev.KEY_VALUES_CLEARED) for e in rewound),
        custom_status_changed=any(e.kind == ev.CUSTOM_STATUS_UPDATED for e in rewound),
    )


def open_steps(events: Iterable[HistoryEvent]) -> list[OpenStep]:
    """Activities (not syscalls), timers and sub-orchestrations scheduled in `events` with no completion and no
    cancel breadcrumb among them, in schedule order."""
    scheduled: dict[int, HistoryEvent] = {}
    closed: set[int] = set()
    for e in events:
        if e.kind in (ev.ACTIVITY_SCHEDULED, ev.TIMER_CREATED, ev.SUB_ORCHESTRATION_SCHEDULED):
            if not _is_syscall_schedule(e):
                scheduled[e.event_id] = e
        elif e.source_event_id is not None and (e.kind in ev.INPUT_KINDS or e.kind in _CANCEL_BREADCRUMBS):
            closed.add(e.source_event_id)
    return [OpenStep(e.kind, e) for eid, e in scheduled.items() if eid not in closed]


def kv_after(snapshot: dict[str, tuple[str, int]], events: Iterable[HistoryEvent]) -> dict[str, tuple[str, int]]:
    """The KV state after `events`, starting from the execution's snapshot (as replay computes it)."""
    state = dict(snapshot)
    for e in events:
        if e.kind == ev.KEY_VALUE_SET:
            state[str(e.data["key"])] = (str(e.data["value"]), int(e.data.get("last_updated_at_ms") or 0))
        elif e.kind == ev.KEY_VALUE_CLEARED:
            state.pop(str(e.data["key"]), None)
        elif e.kind == ev.KEY_VALUES_CLEARED:
            state.clear()
    return state


def custom_status_after(events: Sequence[HistoryEvent]) -> str | None:
    """The custom status after `events`: the last CustomStatusUpdated, else the one the execution started with."""
    status: Any = events[0].data.get("initial_custom_status") if events else None
    for e in events:
        if e.kind == ev.CUSTOM_STATUS_UPDATED:
            status = e.data.get("status")
    return None if status is None else str(status)
