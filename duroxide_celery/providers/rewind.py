"""Client.rewind in the store: one transaction puts a Failed instance (and the failed children its failure came
from) back to Running, from the failed step. The plan is replay/rewind.py's; this module reads and writes rows.

For each instance rewound: the OrchestrationRewound event is appended (nothing is deleted), the instance and its
execution are Running again, every step the plan reopens gets its work back (an activity work item for the same
scheduled event id, a timer, a completed child's result re-delivered, a failed child rewound with it), KV and
custom status follow the effective history when rewound events had changed them, and a `Rewound` inbox message
wakes the instance so its next turn replays with the code now deployed. The caller publishes after the commit.

With a resolver (the orchestration code, from a Registry), the effective history is replayed in-process before
anything is written, so a history the current code no longer reproduces is refused instead of failing again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from ..errors import InstanceNotFound, RewindRefused
from ..replay import TurnInput, run_turn
from ..replay import events as ev
from ..replay.events import HistoryEvent
from ..replay.rewind import CannotRewind, RewindPlan, custom_status_after, kv_after, plan_rewind
from .schema import executions, history, inbox, instances, kv, timers, work_items
from .store import PendingActivity, Store, now_ms

#: resolve(name, version) -> (version, handler) or None: a Registry's resolve_orchestration.
Resolver = Callable[[str, "str | None"], Any]


@dataclass
class RewindOutcome:
    """What the committed rewind needs published: wake-ups, activity tasks and the earliest new timer."""

    #: (instance id, orchestration name) of every instance rewound, the one asked for first.
    rewound: list[tuple[str, str]] = field(default_factory=list)
    activities: list[PendingActivity] = field(default_factory=list)
    earliest_timer: int | None = None


def rewind_instance(store: Store, instance_id: str, reason: str, resolve: Resolver | None = None) -> RewindOutcome:
    """Rewind `instance_id` in one transaction; raises InstanceNotFound or RewindRefused (nothing written)."""
    outcome = RewindOutcome()
    now = now_ms()
    with store.write() as conn:
        _rewind(conn, instance_id, reason, resolve, now, outcome, child_of=None)
    return outcome


def _rewind(
    conn: Connection,
    instance_id: str,
    reason: str,
    resolve: Resolver | None,
    now: int,
    outcome: RewindOutcome,
    child_of: str | None,
) -> None:
    row = conn.execute(select(instances).where(instances.c.instance_id == instance_id).with_for_update()).mappings()
    inst = row.first()
    who = f"sub-orchestration {instance_id} of {child_of}" if child_of else f"instance {instance_id}"
    if inst is None:
        if child_of is None:
            raise InstanceNotFound(f"Instance {instance_id} not found")
        raise RewindRefused(f"cannot rewind {child_of}: its {who} no longer exists")
    if inst["status"] != "Failed":
        raise RewindRefused(
            f"cannot rewind {who}: it is {inst['status']}; only a Failed instance can be rewound"
            + (" (restart a finished instance with Client.restart)" if inst["status"] == "Completed" else "")
        )
    exec_id = int(inst["current_execution_id"])
    stored = _history(conn, instance_id, exec_id)
    try:
        plan = plan_rewind(stored, reason, now, exec_id, undo_parent_cancel=child_of is not None)
    except CannotRewind as exc:
        raise RewindRefused(f"cannot rewind {who}: {exc}") from None
    snapshot = _kv_snapshot(conn, instance_id, exec_id)
    if resolve is not None:
        _check_replays(instance_id, exec_id, stored + [plan.event], plan, snapshot, resolve, who)
    outcome.rewound.append((instance_id, str(inst["orchestration_name"])))
    for step in plan.reopened:
        if step.kind == ev.SUB_ORCHESTRATION_SCHEDULED:
            _reopen_child(conn, instance_id, exec_id, step.event, reason, resolve, now, outcome)
    _write(conn, inst, exec_id, plan, snapshot, now, outcome)


def _history(conn: Connection, instance_id: str, exec_id: int) -> list[HistoryEvent]:
    rows = conn.execute(
        select(history.c.event_id, history.c.kind, history.c.data, history.c.source_event_id, history.c.timestamp_ms)
        .where(history.c.instance_id == instance_id, history.c.execution_id == exec_id)
        .order_by(history.c.event_id)
    ).all()
    return [HistoryEvent(eid, kind, json.loads(data), src, ts) for eid, kind, data, src, ts in rows]


def _kv_snapshot(conn: Connection, instance_id: str, exec_id: int) -> dict[str, tuple[str, int]]:
    """The KV state the execution began with (the first execution begins with none)."""
    if exec_id == 1:
        return {}
    text = conn.execute(
        select(executions.c.kv_snapshot).where(
            executions.c.instance_id == instance_id, executions.c.execution_id == exec_id
        )
    ).scalar()
    return {k: (v[0], v[1]) for k, v in json.loads(text or "{}").items()}


def _check_replays(
    instance_id: str,
    exec_id: int,
    rewound_history: list[HistoryEvent],
    plan: RewindPlan,
    snapshot: dict[str, tuple[str, int]],
    resolve: Resolver,
    who: str,
) -> None:
    """Replay the effective history with the code now deployed, as the next turn will: refuse a history it no
    longer reproduces, and a rewind whose rerun turn would fail again at once."""
    started = rewound_history[0].data
    inp = TurnInput(
        instance_id=instance_id,
        execution_id=exec_id,
        history=rewound_history,
        messages=[],
        now_ms=plan.event.timestamp_ms,
        new_guid=lambda: str(uuid.uuid4()),
        kv_snapshot=snapshot,
        kv_reader=lambda _other, _key: None,  # only a new step reads it, and the check keeps nothing new
    )
    result = run_turn(inp, resolve)
    if result.status == "Unregistered":
        raise RewindRefused(
            f"cannot rewind {who}: orchestration '{started.get('name')}' version {started.get('version')} is not "
            "in the registry given to check the rewind"
        )
    if result.status != "Failed":
        return
    message = str((result.error or {}).get("message", ""))
    if (result.error or {}).get("kind") == "Nondeterminism":
        raise RewindRefused(f"cannot rewind {who}: its history no longer replays with the code now deployed: {message}")
    raise RewindRefused(
        f"cannot rewind {who}: with the code now deployed it fails again before any step runs: "
        f"{message.splitlines()[0] if message else ''}"
    )


def _reopen_child(
    conn: Connection,
    parent_id: str,
    exec_id: int,
    scheduled: HistoryEvent,
    reason: str,
    resolve: Resolver | None,
    now: int,
    outcome: RewindOutcome,
) -> None:
    """A child the parent waits on again: rewind it if it failed, re-deliver its result if it completed, leave it
    if it runs (it reports back when it ends)."""
    child_id = str(scheduled.data.get("instance"))
    child = conn.execute(
        select(instances.c.status, instances.c.parent_instance_id, instances.c.output, instances.c.orchestration_name)
        .where(instances.c.instance_id == child_id)
        .with_for_update()
    ).first()
    if child is None:
        raise RewindRefused(f"cannot rewind {parent_id}: its sub-orchestration {child_id} no longer exists")
    link = conn.execute(
        select(history.c.data)
        .where(history.c.instance_id == child_id, history.c.event_id == 1)
        .order_by(history.c.execution_id)
        .limit(1)
    ).scalar()
    started = json.loads(link) if link else {}
    if child[1] != parent_id or (
        link is not None
        and (started.get("parent_execution_id"), started.get("parent_id")) != (exec_id, scheduled.event_id)
    ):
        raise RewindRefused(
            f"cannot rewind {parent_id}: sub-orchestration id {child_id} belongs to another instance (it existed "
            "before the parent scheduled it); schedule the child under a free id"
        )
    if child[0] == "Failed":
        _rewind(conn, child_id, reason, resolve, now, outcome, child_of=parent_id)
    elif child[0] == "Completed":
        payload = {"execution_id": exec_id, "event_id": scheduled.event_id, "result": child[2], "details": None}
        conn.execute(
            insert(inbox).values(
                instance_id=parent_id, kind=ev.MSG_SUB_COMPLETED, payload=json.dumps(payload), created_at=now
            )
        )


def _write(
    conn: Connection,
    inst: Any,
    exec_id: int,
    plan: RewindPlan,
    snapshot: dict[str, tuple[str, int]],
    now: int,
    outcome: RewindOutcome,
) -> None:
    instance_id = str(inst["instance_id"])
    e = plan.event
    conn.execute(
        insert(history).values(
            instance_id=instance_id,
            execution_id=exec_id,
            event_id=e.event_id,
            kind=e.kind,
            source_event_id=None,
            timestamp_ms=e.timestamp_ms,
            data=json.dumps(e.data, separators=(",", ":")),
        )
    )
    key = (work_items.c.instance_id == instance_id, work_items.c.execution_id == exec_id)
    for step in plan.reopened:
        data, eid = step.event.data, step.event.event_id
        if step.kind == ev.ACTIVITY_SCHEDULED:
            if conn.execute(select(work_items.c.event_id).where(*key, work_items.c.event_id == eid)).first():
                continue  # still pending (never completed): it runs as it is
            ttl = data.get("ttl_ms")
            conn.execute(
                insert(work_items).values(
                    instance_id=instance_id,
                    execution_id=exec_id,
                    event_id=eid,
                    name=data["name"],
                    input=data["input"],
                    session_id=data.get("session_id"),
                    tag=data.get("tag"),
                    orchestration_name=inst["orchestration_name"],
                    orchestration_version=inst["orchestration_version"],
                    locked_until=0,
                    attempt_count=0,
                    visible_at=0,
                    created_at=now,
                    published_at=now,
                    claim_deadline=now + int(ttl) if ttl else 0,
                )
            )
            outcome.activities.append(
                PendingActivity(instance_id, exec_id, eid, data["name"], data.get("session_id"), data.get("tag"))
            )
        elif step.kind == ev.TIMER_CREATED:
            exists = conn.execute(
                select(timers.c.event_id).where(
                    timers.c.instance_id == instance_id, timers.c.execution_id == exec_id, timers.c.event_id == eid
                )
            ).first()
            if not exists:
                fire_at = int(data.get("fire_at_ms") or now)
                conn.execute(
                    insert(timers).values(
                        instance_id=instance_id, execution_id=exec_id, event_id=eid, fire_at_ms=fire_at
                    )
                )
                earliest = outcome.earliest_timer
                outcome.earliest_timer = fire_at if earliest is None else min(earliest, fire_at)
    if plan.kv_changed:
        conn.execute(delete(kv).where(kv.c.instance_id == instance_id))
        state = kv_after(snapshot, plan.kept)
        if state:
            conn.execute(
                insert(kv),
                [
                    {"instance_id": instance_id, "key": k, "value": v, "last_updated_at_ms": stamp}
                    for k, (v, stamp) in state.items()
                ],
            )
    values: dict[str, Any] = {
        "status": "Running",
        "output": None,
        "error": None,
        "attempt_count": 0,
        "next_attempt_at": 0,
        "waiting_reason": None,
        "updated_at": now,
    }
    if plan.custom_status_changed:
        values["custom_status"] = custom_status_after(plan.kept)
        values["custom_status_version"] = instances.c.custom_status_version + 1
    # Guarded by status: a concurrent rewind of the same instance finds it Running and changes nothing.
    changed = conn.execute(
        update(instances).where(instances.c.instance_id == instance_id, instances.c.status == "Failed").values(values)
    ).rowcount
    if not changed:
        raise RewindRefused(f"cannot rewind {instance_id}: it changed while being rewound; try again")
    conn.execute(
        update(executions)
        .where(executions.c.instance_id == instance_id, executions.c.execution_id == exec_id)
        .values(status="Running", output=None, error=None, completed_at=None)
    )
    messages = [(m.pop("kind"), m) for m in (dict(m) for m in plan.redeliver)] + [(ev.MSG_REWOUND, {})]
    conn.execute(
        insert(inbox),
        [{"instance_id": instance_id, "kind": k, "payload": json.dumps(p), "created_at": now} for k, p in messages],
    )
