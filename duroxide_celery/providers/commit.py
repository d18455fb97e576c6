"""A turn's commit: every row it writes, in the caller's transaction, fenced by the lease (DESIGN invariant 2)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Connection

from ..replay import events as ev
from ..replay.commands import ScheduleActivity
from ..types import TERMINAL_STATUSES
from . import direct_sql
from . import hot_statements as hot
from .base import now_ms
from .dto import (
    ClaimedWorkItem,
    InlineClaim,
    InstanceLease,
    LeaseLost,
    NewTimer,
    PendingActivity,
    PublishPlan,
    TurnChanges,
    TurnFence,
)
from .flow import ADMITTED, HELD, FlowStore
from .turn_shapes import LeaseKeeper, TurnTransaction
from .turns import TurnStore


class TurnCommit(TurnStore, FlowStore):
    """A turn end to end: `begin_turn` (its transactions, which use every operation of TurnStore and this class),
    `commit_turn` and the row writers it composes (each takes the open connection)."""

    _lease_keeper: LeaseKeeper | None = None
    _keeper_lock = threading.Lock()

    def begin_turn(
        self, instance_id: str, owner: str, lease_ms: int, prefix: tuple[int, int] | None = None
    ) -> TurnTransaction:
        """The transactions of one turn, shaped by the database (turn_shapes.py); use it as a context manager.
        `prefix`: (execution id, event id) of the history the caller holds (its cached engine's)."""
        return self.dialect.begin_turn(self, instance_id, owner, lease_ms, prefix)

    @property
    def lease_keeper(self) -> LeaseKeeper:
        """Renews the leases of turns whose replay runs long outside a transaction (started on first use)."""
        if self._lease_keeper is None:
            with self._keeper_lock:
                if self._lease_keeper is None:
                    self._lease_keeper = LeaseKeeper(self.renew_instance)
        return self._lease_keeper

    def commit_turn(self, lease: InstanceLease, changes: TurnChanges, *, conn: Connection) -> PublishPlan:
        """Write everything a turn decided, in the caller's transaction (TurnTransaction.commit opens it); returns
        what to publish once it commits, and whether more messages may wait (turn_shapes.py)."""
        instance_id, exec_id = lease.instance_id, lease.execution_id
        now = now_ms()
        # An instance that held a slot of its orchestration's start limit gives it back as it ends (flow.py).
        frees_start = lease.flow_state == ADMITTED and changes.instance.get("status") in TERMINAL_STATUSES
        instance_values = dict(changes.instance, flow_state=None) if frees_start else changes.instance
        activities = changes.activities
        # First: the fence (LeaseLost unless the lease is still ours), which keeps the instance row locked until
        # the commit, with the history, the consumed messages and the execution row (one statement on PostgreSQL).
        # It reads which activities have limits: those start held in the store (providers/flow.py).
        instance_values = dict(instance_values, updated_at=now)
        fence = TurnFence(instance_id, lease.owner, exec_id, instance_values, changes.execution, changes.history)
        fence.consumed, fence.activity_names = changes.consumed, sorted({a.name for a in activities})
        fence.refused_pokes = lease.refused_pokes
        limited, more = self.fence_turn(conn, fence)
        claimed = _claimed_row(lease, changes, limited)
        self.add_work_items(
            conn,
            instance_id,
            exec_id,
            changes.orchestration,
            activities,
            now,
            changes.default_activity_ttl_ms,
            limited,
            changes.inline_claim if claimed is not None else None,
        )
        # Activities of a session some worker holds go straight to that worker's session queue.
        owners = self.session_owners(conn, (a.session_id for a in activities if a.session_id))
        freed = self.delete_work_items(conn, instance_id, exec_id, changes.cancelled_activities)
        # The same transaction admits what the new work and the freed slots allow (no slot leaks, none is lost).
        admitted = self.admit(conn, limited | freed, now) if limited or freed else []
        self.add_timers(conn, instance_id, exec_id, changes.timers)
        self.delete_timers(conn, instance_id, exec_id, changes.cancelled_timers)
        pokes = self._send_messages(conn, instance_id, exec_id, changes, now)
        self.apply_kv(conn, instance_id, changes.kv_ops)
        if changes.custom_status_changed:
            self.bump_custom_status(conn, instance_id, changes.custom_status)
        if changes.next_execution is not None:
            self.new_execution(conn, instance_id, exec_id + 1, changes.next_execution.kv_state, now)
            self.enqueue(conn, instance_id, ev.MSG_CONTINUE_AS_NEW, changes.next_execution.payload, now)
            pokes.append((instance_id, changes.orchestration[0] or None))  # the next execution starts now
        if frees_start:  # the next held start of the orchestration, in this transaction
            pokes.extend(self.admit_starts(conn, lease.orchestration_name, now))
        publish = [
            PendingActivity(instance_id, exec_id, a.event_id, a.name, a.session_id, a.tag, owners.get(a.session_id))
            if a.session_id
            else PendingActivity(instance_id, exec_id, a.event_id, a.name, None, a.tag)
            for a in activities
        ]
        inline_id = claimed.event_id if claimed is not None else None
        return PublishPlan(
            activities=[a for a in publish if a.name not in limited and a.event_id != inline_id] + admitted,
            pokes=pokes,
            first_timer_at=min((t.fire_at_ms for t in changes.timers), default=None),
            more=more,
            inline=claimed,
        )

    def _send_messages(
        self, conn: Connection, instance_id: str, exec_id: int, changes: TurnChanges, now: int
    ) -> list[tuple[str, str | None]]:
        """A turn's child starts, cancels and parent notifications; returns the instances to wake for them."""
        pokes: list[tuple[str, str | None]] = []
        for child in changes.child_starts:
            parent = (instance_id, exec_id, child.parent_event_id) if child.parent_event_id is not None else None
            traced = changes.child_trace_context
            if self.create_instance(
                conn, child.instance_id, child.name, child.input, child.version, parent, now, trace_context=traced
            ):
                pokes.append((child.instance_id, child.name))
            elif child.if_taken is not None:
                self.enqueue(conn, child.if_taken.instance_id, child.if_taken.kind, child.if_taken.payload, now)
                pokes.append((child.if_taken.instance_id, None))
        for cancel in changes.cancels:
            status = self.instance_status(conn, cancel.instance_id)
            if status is not None and status not in TERMINAL_STATUSES:
                self.enqueue(conn, cancel.instance_id, cancel.kind, cancel.payload, now)
                pokes.append((cancel.instance_id, None))
        for note in changes.parent_notifications:
            self.enqueue(conn, note.instance_id, note.kind, note.payload, now)
            # The parent's name makes this poke read `orch:<Parent>#<id>` in Flower (one primary-key read).
            pokes.append((note.instance_id, self.orchestration_name(conn, note.instance_id)))
        return pokes

    def fence_turn(self, conn: Connection, fence: TurnFence) -> tuple[set[str], bool]:
        """The first writes of every turn's commit, and its fence (Dialect.fence_turn): they prove the lease is
        still ours (LeaseLost aborts the whole turn otherwise) and row-lock the instance until the commit, so a
        worker that takes over a lease that lapsed mid-turn waits for our commit instead of racing it. (A plain read
        as the fence once let a lapsed lease be taken between the check and the commit: tests/production/
        test_leases.py.) Returns which of the turn's activities have limits, and whether messages may wait (a
        poke was refused while the lease was held)."""
        fenced = self.dialect.fence_turn(conn, fence)
        if fenced is None:
            raise LeaseLost(fence.instance_id)
        return fenced

    def finish_instance(self, conn: Connection, instance_id: str, owner: str, **values: Any) -> None:
        """Write the instance's new state and release its lease, fenced as a turn's commit is (`fence_turn`)."""
        self.fence_turn(conn, TurnFence(instance_id, owner, 0, dict(values, updated_at=now_ms())))

    def add_work_items(
        self,
        conn: Connection,
        instance_id: str,
        execution_id: int,
        orch: tuple[str, str],
        items: list[ScheduleActivity],
        now: int,
        default_ttl_ms: int | None = None,
        limited: set[str] | frozenset[str] = frozenset(),
        inline: InlineClaim | None = None,
    ) -> None:
        """Insert the activities a turn scheduled; one with a ttl (its own, else the runtime default) gets a claim
        deadline, after which it fails unless a worker has claimed it. One whose name is `limited` is inserted held
        and unpublished: only admission (flow.py) publishes it. The `inline` one is inserted claimed by its owner,
        its lease running from the database's clock, as a claim would leave it (tasks/inline.py)."""
        if items:
            rows = [
                {
                    "instance_id": instance_id,
                    "execution_id": execution_id,
                    "event_id": a.event_id,
                    "name": a.name,
                    "input": a.input,
                    "session_id": a.session_id,
                    "tag": a.tag,
                    "orchestration_name": orch[0],
                    "orchestration_version": orch[1],
                    "locked_until": 0,
                    "attempt_count": 0,
                    "visible_at": 0,
                    "created_at": now,
                    "published_at": 0 if a.name in limited else now,
                    "claim_deadline": now + ttl if (ttl := a.ttl_ms or default_ttl_ms) else 0,
                    "flow_key": a.key or "",
                    "priority": a.priority or 0,
                    "flow_state": HELD if a.name in limited else None,
                }
                for a in items
            ]
            if inline is not None:
                claimed = next(r for r in rows if r["event_id"] == inline.event_id)
                rows.remove(claimed)
                claimed.update(lock_owner=inline.owner, attempt_count=1, claim_deadline=0, lease_ms=inline.lease_ms)
                del claimed["locked_until"]
                direct_sql.run(conn, hot.INSERT_CLAIMED_WORK_ITEM, claimed)
            if rows:
                direct_sql.run(conn, hot.INSERT_WORK_ITEMS, rows)

    def session_owners(self, conn: Connection, session_ids: Iterable[str]) -> dict[str, str]:
        """The live owners (node ids) of these sessions; a session nobody holds is absent."""
        ids = sorted(set(session_ids))
        if not ids:
            return {}
        rows = conn.execute(hot.SESSION_OWNERS, {"ids": ids, "now": now_ms()}).all()
        return {r[0]: r[1] for r in rows}

    def delete_work_items(
        self, conn: Connection, instance_id: str, execution_id: int, event_ids: list[int]
    ) -> set[str]:
        """Delete cancelled activity rows of an execution by their scheduled event ids (held ones included: a
        cancelled orchestration leaves nothing waiting); returns the activities whose admitted rows freed a slot."""
        if not event_ids:
            return set()
        rows = conn.execute(hot.DELETE_WORK_ITEMS_OF, {"iid": instance_id, "exec": execution_id, "eids": event_ids})
        return {name for name, state in rows.all() if state == ADMITTED}

    def add_timers(self, conn: Connection, instance_id: str, execution_id: int, items: list[NewTimer]) -> None:
        if items:
            conn.execute(
                hot.INSERT_TIMERS,
                [
                    {
                        "instance_id": instance_id,
                        "execution_id": execution_id,
                        "event_id": t.event_id,
                        "fire_at_ms": t.fire_at_ms,
                    }
                    for t in items
                ],
            )

    def delete_timers(self, conn: Connection, instance_id: str, execution_id: int, event_ids: list[int]) -> None:
        """Delete cancelled timers of an execution by their scheduled event ids."""
        if event_ids:
            conn.execute(hot.DELETE_TIMERS_OF, {"iid": instance_id, "exec": execution_id, "eids": event_ids})

    def apply_kv(self, conn: Connection, instance_id: str, ops: list[tuple[Any, ...]]) -> None:
        """A turn's KV operations, in order: ("set", key, value, stamp), ("clear", key), ("clear_all",)."""
        for op in ops:
            if op[0] == "set":
                _, key, value, stamp = op
                params = {"iid": instance_id, "kv_key": key, "v_value": value, "stamp": stamp}
                if not conn.execute(hot.UPDATE_KV, params).rowcount:
                    row = {"instance_id": instance_id, "key": key, "value": value, "last_updated_at_ms": stamp}
                    conn.execute(hot.INSERT_KV, row)
            elif op[0] == "clear":
                conn.execute(hot.DELETE_KV_KEY, {"iid": instance_id, "kv_key": op[1]})
            else:
                conn.execute(hot.DELETE_KV_ALL, {"iid": instance_id})

    def update_execution(self, conn: Connection, instance_id: str, execution_id: int, **values: Any) -> None:
        """Set columns of an execution row (a turn's commit sets them in its fence: `fence_turn`)."""
        if values:
            columns, params = hot.set_clause(values, iid=instance_id, exec=execution_id)
            conn.execute(hot.update_execution(columns), params)

    def new_execution(
        self, conn: Connection, instance_id: str, execution_id: int, kv_state: dict[str, tuple[str, int]], now: int
    ) -> None:
        """The next execution of a continued-as-new instance, starting with `kv_state`."""
        conn.execute(
            hot.INSERT_EXECUTION,
            {
                "instance_id": instance_id,
                "execution_id": execution_id,
                "status": "Running",
                "started_at": now,
                "event_count": 0,
                "kv_snapshot": json.dumps({k: list(v) for k, v in kv_state.items()}),
            },
        )

    def bump_custom_status(self, conn: Connection, instance_id: str, status: str | None) -> None:
        conn.execute(hot.BUMP_CUSTOM_STATUS, {"iid": instance_id, "v_status": status})

    def orchestration_name(self, conn: Connection, instance_id: str) -> str | None:
        name: str | None = conn.execute(hot.INSTANCE_NAME, {"iid": instance_id}).scalar()
        return name

    def instance_status(self, conn: Connection, instance_id: str) -> str | None:
        status: str | None = conn.execute(hot.INSTANCE_STATUS, {"iid": instance_id}).scalar()
        return status


def _claimed_row(lease: InstanceLease, changes: TurnChanges, limited: set[str]) -> ClaimedWorkItem | None:
    """The activity row the turn's inline claim takes, as a claim returns it; None without a claim, or when its
    activity is held by a limit (admission publishes it) or is not one this turn scheduled."""
    claim = changes.inline_claim
    if claim is None:
        return None
    a = next((a for a in changes.activities if a.event_id == claim.event_id), None)
    if a is None or a.name in limited:
        return None
    name, version = changes.orchestration
    return ClaimedWorkItem(
        lease.instance_id,
        lease.execution_id,
        a.event_id,
        a.name,
        a.input,
        a.session_id,
        a.tag,
        name or None,
        version or None,
        1,
        owner=claim.owner,
    )
