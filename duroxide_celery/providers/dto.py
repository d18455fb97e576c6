"""The store's data objects: what its operations take and return (no SQL here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..replay.events import HistoryEvent

#: A turn's reads: the history (after a known prefix), the pending messages (id, message) and the KV snapshot.
TurnLoad = tuple[list[HistoryEvent], list[tuple[int, dict[str, Any]]], dict[str, tuple[str, int]]]

#: An activity row and the lease owner holding it.
HeldWorkItem = tuple[tuple[str, int, int], str]


class LeaseLost(Exception):
    """The instance lease expired and was taken over while a turn ran; its work is discarded."""


@dataclass
class InstanceLease:
    instance_id: str
    execution_id: int
    orchestration_name: str
    status: str
    attempt_count: int
    next_attempt_at: int
    custom_status_version: int
    #: Why the instance waited, or what its last failed attempt raised (what a poison decision names as its cause).
    waiting_reason: str | None = None
    #: This lease's holder: unique per turn (`Store.acquire_instance`'s caller makes it), so a turn whose lease was
    #: taken over, even by another thread of its own process, fails every owner-guarded write.
    owner: str = ""


@dataclass
class ClaimedWorkItem:
    instance_id: str
    execution_id: int
    event_id: int
    name: str
    input: str
    session_id: str | None
    tag: str | None
    orchestration_name: str | None
    orchestration_version: str | None
    attempt_count: int
    #: This claim's lease holder (the claimer's, unique per execution): the outcome is recorded only under it.
    owner: str = ""


@dataclass
class PendingActivity:
    """An activity row to publish (after commit). `node`: the live owner of its session, whose session queue
    gets it; None sends it to its tag's queue, where any matching worker may claim it (and its session)."""

    instance_id: str
    execution_id: int
    event_id: int
    name: str
    session_id: str | None = None
    tag: str | None = None
    node: str | None = None


@dataclass
class SessionBusy:
    """A claim refused for its session: `owner` holds it (publish there), or, with owner None, this worker is at
    max_sessions_per_runtime (publish back to the claim path for another worker). `activity` is the refused row,
    routed to `owner`, ready to publish again."""

    owner: str | None
    activity: PendingActivity | None = None


@dataclass
class SessionPolicy:
    """A worker's session limits (RuntimeOptions)."""

    lock_ms: int
    max_sessions: int


@dataclass
class TreeDeletion:
    """Outcome of Store.delete_tree: status is deleted, not_found, sub_orchestration or running."""

    status: str
    parent_id: str | None = None
    running_ids: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
