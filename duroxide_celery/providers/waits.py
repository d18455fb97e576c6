"""What a running instance waits on (Client.get_waits): its pending rows (activities, timers, inbox, children)
read together with its current execution's history, whose open subscriptions name the awaited events and queues.

Read-only; every statement is parameterized SQLAlchemy Core over the tables of schema.py.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from ..replay import events as ev
from ..replay.events import HistoryEvent
from ..replay.rewind import effective_history
from ..types import TERMINAL_STATUSES, ActivityWait, ChildWait, EventWait, TimerWait, Waits
from .schema import FLOW_HELD, history, inbox, instances, sessions, timers, work_items

if TYPE_CHECKING:
    from .store import Store


@dataclass
class OpenWork:
    """What the history alone says is still open: schedules without an outcome and subscriptions without an
    arrival, each as its scheduling event."""

    activities: list[HistoryEvent] = field(default_factory=list)
    timers: list[HistoryEvent] = field(default_factory=list)
    events: list[HistoryEvent] = field(default_factory=list)
    queues: list[HistoryEvent] = field(default_factory=list)
    children: list[HistoryEvent] = field(default_factory=list)
    #: Subscription event id -> the arrival that satisfied it (for the timeline); cancelled ones map to None.
    matched: dict[int, HistoryEvent | None] = field(default_factory=dict)


_OUTCOMES = {
    ev.ACTIVITY_SCHEDULED: (ev.ACTIVITY_COMPLETED, ev.ACTIVITY_FAILED, ev.ACTIVITY_CANCEL_REQUESTED),
    ev.TIMER_CREATED: (ev.TIMER_FIRED,),
    ev.SUB_ORCHESTRATION_SCHEDULED: (
        ev.SUB_ORCHESTRATION_COMPLETED,
        ev.SUB_ORCHESTRATION_FAILED,
        ev.SUB_ORCHESTRATION_CANCEL_REQUESTED,
    ),
}
_CLOSING = {kind for kinds in _OUTCOMES.values() for kind in kinds}


def open_work(events: list[HistoryEvent]) -> OpenWork:
    """Walk one execution's history. Positional events pair with the oldest open wait of their name (an event
    with none is recorded but never delivered, semantics.md 2.4); queue messages pair with the oldest open
    dequeue, or are buffered for the next one (2.5); cancelled subscriptions (race losers) close.

    A turn records its arrivals first, then what the code did, but the engine feeds arrivals to the code one at
    a time, whenever the code blocks. So an event can also pair with a wait the code made later in the same turn:
    assumed when an earlier arrival of that turn (a completion, a delivered event) can have unblocked the code
    before the event was fed to it. Complex joins can still fool this; the next turn's history settles it."""
    found = OpenWork()
    closed: set[int] = set()
    waits: dict[str, deque[HistoryEvent]] = {}
    dequeues: dict[str, deque[HistoryEvent]] = {}
    buffered: dict[str, int] = {}
    taken_early: set[int] = set()
    paired_ahead: set[int] = set()  # waits of this turn already given an earlier arrival of the same turn
    turn_of = _turns(events)
    later_waits: dict[int, dict[str, deque[HistoryEvent]]] = {}
    for event in events:
        if event.kind == ev.EXTERNAL_SUBSCRIBED:
            later_waits.setdefault(turn_of[event.event_id], {}).setdefault(event.data.get("name", ""), deque()).append(
                event
            )
    unblocked: dict[int, bool] = {}
    for event in events:
        kind, data, turn = event.kind, event.data, turn_of[event.event_id]
        if kind == ev.ORCHESTRATION_STARTED:
            unblocked[turn] = True  # the code runs from its start in the first turn
            for name, _data in data.get("carry_forward_events") or []:
                buffered[name] = buffered.get(name, 0) + 1
        elif kind in _CLOSING and event.source_event_id is not None:
            closed.add(event.source_event_id)
            unblocked[turn] = True
        elif kind == ev.EXTERNAL_SUBSCRIBED:
            if event.event_id not in paired_ahead:
                waits.setdefault(data.get("name", ""), deque()).append(event)
        elif kind == ev.EXTERNAL_EVENT:
            name = data.get("name", "")
            queue = waits.get(name)
            ahead = later_waits.get(turn, {}).get(name)
            if queue:
                found.matched[queue.popleft().event_id] = event
                unblocked[turn] = True
            elif ahead and unblocked.get(turn):
                sub = ahead.popleft()
                paired_ahead.add(sub.event_id)
                found.matched[sub.event_id] = event
        elif kind == ev.QUEUE_SUBSCRIBED:
            name = data.get("name", "")
            if data.get("try"):
                taken = data.get("taken")
                if taken == "buffer":
                    buffered[name] = max(buffered.get(name, 0) - 1, 0)
                elif isinstance(taken, int):
                    taken_early.add(taken)
            elif buffered.get(name):
                buffered[name] -= 1
                found.matched[event.event_id] = event
            else:
                dequeues.setdefault(name, deque()).append(event)
        elif kind == ev.QUEUE_EVENT_DELIVERED:
            unblocked[turn] = True
            if event.event_id in taken_early:
                continue
            name = data.get("name", "")
            queue = dequeues.get(name)
            if queue:
                found.matched[queue.popleft().event_id] = event
            else:
                buffered[name] = buffered.get(name, 0) + 1
        elif kind in (ev.EXTERNAL_SUBSCRIBED_CANCELLED, ev.QUEUE_SUBSCRIPTION_CANCELLED):
            source = event.source_event_id
            found.matched[source] = None  # type: ignore[index]
            for lanes in (waits, dequeues):
                for queue in lanes.values():
                    for sub in list(queue):
                        if sub.event_id == source:
                            queue.remove(sub)
        elif kind == ev.ORCHESTRATION_CANCEL_REQUESTED:
            unblocked[turn] = True
    for event in events:
        if event.event_id in closed:
            continue
        if event.kind == ev.ACTIVITY_SCHEDULED and not event.data.get("name", "").startswith(ev.SYSCALL_PREFIX):
            found.activities.append(event)
        elif event.kind == ev.TIMER_CREATED:
            found.timers.append(event)
        elif event.kind == ev.SUB_ORCHESTRATION_SCHEDULED:
            found.children.append(event)
    found.events = sorted((e for q in waits.values() for e in q), key=lambda e: e.event_id)
    found.queues = sorted((e for q in dequeues.values() for e in q), key=lambda e: e.event_id)
    return found


def _turns(events: list[HistoryEvent]) -> dict[int, int]:
    """Event id -> turn number. A turn records the arrivals it ingested, then the code's new actions; so a turn
    begins at an arrival that follows anything but an arrival of the same turn time. (A deterministic helper's
    completion, recorded among the actions, is no arrival.)"""
    syscalls = {
        e.event_id
        for e in events
        if e.kind == ev.ACTIVITY_SCHEDULED and e.data.get("name", "").startswith(ev.SYSCALL_PREFIX)
    }

    def arrival(e: HistoryEvent) -> bool:
        return e.kind in ev.INPUT_KINDS and e.source_event_id not in syscalls

    turn_of: dict[int, int] = {}
    turn = 0
    previous: HistoryEvent | None = None
    for event in events:
        if (
            previous is not None
            and arrival(event)
            and not (
                (arrival(previous) or previous.kind == ev.ORCHESTRATION_STARTED)
                and previous.timestamp_ms == event.timestamp_ms
            )
        ):
            turn += 1
        turn_of[event.event_id] = turn
        previous = event
    return turn_of


def read_history(conn: Any, instance_id: str, execution_id: int) -> list[HistoryEvent]:
    """One execution's history, decoded, in event order."""
    rows = conn.execute(
        select(history.c.event_id, history.c.kind, history.c.data, history.c.source_event_id, history.c.timestamp_ms)
        .where(history.c.instance_id == instance_id, history.c.execution_id == execution_id)
        .order_by(history.c.event_id)
    ).all()
    return [HistoryEvent(eid, kind, json.loads(data), src, ts) for eid, kind, data, src, ts in rows]


def read_waits(store: Store, instance_id: str, now_ms: int | None = None) -> Waits | None:
    """What the instance waits on right now; None if there is no such instance."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    with store.read() as conn:
        row = (
            conn.execute(
                select(
                    instances.c.status,
                    instances.c.current_execution_id,
                    instances.c.waiting_reason,
                    instances.c.next_attempt_at,
                ).where(instances.c.instance_id == instance_id)
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        status, execution_id = row["status"], row["current_execution_id"]
        if status in TERMINAL_STATUSES:
            return Waits(instance_id=instance_id, status=status, execution_id=execution_id)
        # As replay sees it: events set aside by a rewind (replay/rewind.py) close nothing.
        open_ = open_work(effective_history(read_history(conn, instance_id, execution_id)))
        items = conn.execute(
            select(
                work_items.c.event_id,
                work_items.c.name,
                work_items.c.tag,
                work_items.c.session_id,
                work_items.c.attempt_count,
                work_items.c.lock_owner,
                work_items.c.locked_until,
                work_items.c.visible_at,
                work_items.c.created_at,
                work_items.c.flow_state,
            )
            .where(work_items.c.instance_id == instance_id, work_items.c.execution_id == execution_id)
            .order_by(work_items.c.event_id)
        ).all()
        session_ids = sorted({r.session_id for r in items if r.session_id is not None})
        owners = (
            dict(
                conn.execute(
                    select(sessions.c.session_id, sessions.c.owner).where(
                        sessions.c.session_id.in_(session_ids), sessions.c.locked_until > now
                    )
                ).all()
            )
            if session_ids
            else {}
        )
        timer_rows = conn.execute(
            select(timers.c.event_id, timers.c.fire_at_ms)
            .where(timers.c.instance_id == instance_id, timers.c.execution_id == execution_id)
            .order_by(timers.c.fire_at_ms, timers.c.event_id)
        ).all()
        child_ids = [e.data.get("instance", "") for e in open_.children]
        child_status = (
            dict(
                conn.execute(
                    select(instances.c.instance_id, instances.c.status).where(instances.c.instance_id.in_(child_ids))
                ).all()
            )
            if child_ids
            else {}
        )
        pending = conn.execute(select(func.count()).where(inbox.c.instance_id == instance_id)).scalar() or 0

    # Work held by a flow-control limit waits in the store: say which limit (one more read, only when some is held).
    held_by = (
        {h.event_id: h.reason for h in store.held_activities(instance_id) if h.execution_id == execution_id}
        if any(r.flow_state == FLOW_HELD for r in items)
        else {}
    )
    scheduled_at = {e.event_id: e.timestamp_ms for e in open_.activities}
    activities = [
        ActivityWait(
            event_id=r.event_id,
            name=r.name,
            tag=r.tag,
            session_id=r.session_id,
            attempt=r.attempt_count,
            state="held" if r.event_id in held_by else _activity_state(r.lock_owner, r.locked_until, r.visible_at, now),
            claimed_by=r.lock_owner if r.lock_owner and r.locked_until > now else None,
            claimed_until=r.locked_until if r.lock_owner and r.locked_until > now else None,
            scheduled_at=scheduled_at.get(r.event_id, r.created_at),
            visible_at=r.visible_at,
            session_owner=owners.get(r.session_id) if r.session_id else None,
            held_by=held_by.get(r.event_id),
        )
        for r in items
    ]
    with_rows = {r.event_id for r in items}
    # Scheduled, not in the work queue and with no outcome in history: its completion is in the inbox.
    activities += [
        ActivityWait(
            event_id=e.event_id,
            name=e.data.get("name", ""),
            tag=e.data.get("tag"),
            session_id=e.data.get("session_id"),
            attempt=0,
            state="delivered",
            claimed_by=None,
            claimed_until=None,
            scheduled_at=e.timestamp_ms,
        )
        for e in open_.activities
        if e.event_id not in with_rows
    ]
    created = {e.event_id: e.timestamp_ms for e in open_.timers}
    return Waits(
        instance_id=instance_id,
        status=status,
        execution_id=execution_id,
        activities=tuple(sorted(activities, key=lambda a: a.event_id)),
        timers=tuple(TimerWait(t.event_id, t.fire_at_ms, created.get(t.event_id, 0)) for t in timer_rows),
        events=tuple(EventWait(e.event_id, e.data.get("name", ""), e.timestamp_ms) for e in open_.events),
        queues=tuple(EventWait(e.event_id, e.data.get("name", ""), e.timestamp_ms) for e in open_.queues),
        children=tuple(
            ChildWait(
                e.event_id,
                e.data.get("instance", ""),
                e.data.get("name", ""),
                child_status.get(e.data.get("instance", ""), "NotFound"),
                e.timestamp_ms,
            )
            for e in open_.children
        ),
        waiting_reason=row["waiting_reason"],
        retry_at=row["next_attempt_at"] if row["next_attempt_at"] > now else None,
        inbox_pending=int(pending),
    )


def _activity_state(lock_owner: str | None, locked_until: int, visible_at: int, now: int) -> str:
    if lock_owner and locked_until > now:
        return "running"
    if visible_at > now:
        return "backing off"
    return "queued"
