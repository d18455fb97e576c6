"""Management reads and writes for the Client, the CLI and the Django admin: status, history, trees, prune, metrics."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.engine import Connection

from ..replay.events import HistoryEvent
from ..types import TERMINAL_STATUSES
from . import hot_statements as hot
from .base import StoreBase, now_ms
from .dto import (
    TreeDeletion,
)
from .schema import executions, history, inbox, instances, kv, timers, work_items

#: Ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class ManagementStore(StoreBase):
    """The cold path: statements built per call."""

    def get_instance(self, instance_id: str) -> dict[str, Any] | None:
        with self.single_read() as conn:  # one statement: Client.get_status and its waits poll it
            row = conn.execute(hot.INSTANCE, {"iid": instance_id}).mappings().first()
        return dict(row) if row else None

    def list_executions(self, instance_id: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            event_count = (
                select(func.count())
                .where(
                    history.c.instance_id == executions.c.instance_id,
                    history.c.execution_id == executions.c.execution_id,
                )
                .scalar_subquery()
            )
            rows = (
                conn.execute(
                    select(*[c for c in executions.c if c.name != "event_count"], event_count.label("event_count"))
                    .where(executions.c.instance_id == instance_id)
                    .order_by(executions.c.execution_id)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def read_history(self, instance_id: str, execution_id: int) -> list[HistoryEvent]:
        with self.read() as conn:
            rows = conn.execute(
                select(
                    history.c.event_id,
                    history.c.kind,
                    history.c.data,
                    history.c.source_event_id,
                    history.c.timestamp_ms,
                )
                .where(history.c.instance_id == instance_id, history.c.execution_id == execution_id)
                .order_by(history.c.event_id)
            ).all()
        return [HistoryEvent(eid, kind, json.loads(data), src, ts) for eid, kind, data, src, ts in rows]

    def list_instances(self, status: str | None = None) -> list[str]:
        with self.read() as conn:
            query = select(instances.c.instance_id).order_by(instances.c.created_at, instances.c.instance_id)
            if status:
                query = query.where(instances.c.status == status)
            return [r[0] for r in conn.execute(query).all()]

    def instance_tree(self, instance_id: str) -> list[str] | None:
        """The instance and its descendants (root first, then level by level); None if the id is unknown."""
        with self.read() as conn:
            if conn.execute(select(instances.c.instance_id).where(instances.c.instance_id == instance_id)).first():
                return self._tree(conn, instance_id, lock=False)
        return None

    def _tree(self, conn: Connection, root_id: str, *, lock: bool) -> list[str]:
        """Walk parent_instance_id downwards. With `lock` (PostgreSQL) every row is locked as it is found: a turn
        still committing a child waits for us or we for it, so a child created meanwhile is found, never left."""
        ids, seen, level = [root_id], {root_id}, [root_id]
        while level:
            found: list[tuple[int, str]] = []
            for chunk in _chunks(level):
                query = select(instances.c.created_at, instances.c.instance_id).where(
                    instances.c.parent_instance_id.in_(chunk)
                )
                if lock:
                    query = query.with_for_update()
                found.extend((r[0], r[1]) for r in conn.execute(query).all() if r[1] not in seen)
            level = [i for _, i in sorted(found)]
            seen.update(level)
            ids.extend(level)
        return ids

    def delete_tree(self, instance_id: str, *, force: bool) -> TreeDeletion:
        """Delete a root instance and all its descendants with every row they own, in one transaction.

        Refuses (nothing written) when the id is unknown, is a sub-orchestration, or when any member is still
        running and not `force`. Rows go in an order that closes races on PostgreSQL: instance rows are locked
        first (turns and signals fence on them), timers and work items go before the inbox, so a timer firing or
        an activity completing concurrently has either committed its inbox message (deleted here) or finds its
        row gone (and writes nothing)."""
        with self.write() as conn:
            row = conn.execute(
                select(instances.c.parent_instance_id).where(instances.c.instance_id == instance_id).with_for_update()
            ).first()
            if row is None:
                return TreeDeletion("not_found")
            if row[0] is not None:
                return TreeDeletion("sub_orchestration", parent_id=row[0])
            ids = self._tree(conn, instance_id, lock=True)
            if not force:
                running: list[str] = []
                for chunk in _chunks(ids):
                    running.extend(
                        r[0]
                        for r in conn.execute(
                            select(instances.c.instance_id).where(
                                instances.c.instance_id.in_(chunk), instances.c.status.not_in(TERMINAL_STATUSES)
                            )
                        ).all()
                    )
                if running:
                    return TreeDeletion("running", running_ids=sorted(running))
            counts = dict.fromkeys(("instances", "executions", "events", "queue_messages", "kv"), 0)
            for table, counter in (
                (timers, "queue_messages"),
                (work_items, "queue_messages"),
                (inbox, "queue_messages"),
                (history, "events"),
                (executions, "executions"),
                (kv, "kv"),
                (instances, "instances"),
            ):
                for chunk in _chunks(ids):
                    counts[counter] += conn.execute(delete(table).where(table.c.instance_id.in_(chunk))).rowcount
            return TreeDeletion("deleted", deleted_ids=ids, counts=counts)

    def select_instances(
        self,
        *,
        terminal_roots_only: bool,
        instance_ids: Iterable[str] | None,
        completed_before: int | None,
        limit: int,
    ) -> list[str]:
        """Ids for the bulk operations, oldest first: optionally only finished roots, only the given ids, only
        those whose current execution completed before `completed_before`; at most `limit`."""
        current = and_(
            executions.c.instance_id == instances.c.instance_id,
            executions.c.execution_id == instances.c.current_execution_id,
        )
        query = select(instances.c.created_at, instances.c.instance_id).select_from(
            instances.join(executions, current, isouter=True)
        )
        if terminal_roots_only:
            query = query.where(instances.c.parent_instance_id.is_(None), instances.c.status.in_(TERMINAL_STATUSES))
        if completed_before is not None:
            query = query.where(executions.c.completed_at < completed_before)
        query = query.order_by(instances.c.created_at, instances.c.instance_id).limit(limit)
        with self.read() as conn:
            if instance_ids is None:
                rows = conn.execute(query).all()
            else:
                rows = []
                for chunk in _chunks(sorted(set(instance_ids))):
                    rows.extend(conn.execute(query.where(instances.c.instance_id.in_(chunk))).all())
        return [r[1] for r in sorted(rows)[:limit]]

    def prune_executions(
        self, instance_id: str, *, keep_last: int, completed_before: int | None
    ) -> tuple[int, int] | None:
        """Delete old executions of an instance (with their history, timers and activity rows); returns
        (executions, events) deleted, or None if the id is unknown. Never touches the current execution or a
        running one; keeps the `keep_last` newest (at least 1); with `completed_before`, only older ones go."""
        with self.write() as conn:
            current = conn.execute(
                select(instances.c.current_execution_id).where(instances.c.instance_id == instance_id).with_for_update()
            ).scalar()
            if current is None:
                return None
            rows = conn.execute(
                select(executions.c.execution_id, executions.c.status, executions.c.completed_at)
                .where(executions.c.instance_id == instance_id)
                .order_by(executions.c.execution_id.desc())
            ).all()
            doomed = [
                execution_id
                for position, (execution_id, status, completed_at) in enumerate(rows)
                if position >= max(keep_last, 1)
                and execution_id != current
                and status != "Running"
                and (completed_before is None or (completed_at is not None and completed_at < completed_before))
            ]
            deleted_executions = deleted_events = 0
            for chunk in _chunks(doomed):
                for table in (timers, work_items):
                    conn.execute(
                        delete(table).where(table.c.instance_id == instance_id, table.c.execution_id.in_(chunk))
                    )
                deleted_events += conn.execute(
                    delete(history).where(history.c.instance_id == instance_id, history.c.execution_id.in_(chunk))
                ).rowcount
                deleted_executions += conn.execute(
                    delete(executions).where(
                        executions.c.instance_id == instance_id, executions.c.execution_id.in_(chunk)
                    )
                ).rowcount
            return deleted_executions, deleted_events

    def system_metrics(self) -> dict[str, int]:
        with self.read() as conn:
            by_status: dict[str, int] = dict(
                conn.execute(select(instances.c.status, func.count()).group_by(instances.c.status)).all()
            )
            total_executions = conn.execute(select(func.count()).select_from(executions)).scalar() or 0
            total_events = conn.execute(select(func.count()).select_from(history)).scalar() or 0
        return {
            "total_instances": sum(by_status.values()),
            "total_executions": total_executions,
            "running_instances": by_status.get("Running", 0),
            "completed_instances": by_status.get("Completed", 0),
            "failed_instances": by_status.get("Failed", 0),
            "total_events": total_events,
        }

    def queue_depths(self) -> dict[str, int]:
        """Pending work nobody holds: inbox messages of instances with a free or expired lease, activity rows
        with no live lease, and timers."""
        now = now_ms()
        with self.read() as conn:
            orchestrator = conn.execute(
                select(func.count())
                .select_from(inbox.join(instances, instances.c.instance_id == inbox.c.instance_id, isouter=True))
                .where(or_(instances.c.lock_owner.is_(None), instances.c.locked_until < now))
            ).scalar()
            worker = conn.execute(
                select(func.count())
                .select_from(work_items)
                .where(or_(work_items.c.lock_owner.is_(None), work_items.c.locked_until < now))
            ).scalar()
            timer = conn.execute(select(func.count()).select_from(timers)).scalar()
        return {"orchestrator_queue": orchestrator or 0, "worker_queue": worker or 0, "timer_queue": timer or 0}

    def orchestration_stats(self, instance_id: str) -> dict[str, int] | None:
        with self.read() as conn:
            current = conn.execute(
                select(instances.c.current_execution_id).where(instances.c.instance_id == instance_id)
            ).scalar()
            if current is None:
                return None
            events, history_bytes = conn.execute(
                select(func.count(), func.coalesce(func.sum(self.dialect.byte_length(history.c.data)), 0)).where(
                    history.c.instance_id == instance_id, history.c.execution_id == current
                )
            ).one()
            pending = conn.execute(select(func.count()).where(inbox.c.instance_id == instance_id)).scalar()
            keys, kv_bytes = conn.execute(
                select(func.count(), func.coalesce(func.sum(self.dialect.byte_length(kv.c.value)), 0)).where(
                    kv.c.instance_id == instance_id
                )
            ).one()
        return {
            "history_event_count": int(events),
            "history_size_bytes": int(history_bytes),
            "queue_pending_count": int(pending or 0),
            "kv_user_key_count": int(keys),
            "kv_total_value_bytes": int(kv_bytes),
        }
