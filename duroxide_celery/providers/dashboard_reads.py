"""Reads behind the dashboard: instance pages by keyset (no OFFSET: a deep page costs what the first one does),
status counts, an instance's KV entries and a tree's rows. Read-only, parameterized SQLAlchemy Core over
schema.py's tables; the indexes of migration 0004 serve the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, tuple_

from .schema import instances, kv

if TYPE_CHECKING:
    from .store import Store

#: The version an instance runs, or the one its start pinned while no turn has run yet.
_VERSION = func.coalesce(instances.c.orchestration_version, instances.c.requested_version)

#: The columns a list row shows (no payloads: output and error stay in the store).
_LIST_COLUMNS = (
    instances.c.instance_id,
    instances.c.orchestration_name,
    _VERSION.label("orchestration_version"),
    instances.c.status,
    instances.c.created_at,
    instances.c.updated_at,
    instances.c.parent_instance_id,
    instances.c.waiting_reason,
)


@dataclass(frozen=True)
class InstanceQuery:
    """Which instances a list page shows; every criterion is optional and they are ANDed. Times are epoch ms
    (`created_from` inclusive, `created_to` exclusive); `id_prefix` matches ids that start with it, case
    sensitively."""

    status: str | None = None
    name: str | None = None
    version: str | None = None
    created_from: int | None = None
    created_to: int | None = None
    id_prefix: str | None = None


#: A keyset position: (created_at, instance_id) of a row; pages run newest first.
Cursor = tuple[int, str]


@dataclass(frozen=True)
class InstancePage:
    rows: list[dict[str, Any]]
    #: Cursor of the page after this one (older rows), None on the last page.
    next_cursor: Cursor | None
    #: Cursor of the page before this one (newer rows), None on the first page.
    prev_cursor: Cursor | None


def list_instances(
    store: Store,
    query: InstanceQuery,
    *,
    limit: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
) -> InstancePage:
    """One page of instances, newest first: the `limit` rows older than `after`, or newer than `before` (the
    previous page), or the newest. One indexed range scan whatever the page's depth."""
    if after is not None and before is not None:
        raise ValueError("give after or before, not both")
    stmt = select(*_LIST_COLUMNS)
    if query.status is not None:
        stmt = stmt.where(instances.c.status == query.status)
    if query.name is not None:
        stmt = stmt.where(instances.c.orchestration_name == query.name)
    if query.version is not None:
        # Spelled without COALESCE so that the planner estimates it and walks the name index in order.
        stmt = stmt.where(
            or_(
                instances.c.orchestration_version == query.version,
                and_(instances.c.orchestration_version.is_(None), instances.c.requested_version == query.version),
            )
        )
    if query.created_from is not None:
        stmt = stmt.where(instances.c.created_at >= query.created_from)
    if query.created_to is not None:
        stmt = stmt.where(instances.c.created_at < query.created_to)
    if query.id_prefix:
        stmt = stmt.where(_id_prefix(store, query.id_prefix))
    key = tuple_(instances.c.created_at, instances.c.instance_id)
    if before is not None:
        stmt = stmt.where(key > tuple_(*before)).order_by(instances.c.created_at, instances.c.instance_id)
    else:
        if after is not None:
            stmt = stmt.where(key < tuple_(*after))
        stmt = stmt.order_by(instances.c.created_at.desc(), instances.c.instance_id.desc())
    with store.read() as conn:
        rows = [dict(r) for r in conn.execute(stmt.limit(limit + 1)).mappings().all()]
    more = len(rows) > limit
    rows = rows[:limit]
    if before is not None:
        rows.reverse()
    first = (rows[0]["created_at"], rows[0]["instance_id"]) if rows else None
    last = (rows[-1]["created_at"], rows[-1]["instance_id"]) if rows else None
    if before is not None:
        return InstancePage(rows, next_cursor=last, prev_cursor=first if more else None)
    return InstancePage(rows, next_cursor=last if more else None, prev_cursor=first if after is not None else None)


def _id_prefix(store: Store, prefix: str) -> Any:
    return store.dialect.starts_with(instances.c.instance_id, prefix)


def status_counts(store: Store) -> dict[str, int]:
    """Instances per status over the whole store (an index-only GROUP BY on the status index)."""
    with store.read() as conn:
        rows = conn.execute(select(instances.c.status, func.count()).group_by(instances.c.status))
        return {status: int(n) for status, n in rows}


def kv_entries(store: Store, instance_id: str) -> list[dict[str, Any]]:
    """An instance's KV entries, by key: key, value (JSON text) and last update (epoch ms)."""
    with store.read() as conn:
        rows = conn.execute(
            select(kv.c.key, kv.c.value, kv.c.last_updated_at_ms)
            .where(kv.c.instance_id == instance_id)
            .order_by(kv.c.key)
        ).mappings()
        return [dict(r) for r in rows]


def instance_rows(store: Store, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    """List columns of the given instances (a tree's members), by id; unknown ids are left out."""
    found: dict[str, dict[str, Any]] = {}
    with store.read() as conn:
        for start in range(0, len(instance_ids), 500):  # far below both databases' parameter limits
            chunk = instance_ids[start : start + 500]
            for row in conn.execute(select(*_LIST_COLUMNS).where(instances.c.instance_id.in_(chunk))).mappings():
                found[row["instance_id"]] = dict(row)
    return found
