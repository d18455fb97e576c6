"""Result objects returned by the Client, with duroxide-python's field names (semantics.md 1.8)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .replay.events import HistoryEvent

STATUSES = ("Running", "Completed", "Failed", "NotFound", "ContinuedAsNew")


@dataclass(frozen=True)
class OrchestrationResult:
    """Status of an instance's latest execution; `output` is JSON-decoded, `error` is the failure text."""

    status: str
    output: Any = None
    error: str | None = None
    custom_status: str | None = None
    custom_status_version: int = 0


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


@dataclass(frozen=True)
class ExecutionInfo:
    execution_id: int
    status: str
    output: Any
    started_at: int
    completed_at: int | None
    event_count: int
