"""The store statements of traces and metrics (kept out of store.py): an instance's trace context, a count."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select, update

from .schema import instances

#: The instance's stored trace context (`iid`); NULL when it was started untraced.
_TRACE_CONTEXT = select(instances.c.trace_context).where(instances.c.instance_id == bindparam("iid"))
#: Give an instance started untraced the context of its first traced turn (`iid`, `tc`); never overwrites one.
_ADOPT = (
    update(instances)
    .where(instances.c.instance_id == bindparam("iid"), instances.c.trace_context.is_(None))
    .values(trace_context=bindparam("tc"))
)
#: Instances not yet ended (duroxide's `duroxide_active_orchestrations`); served by the (status, created_at) index.
_RUNNING = select(func.count()).select_from(instances).where(instances.c.status == "Running")


def trace_context(conn: Connection, instance_id: str) -> str | None:
    """The JSON trace context stored with the instance, if any."""
    return conn.execute(_TRACE_CONTEXT, {"iid": instance_id}).scalar()


def adopt_trace_context(conn: Connection, instance_id: str, context: str) -> None:
    """Store `context` for an instance that has none (started by a process that did not trace), in the caller's
    transaction (the turn's, which holds the instance's lease)."""
    conn.execute(_ADOPT, {"iid": instance_id, "tc": context})


def running_instances(conn: Connection) -> int:
    """How many instances are running (started and not yet Completed or Failed)."""
    return int(conn.execute(_RUNNING).scalar() or 0)
