"""Due work: durable timers, activities past their claim deadline, backoffs that end, and the recovery sweep."""

from __future__ import annotations

from sqlalchemy import and_, delete, or_, select, tuple_, update

from ..replay import events as ev
from ..replay.events import error_details
from . import hot_statements as hot
from .base import now_ms
from .dto import (
    PendingActivity,
)
from .flow import ADMITTED, HELD, FlowStore
from .schema import inbox, instances, sessions, work_items


class DueWorkStore(FlowStore):
    """What beat, the embedded scheduler and the recovery sweep ask the store."""

    def next_due(self) -> tuple[int | None, int | None, int | None]:
        """When the next durable timer fires, when the next unclaimed activity reaches its claim deadline and when
        work held by a rate limit may next be admitted, in one round trip: beat and the embedded scheduler ask this
        on every tick."""
        with self.read() as conn:
            timer, deadline, admission = conn.execute(hot.NEXT_DUE).one()
        return timer, deadline, admission

    def expire_unclaimed(self, limit: int = 500) -> tuple[list[tuple[str, str | None]], list[PendingActivity]]:
        """Fail the activities that no worker claimed before their claim deadline (ttl_ms): the rows are deleted
        (one statement) and an ActivityFailed queued for each instance, in one transaction; returns the instances
        to poke, and the held work the slots of expired admitted rows let in (to publish). A claim clears the
        deadline, and a row is deleted by one caller only, so this races safely with claims. A row held by a limit
        past its ttl expires too: the ttl bounds the wait for a worker, whatever kept it waiting."""
        now = now_ms()
        is_due = and_(work_items.c.claim_deadline > 0, work_items.c.claim_deadline <= now)
        with self.read() as conn:  # the common case, nothing expired, takes no write lock (SQLite) to learn it
            if conn.execute(hot.EXPIRED_WORK_ITEM, {"now": now}).first() is None:
                return [], []
        key = (work_items.c.instance_id, work_items.c.execution_id, work_items.c.event_id)
        picked = self.dialect.skip_locked(select(*key).where(is_due).limit(limit))
        with self.write() as conn:
            expired = conn.execute(
                delete(work_items)
                .where(tuple_(*key).in_(picked), is_due)
                .returning(
                    *key,
                    work_items.c.name,
                    work_items.c.tag,
                    work_items.c.claim_deadline - work_items.c.created_at,
                    work_items.c.orchestration_name,
                    work_items.c.flow_state,
                )
            ).all()
            failed, messages, freed = [], [], set()
            for instance_id, execution_id, event_id, name, tag, ttl, orch_name, flow_state in expired:
                served = f"tag '{tag}'" if tag else "untagged activities"
                why = f"no running worker serves {served}"
                if flow_state == HELD:
                    why = "it was held by its activity's limit all that time"
                elif flow_state == ADMITTED:
                    freed.add(name)
                message = f"activity '{name}' was not picked up by any worker within its ttl of {ttl} ms ({why})"
                details = error_details(ev.APPLICATION, message, "NotPickedUp")  # catchable: the code may fall back
                payload = {"execution_id": execution_id, "event_id": event_id, "details": details}
                messages.append((instance_id, ev.MSG_ACTIVITY_FAILED, payload))
                failed.append((instance_id, orch_name))
            self.enqueue_many(conn, messages, now)
            return failed, self.admit(conn, freed, now) if freed else []

    def fire_due_timers(self, limit: int = 500, lead_ms: int = 0) -> tuple[list[tuple[str, str | None]], int]:
        """Move up to `limit` timers due within `lead_ms` from now into their instances' inboxes, in one
        transaction; returns the instances to poke, as (instance id, orchestration name) so the pokes show in
        Flower as `orch:<Name>#<id>`, not `orch:#<id>`, and how many timers fired. Idempotent: a timer row is
        deleted by exactly one firer, so it fires into history once. A timer fired ahead keeps its own fire_at_ms
        in its message, and no turn consumes it before that time (replay/timer_due.py)."""
        now = now_ms()
        with self.write() as conn:
            return self.dialect.fire_due_timers(conn, now, now + lead_ms, limit)

    def wake_backed_off(self, orchestration_names: list[str]) -> list[tuple[str, str]]:
        """End the unregistered-handler backoff of instances of these orchestrations; returns (id, name) of each."""
        now = now_ms()
        with self.write() as conn:
            rows = conn.execute(
                update(instances)
                .where(
                    instances.c.next_attempt_at > now,
                    instances.c.orchestration_name.in_(orchestration_names),
                    instances.c.status == "Running",
                )
                .values(next_attempt_at=0)
                .returning(instances.c.instance_id, instances.c.orchestration_name)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def stale_instances(self, older_than_ms: int, limit: int = 1000) -> list[tuple[str, str | None]]:
        """Instances with inbox messages older than the threshold whose lease is free or expired, as (instance id,
        orchestration name) for the pokes' Flower names."""
        now = now_ms()
        with self.read() as conn:
            rows = conn.execute(
                select(inbox.c.instance_id, instances.c.orchestration_name)
                .join(instances, instances.c.instance_id == inbox.c.instance_id, isouter=True)
                .where(
                    inbox.c.created_at <= now - older_than_ms,
                    or_(instances.c.lock_owner.is_(None), instances.c.locked_until < now),
                    or_(instances.c.next_attempt_at.is_(None), instances.c.next_attempt_at <= now),
                    # A start held by a limit is waiting, not lost: only admission wakes it.
                    or_(instances.c.flow_state.is_(None), instances.c.flow_state != HELD),
                )
                .group_by(inbox.c.instance_id, instances.c.orchestration_name)
                .limit(limit)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def stale_work_items(self, older_than_ms: int, limit: int = 1000) -> list[PendingActivity]:
        """Activity rows that no live worker holds and that were last published before the threshold."""
        now = now_ms()
        with self.write() as conn:
            rows = conn.execute(
                select(
                    work_items.c.instance_id,
                    work_items.c.execution_id,
                    work_items.c.event_id,
                    work_items.c.name,
                    work_items.c.session_id,
                    work_items.c.tag,
                    sessions.c.owner,
                )
                # A session's live owner gets its work on its session queue; a dead owner's lease has expired,
                # so its sessions' work goes back to the claim path (nothing stays stranded in its queue).
                .join(
                    sessions,
                    and_(sessions.c.session_id == work_items.c.session_id, sessions.c.locked_until > now),
                    isouter=True,
                )
                .where(
                    work_items.c.published_at <= now - older_than_ms,
                    work_items.c.visible_at <= now,
                    or_(work_items.c.lock_owner.is_(None), work_items.c.locked_until < now),
                    # Held work is not lost, it waits for a slot: only admission publishes it.
                    or_(work_items.c.flow_state.is_(None), work_items.c.flow_state != HELD),
                )
                .limit(limit)
            ).all()
            for r in rows:
                conn.execute(
                    update(work_items)
                    .where(
                        and_(
                            work_items.c.instance_id == r[0],
                            work_items.c.execution_id == r[1],
                            work_items.c.event_id == r[2],
                        )
                    )
                    .values(published_at=now)
                )
        return [PendingActivity(*r) for r in rows]
