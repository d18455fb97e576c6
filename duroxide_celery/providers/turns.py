"""Turns: starting instances, the instance lease, what a turn reads, and giving the lease back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ..replay import events as ev
from ..replay.events import HistoryEvent
from ..types import TERMINAL_STATUSES
from . import direct_sql
from . import hot_statements as hot
from .base import StoreBase, now_ms
from .dto import (
    CreatedInstance,
    InstanceLease,
    LeaseLost,
    LoadedLease,
    NewInstance,
    TurnLoad,
)
from .schema import FLOW_ADMITTED, FLOW_HELD, instances


class TurnStore(StoreBase):
    """Starts, leases and turn reads (the orchestrator's hot path; its statements are prebuilt)."""

    def create_instance(
        self,
        conn: Connection,
        instance_id: str,
        name: str,
        input_json: str,
        version: str | None = None,
        parent: tuple[str, int, int] | None = None,
        now: int | None = None,
        trace_context: str | None = None,
    ) -> CreatedInstance | None:
        """Insert an instance, its first execution and its StartOrchestration message. None if the id exists
        (the first start wins). `trace_context`: the JSON its spans descend from (observability/otel.py)."""
        now = now or now_ms()
        payload: dict[str, Any] = {"name": name, "input": input_json, "version": version}
        if parent:
            payload.update(parent_instance_id=parent[0], parent_execution_id=parent[1], parent_event_id=parent[2])
        params = {
            "iid": instance_id,
            "name": name,
            "version": version,
            "parent": parent[0] if parent else None,
            "trace_context": trace_context,
            "now": now,
            "payload": json.dumps(payload),
        }
        return self.dialect.create_instance(conn, params)

    def create_instances(self, conn: Connection, starts: Sequence[NewInstance]) -> set[str]:
        """`create_instance` for many new instances at once (a bulk start; ids distinct), in the caller's
        transaction and a few multi-row statements; returns the ids that were new (the others existed)."""
        now = now_ms()
        rows = [
            {
                "iid": start.instance_id,
                "name": start.name,
                "version": start.version,
                "parent": None,
                "trace_context": start.trace_context,
                "now": now,
                "payload": json.dumps({"name": start.name, "input": start.input, "version": start.version}),
            }
            # In id order: two bulk starts that share ids take their row locks in one order (no deadlock).
            for start in sorted(starts, key=lambda s: s.instance_id)
        ]
        return self.dialect.create_instances(conn, rows) if rows else set()

    def enqueue_if_running(self, instance_id: str, kind: str, payload: dict[str, Any]) -> str | None:
        """Queue a message for a live instance and return its orchestration name (the wake-up's label); None
        (nothing written) if it is unknown or already ended."""
        with self.write() as conn:
            # FOR UPDATE (PostgreSQL): a concurrent delete_tree either sees this message or makes us see no row.
            row = conn.execute(
                select(instances.c.status, instances.c.orchestration_name)
                .where(instances.c.instance_id == instance_id)
                .with_for_update()
            ).first()
            if row is None or row[0] in TERMINAL_STATUSES:
                return None
            self.enqueue(conn, instance_id, kind, payload)
            if kind == ev.MSG_CANCEL:
                # A start held by a limit must not wait for a slot to be cancelled: admitted now, past the limit,
                # for the one turn that ends it (flow.py).
                conn.execute(
                    update(instances)
                    .where(instances.c.instance_id == instance_id, instances.c.flow_state == FLOW_HELD)
                    .values(flow_state=FLOW_ADMITTED, waiting_reason=None)
                )
            return str(row[1])

    def acquire_instance(
        self, instance_id: str, owner: str, lease_ms: int, conn: Connection | None = None
    ) -> InstanceLease | None:
        """Lease the instance for a turn; None if another worker holds it or it is backed off. The lease runs
        `lease_ms` from the database's clock, and only a lease expired by that clock can be taken over."""
        params = {"iid": instance_id, "now": now_ms(), "owner": owner, "lease_ms": lease_ms}
        with self._writing(conn) as conn:
            row = direct_sql.run(conn, hot.ACQUIRE, params).first()
        return None if row is None else _lease(instance_id, owner, row)

    def lease_and_load(
        self, instance_id: str, owner: str, lease_ms: int, prefix: tuple[int, int] | None = None
    ) -> LoadedLease | None:
        """PostgreSQL (a turn whose lease commits first): `acquire_instance`, only with a pending message (which
        spares a duplicate poke any write), and `load_turn`, in one statement that commits by itself. None when
        refused; a refusal because another turn holds the lease is counted, and that turn's commit learns of it.
        `prefix`: (execution id, event id) of the history the caller holds already; only the events after it are
        read when the lease is for that execution."""
        exec_hint, after_hint = prefix if prefix is not None else (None, 0)
        params = {"iid": instance_id, "owner": owner, "lease_ms": lease_ms, "prefix_exec": exec_hint}
        params["prefix_after"] = after_hint
        while True:
            params["now"] = now_ms()
            with self.lease_statement() as conn:
                row = direct_sql.run(conn, hot.LEASE_AND_LOAD, params).first()
            if row is None or row[0] is False:
                return None  # backed off, held by a start limit, or no message; or held (a refused poke, counted)
            if row[0]:
                break
            # The row changed after the statement's snapshot (hot.LEASE_AND_LOAD): ask again. Each time, another
            # transaction committed to the row meanwhile; a poke must end leased or counted, never dropped.
        lease = _lease(instance_id, owner, row[1:9])
        lease.refused_pokes, trace_context, messages, events, snapshot = row[9:]
        load = (
            _events(json.loads(events)) if events else [],
            _messages(json.loads(messages)) if messages else [],
            _snapshot(snapshot),
        )
        return LoadedLease(lease, load, after_hint if exec_hint == lease.execution_id else 0, trace_context)

    def renew_instance(self, instance_id: str, owner: str, lease_ms: int) -> bool:
        """Extend a turn's instance lease (a turn that runs long); False when `owner` no longer holds it."""
        with self.lease_transaction() as conn:
            return bool(
                conn.execute(hot.RENEW_INSTANCE, {"iid": instance_id, "owner": owner, "lease_ms": lease_ms}).rowcount
            )

    def count_failed_attempt(self, instance_id: str, cause: str | None = None) -> None:
        """Record a turn that crashed before committing, so a turn that always crashes ends as poison; `cause`
        (what it raised) is kept in `waiting_reason` for the poison decision to name."""
        with self.write() as conn:
            conn.execute(
                update(instances)
                .where(instances.c.instance_id == instance_id, instances.c.status == "Running")
                .values(attempt_count=instances.c.attempt_count + 1, waiting_reason=cause)
            )

    def release_instance(
        self,
        instance_id: str,
        owner: str,
        *,
        reset_attempts: bool,
        next_attempt_at: int = 0,
        waiting_reason: str | None = None,
        consumed_ids: Iterable[int] = (),
        conn: Connection | None = None,
    ) -> None:
        """Give the lease back without a turn; the consumed messages are deleted only while the lease is ours
        (LeaseLost otherwise: whoever took over reads them).
        `waiting_reason` says why the instance waits (a backoff for a missing handler); any other release clears
        it in the same UPDATE."""
        statement = hot.RELEASE_INSTANCE_RESET if reset_attempts else hot.RELEASE_INSTANCE
        params = {"iid": instance_id, "owner": owner, "next_attempt": next_attempt_at, "reason": waiting_reason}
        with self._writing(conn) as conn:
            released = direct_sql.run(conn, statement, params).rowcount
            ids = list(consumed_ids)
            if ids and not released:
                raise LeaseLost(instance_id)
            self.delete_inbox(conn, ids)

    def load_turn(
        self, instance_id: str, execution_id: int, after_event_id: int = 0, conn: Connection | None = None
    ) -> TurnLoad:
        """History of the execution (events after `after_event_id`: the caller caches the prefix, which never
        changes), pending inbox messages (id, message) and the execution's KV snapshot."""
        with self._reading(conn) as conn:
            msgs = direct_sql.run(conn, hot.INBOX_OF, {"iid": instance_id}).all()
            if not msgs:
                return [], [], {}
            events = direct_sql.run(
                conn, hot.HISTORY_AFTER, {"iid": instance_id, "exec": execution_id, "after": after_event_id}
            ).all()
            snapshot_text = None
            if execution_id > 1:  # the first execution starts with no KV; later ones carry it from their predecessor
                snapshot_text = direct_sql.run(
                    conn, hot.KV_SNAPSHOT, {"iid": instance_id, "exec": execution_id}
                ).scalar()
        return _events(events), _messages(msgs), _snapshot(snapshot_text)

    def get_kv(self, instance_id: str, key: str, conn: Connection | None = None) -> str | None:
        with self._reading(conn) as conn:
            value: str | None = conn.execute(hot.KV_VALUE, {"iid": instance_id, "kv_key": key}).scalar()
            return value


def _lease(instance_id: str, owner: str, row: Any) -> InstanceLease:
    """An InstanceLease from the columns a lease statement returns (hot._LEASE_COLUMNS)."""
    execution_id, name, status, attempts, next_attempt_at, custom_status_version, waiting_reason, flow_state = row
    return InstanceLease(
        instance_id,
        execution_id,
        name,
        status,
        attempts,
        next_attempt_at,
        custom_status_version,
        waiting_reason=waiting_reason,
        owner=owner,
        flow_state=flow_state,
    )


def _messages(rows: Iterable[Any]) -> list[tuple[int, dict[str, Any]]]:
    """Inbox rows (id, kind, payload text) as (id, message) in the order given."""
    messages = []
    for msg_id, kind, payload in rows:
        body = json.loads(payload)
        body["kind"] = kind
        messages.append((msg_id, body))
    return messages


def _events(rows: Iterable[Any]) -> list[HistoryEvent]:
    """History rows (event id, kind, data text, source event id, timestamp) as events."""
    return [HistoryEvent(eid, kind, json.loads(data), src, ts) for eid, kind, data, src, ts in rows]


def _snapshot(text: str | None) -> dict[str, tuple[str, int]]:
    """An execution's stored KV snapshot (JSON text, or None: empty)."""
    return {k: (v[0], v[1]) for k, v in json.loads(text or "{}").items()}
