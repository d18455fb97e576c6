"""Read-only queries for the admin, on the store's own engine (so they reach the store wherever settings.DUROXIDE
puts it: a schema of Django's database, another alias, or a URL). Nothing here writes: every change goes through
the Client (`admin`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import false, func, select

from ...providers.schema import history, instances, kv
from ...replay.limits import check_storable

#: Rows shown per page.
INSTANCES_PER_PAGE = 50
EVENTS_PER_PAGE = 200
KV_LIMIT = 500
TREE_LIMIT = 500
FACET_LIMIT = 100


def to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class InstanceQuery:
    status: str | None = None
    name: str | None = None
    search: str | None = None
    created_from: int | None = None  # epoch ms, inclusive
    created_to: int | None = None  # epoch ms, exclusive
    updated_from: int | None = None
    updated_to: int | None = None


def storable(text: str) -> bool:
    """Whether the store could hold `text`: no stored id or name has a NUL (PostgreSQL refuses them with a
    DataError, a 500), so a URL or filter with one names nothing."""
    try:
        check_storable(text, "text")
    except ValueError:
        return False
    return True


def _where(query: InstanceQuery, *, skip: str | None = None) -> list[Any]:
    c = instances.c
    if not all(storable(text) for text in (query.status, query.name, query.search) if text):
        return [false()]  # matches nothing: an empty list, never a database error
    where: list[Any] = []
    if query.status and skip != "status":
        where.append(c.status == query.status)
    if query.name and skip != "name":
        where.append(c.orchestration_name == query.name)
    if query.search:
        where.append(c.instance_id.icontains(query.search, autoescape=True))
    for column, low, high in (
        (c.created_at, query.created_from, query.created_to),
        (c.updated_at, query.updated_from, query.updated_to),
    ):
        if low is not None:
            where.append(column >= low)
        if high is not None:
            where.append(column < high)
    return where


def list_instances(store: Any, query: InstanceQuery, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """One page of instances, newest first, and how many match in all."""
    c = instances.c
    where = _where(query)
    with store.read() as conn:
        total = conn.execute(select(func.count()).select_from(instances).where(*where)).scalar() or 0
        rows = conn.execute(
            select(
                c.instance_id,
                c.orchestration_name,
                c.orchestration_version,
                c.requested_version,
                c.status,
                c.current_execution_id,
                c.parent_instance_id,
                c.created_at,
                c.updated_at,
            )
            .where(*where)
            .order_by(c.created_at.desc(), c.instance_id.desc())
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows], total


def facets(store: Any, query: InstanceQuery) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(status, count) and (orchestration name, count) among instances matching the other criteria."""
    c = instances.c
    with store.read() as conn:
        statuses = conn.execute(
            select(c.status, func.count()).where(*_where(query, skip="status")).group_by(c.status).order_by(c.status)
        ).all()
        names = conn.execute(
            select(c.orchestration_name, func.count())
            .where(*_where(query, skip="name"))
            .group_by(c.orchestration_name)
            .order_by(c.orchestration_name)
            .limit(FACET_LIMIT)
        ).all()
    return [(s, n) for s, n in statuses], [(s, n) for s, n in names]


def kv_entries(store: Any, instance_id: str) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(
            select(kv.c.key, kv.c.value, kv.c.last_updated_at_ms)
            .where(kv.c.instance_id == instance_id)
            .order_by(kv.c.key)
            .limit(KV_LIMIT)
        ).mappings()
        return [dict(r) for r in rows]


def history_page(store: Any, instance_id: str, execution_id: int, offset: int, limit: int) -> tuple[list[dict], int]:
    h = history.c
    where = (h.instance_id == instance_id, h.execution_id == execution_id)
    with store.read() as conn:
        total = conn.execute(select(func.count()).select_from(history).where(*where)).scalar() or 0
        rows = conn.execute(
            select(h.event_id, h.kind, h.source_event_id, h.timestamp_ms, h.data)
            .where(*where)
            .order_by(h.event_id)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows], total


def history_event(store: Any, instance_id: str, execution_id: int, event_id: int) -> str | None:
    h = history.c
    with store.read() as conn:
        return conn.execute(
            select(h.data).where(h.instance_id == instance_id, h.execution_id == execution_id, h.event_id == event_id)
        ).scalar()


def summaries(store: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Name, status and parent of each of `ids` (for the sub-orchestration tree)."""
    c = instances.c
    found: dict[str, dict[str, Any]] = {}
    with store.read() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = conn.execute(
                select(c.instance_id, c.orchestration_name, c.status, c.parent_instance_id).where(
                    c.instance_id.in_(chunk)
                )
            ).mappings()
            found.update((r["instance_id"], dict(r)) for r in rows)
    return found
