"""Result objects returned by the Client, with duroxide-python's field names (semantics.md 1.8)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .replay.events import HistoryEvent
from .replay.limits import INT64_MAX, check_storable

STATUSES = ("Running", "Completed", "Failed", "NotFound", "ContinuedAsNew")


#: The statuses an instance ends in (anything else is still running); spelled here only.
TERMINAL_STATUSES: tuple[str, ...] = ("Completed", "Failed")


@dataclass(frozen=True)
class OrchestrationResult:
    """Status of an instance's latest execution; `output` is JSON-decoded, `error` is the failure text."""

    status: str
    output: Any = None
    error: str | None = None
    custom_status: str | None = None
    custom_status_version: int = 0
    #: Why a Running instance makes no progress (a handler no worker has registered), else None.
    waiting_reason: str | None = None


@dataclass(frozen=True)
class Event:
    """One history event; `data` is the event's fields as JSON text (None for breadcrumbs without fields)."""

    event_id: int
    kind: str
    source_event_id: int | None
    timestamp_ms: int
    data: str | None

    @classmethod
    def from_history(cls, event: HistoryEvent) -> Event:
        fields = {k: v for k, v in event.data.items() if v is not None}
        return cls(
            event.event_id,
            event.kind,
            event.source_event_id,
            event.timestamp_ms,
            json.dumps(fields) if fields else None,
        )


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    orchestration_name: str
    orchestration_version: str | None
    current_execution_id: int
    status: str
    output: Any
    created_at: int
    updated_at: int
    parent_instance_id: str | None
    #: Why a Running instance makes no progress (a handler no worker has registered), else None.
    waiting_reason: str | None = None


@dataclass(frozen=True)
class ExecutionInfo:
    execution_id: int
    status: str
    output: Any
    started_at: int
    completed_at: int | None
    event_count: int


# -- management API (semantics.md 1.8, 2.21) ---------------------------------------------------------------------
def _check_count(value: Any, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    if value > INT64_MAX:
        raise ValueError(f"{what} is out of the 64-bit integer range, got {value}")


def _check_ms(value: Any, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{what} must be epoch milliseconds (an int) or None, got {type(value).__name__}")
    if value is not None and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"{what} is out of the 64-bit integer range, got {value}")


@dataclass(frozen=True)
class InstanceTree:
    """An instance and every descendant started as its sub-orchestration (detached starts are not children);
    `all_ids` lists the root first, then the descendants level by level."""

    root_id: str
    all_ids: list[str]
    size: int


@dataclass(frozen=True)
class DeleteInstanceResult:
    """What a delete removed. `queue_messages_deleted` counts pending inbox messages, activity work items and
    timers."""

    instances_deleted: int = 0
    executions_deleted: int = 0
    events_deleted: int = 0
    queue_messages_deleted: int = 0


@dataclass(frozen=True)
class PruneResult:
    """What a prune removed; `instances_processed` counts the instances examined, pruned or not."""

    instances_processed: int = 0
    executions_deleted: int = 0
    events_deleted: int = 0


@dataclass(frozen=True)
class PruneOptions:
    """Which old executions a prune removes; both criteria must hold. The current execution is always kept.

    keep_last: keep this many newest executions (None, 0 and 1 all keep only the current one).
    completed_before: only executions that completed before this time (epoch ms).
    """

    keep_last: int | None = None
    completed_before: int | None = None

    def __post_init__(self) -> None:
        _check_count(self.keep_last, "keep_last")
        _check_ms(self.completed_before, "completed_before")


@dataclass(frozen=True)
class InstanceFilter:
    """Selects instances for the bulk operations; the criteria are ANDed.

    instance_ids: only these ids (stored as a tuple). completed_before: only instances whose current execution
    completed before this time (epoch ms), which excludes running ones. limit: at most this many (default 1000).
    """

    instance_ids: tuple[str, ...] | None = None
    completed_before: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.instance_ids is not None:
            if isinstance(self.instance_ids, (str, bytes)):
                raise TypeError("instance_ids must be a list of ids, not a single string")
            ids = tuple(self.instance_ids)
            bad = [i for i in ids if not isinstance(i, str)]
            if bad:
                raise TypeError(f"instance ids must be str, got {type(bad[0]).__name__}")
            for i in ids:
                check_storable(i, "instance id")
            object.__setattr__(self, "instance_ids", ids)
        _check_ms(self.completed_before, "completed_before")
        _check_count(self.limit, "limit")


@dataclass(frozen=True)
class SystemMetrics:
    """Counts over the whole store."""

    total_instances: int
    total_executions: int
    running_instances: int
    completed_instances: int
    failed_instances: int
    total_events: int


@dataclass(frozen=True)
class QueueDepths:
    """Pending work nobody holds right now: inbox messages of instances whose lease is free (orchestrator),
    activity work items not leased by a worker (worker) and scheduled timers (timer)."""

    orchestrator_queue: int
    worker_queue: int
    timer_queue: int


@dataclass(frozen=True)
class SystemStats:
    """One instance, from get_orchestration_stats: its current execution's history (event count and stored
    bytes), its pending inbox messages and its KV store (keys and value bytes)."""

    history_event_count: int
    history_size_bytes: int
    queue_pending_count: int
    kv_user_key_count: int
    kv_total_value_bytes: int
