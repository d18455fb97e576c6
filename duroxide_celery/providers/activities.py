"""Activities and sessions: claim a work item (and its session), renew, record the outcome once, give back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import Connection

from ..replay import events as ev
from . import direct_sql
from . import hot_statements as hot
from .base import now_ms, work_item_params
from .dto import (
    ClaimedWorkItem,
    HeldWorkItem,
    PendingActivity,
    RecordedOutcome,
    SessionBusy,
    SessionPolicy,
)
from .flow import ADMITTED, FlowStore
from .schema import instances, sessions, work_items


class _Refused(Exception):
    """Aborts a claim transaction (undoing its writes) with the reason."""

    def __init__(self, busy: SessionBusy):
        self.busy = busy


class ActivityStore(FlowStore):
    """One named operation per state transition of an activity row."""

    def claim_work_item(
        self,
        key: tuple[str, int, int],
        owner: str,
        lease_ms: int,
        policy: SessionPolicy | None = None,
        node: str | None = None,
    ) -> ClaimedWorkItem | SessionBusy | None:
        """Take the lease of an activity row for `owner` (one execution of it); None if it is done, cancelled,
        past its claim deadline, or held by a live lease. A session activity also claims (or renews) its session
        for the worker `node` (default: `owner`), in the same transaction; SessionBusy (and no claim) when another
        live worker owns the session, or when `node` already holds `policy.max_sessions` sessions."""
        now = now_ms()
        try:
            with self.lease_transaction() as conn:
                row = direct_sql.run(
                    conn,
                    hot.CLAIM_WORK_ITEM,
                    work_item_params(key, owner, now=now, lease_ms=lease_ms),
                ).first()
                if row is None:
                    return None
                name, input_json, session_id, tag, orch_name, orch_version, attempts = row
                item = ClaimedWorkItem(
                    *key, name, input_json, session_id, tag, orch_name, orch_version, attempts, owner=owner
                )
                if item.session_id is not None and policy is not None:
                    busy = self._claim_session(conn, item.session_id, node or owner, now, policy)
                    if busy is not None:
                        busy.activity = PendingActivity(*key, item.name, item.session_id, item.tag, busy.owner)
                        raise _Refused(busy)
        except _Refused as refused:
            return refused.busy
        return item

    def _claim_session(
        self, conn: Connection, session_id: str, owner: str, now: int, policy: SessionPolicy
    ) -> SessionBusy | None:
        held = conn.execute(
            select(sessions.c.owner, sessions.c.locked_until).where(sessions.c.session_id == session_id)
        ).first()
        if held is not None and held[0] != owner and held[1] > now:
            return SessionBusy(held[0])
        if held is None or held[0] != owner:  # a session new to this worker counts against its cap
            # Two claims of new sessions by one worker at once must not both count below the cap and both win.
            self.dialect.lock_session_claims(conn, owner)
            owned = conn.execute(
                select(func.count()).where(sessions.c.owner == owner, sessions.c.locked_until > now)
            ).scalar_one()
            if owned >= policy.max_sessions:
                return SessionBusy(None)
        upsert = self.dialect.sql.insert(sessions).values(
            session_id=session_id, owner=owner, locked_until=now + policy.lock_ms, last_activity_at=now
        )
        won = conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[sessions.c.session_id],
                set_={"owner": owner, "locked_until": now + policy.lock_ms, "last_activity_at": now},
                # Only a free, expired or already-ours session: two workers claiming at once get one owner.
                where=or_(sessions.c.owner == owner, sessions.c.locked_until <= now),
            ).returning(sessions.c.owner)
        ).first()
        if won is None:
            winner = conn.execute(select(sessions.c.owner).where(sessions.c.session_id == session_id)).scalar()
            return SessionBusy(winner)
        return None

    def renew_sessions(self, owner: str, lock_ms: int, idle_ms: int, busy: Iterable[str] = ()) -> int:
        """Heartbeat of a worker's sessions: sessions with a running activity (`busy`) count as active now; the
        ones idle past `idle_ms` are released (their next activity may go to any worker); the rest are renewed.
        Returns how many sessions `owner` still holds."""
        now = now_ms()
        busy_ids = sorted(set(busy))
        with self.lease_transaction() as conn:
            if busy_ids:
                conn.execute(
                    update(sessions)
                    .where(sessions.c.owner == owner, sessions.c.session_id.in_(busy_ids))
                    .values(last_activity_at=now)
                )
            conn.execute(
                delete(sessions).where(sessions.c.owner == owner, sessions.c.last_activity_at <= now - idle_ms)
            )
            return conn.execute(
                update(sessions).where(sessions.c.owner == owner).values(locked_until=now + lock_ms)
            ).rowcount

    def release_sessions(self, owner: str) -> int:
        """Give up every session `owner` holds (a worker shutting down without a stable node id)."""
        with self.lease_transaction() as conn:
            return conn.execute(delete(sessions).where(sessions.c.owner == owner)).rowcount

    def renew_work_items(self, held: list[HeldWorkItem], lease_ms: int) -> set[HeldWorkItem]:
        """Extend the leases we hold, given as (activity row, its lease owner); returns those whose row is gone or
        was taken by another lease holder (cancelled or lost)."""
        lost: set[HeldWorkItem] = set()
        with self.lease_transaction() as conn:
            for key, owner in held:
                params = work_item_params(key, owner, lease_ms=lease_ms)
                if not conn.execute(hot.RENEW_WORK_ITEM, params).rowcount:
                    lost.add((key, owner))
        return lost

    def owned_work_items(self, held: list[HeldWorkItem]) -> set[HeldWorkItem]:
        """Which of these (activity row, lease owner) still exist under that owner (a read: no lock taken)."""
        if not held:
            return set()
        instance_ids = sorted({key[0] for key, _ in held})
        owners = sorted({owner for _, owner in held})
        with self.read() as conn:
            rows = conn.execute(hot.OWNED_WORK_ITEMS, {"iids": instance_ids, "owners": owners}).all()
        return {((r[0], r[1], r[2]), r[3]) for r in rows} & set(held)

    def complete_work_item(
        self,
        key: tuple[str, int, int],
        owner: str,
        result: str,
        session_id: str | None = None,
        node: str | None = None,
    ) -> RecordedOutcome | None:
        """Record an activity's result (JSON text) at most once: delete our leased row and queue ActivityCompleted,
        atomically, admitting the held work its freed slot lets in (RecordedOutcome.admitted, to publish). None
        when the row is gone or another lease holder has it (the outcome is dropped). `node` (default `owner`):
        the worker whose session's idle clock restarts."""
        return self._record_outcome(key, owner, ev.MSG_ACTIVITY_COMPLETED, {"result": result}, session_id, node)

    def fail_work_item(
        self,
        key: tuple[str, int, int],
        owner: str,
        details: dict[str, Any],
        session_id: str | None = None,
        node: str | None = None,
    ) -> RecordedOutcome | None:
        """Record an activity's failure (`details`, error_details' shape) at most once, as complete_work_item."""
        return self._record_outcome(key, owner, ev.MSG_ACTIVITY_FAILED, {"details": details}, session_id, node)

    def _record_outcome(
        self,
        key: tuple[str, int, int],
        owner: str,
        kind: str,
        payload: dict[str, Any],
        session_id: str | None,
        node: str | None,
    ) -> RecordedOutcome | None:
        now = now_ms()
        params = work_item_params(key, owner, now=now)
        message = dict(payload, execution_id=key[1], event_id=key[2])
        with self.write() as conn:
            done = self.dialect.complete_work_item(conn, params, kind, message)
            if done is None:
                return None
            if session_id is not None:  # the session's idle clock starts now
                conn.execute(
                    update(sessions)
                    .where(sessions.c.session_id == session_id, sessions.c.owner == (node or owner))
                    .values(last_activity_at=now)
                )
            name, flow_state, others, wake = done
            # The slot this row held goes to the next held row in the same transaction: none leaks, none idles.
            return RecordedOutcome(self.admit(conn, [name], now) if flow_state == ADMITTED else [], others, wake)

    def abandon_work_item(
        self, key: tuple[str, int, int], owner: str, visible_at: int, waiting_reason: str | None = None
    ) -> None:
        """Give an activity row we hold back, visible again at `visible_at`. With `waiting_reason` (a backoff for
        a missing handler), the running instance says why it waits until its next turn clears it."""
        params = work_item_params(key, owner, visible=visible_at)
        with self.write() as conn:
            abandoned = conn.execute(hot.ABANDON_WORK_ITEM, params).rowcount
            if abandoned and waiting_reason is not None:
                conn.execute(
                    update(instances)
                    .where(
                        instances.c.instance_id == key[0],
                        instances.c.current_execution_id == key[1],
                        instances.c.status == "Running",
                    )
                    .values(waiting_reason=waiting_reason)
                )

    def known_tags(self) -> list[str]:
        """Activity tags of pending work (workers with TagFilter.ANY consume each one's queue)."""
        with self.read() as conn:
            rows = conn.execute(select(work_items.c.tag).where(work_items.c.tag.is_not(None)).distinct()).all()
        return [r[0] for r in rows]
