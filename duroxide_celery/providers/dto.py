"""The store's data objects: what its operations take and return (no SQL here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..replay.commands import ScheduleActivity
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
    #: 'admitted' when the instance holds a slot of its orchestration's start limit (its end frees it); else None.
    flow_state: str | None = None
    #: The instance's count of refused pokes when this lease was taken (PostgreSQL; turn_shapes.py).
    refused_pokes: int = 0


@dataclass
class LoadedLease:
    """A lease taken together with the turn's reads (PostgreSQL: one statement): `load` holds the history of
    execution `lease.execution_id` after event `after` (0: all of it), the pending messages and the KV snapshot."""

    lease: InstanceLease
    load: TurnLoad
    after: int
    #: The instance's stored trace context (observability/otel.py), if any.
    trace_context: str | None = None


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
class RecordedOutcome:
    """An activity's outcome, recorded. `admitted`: held work of its activity that the slot it freed let in (flow
    control), to publish after the commit. (Truthy: `if not store.complete_work_item(...)` reads "dropped".)"""

    admitted: list[PendingActivity] = field(default_factory=list)
    #: Whether the instance still has other activity rows (its orchestration may be waiting for more of them).
    others_pending: bool = False
    #: Whether this outcome's recorder wakes the instance; False when a turn holds its lease and was told to drain
    #: again (PostgreSQL, counted as a refused poke), so a fan-out's completions bring a few turns, not a poke each.
    wake: bool = True


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


@dataclass
class NewInstance:
    """A checked start of `Store.create_instances` (a Client bulk start): its encoded input, and the trace context
    its spans descend from (observability/otel.py), if any."""

    instance_id: str
    name: str
    input: str
    version: str | None = None
    trace_context: str | None = None


# -- a turn's commit (Store.commit_turn) ------------------------------------------------------------------------
@dataclass
class NewTimer:
    """A durable timer a turn scheduled (its scheduled event id, and when it fires)."""

    event_id: int
    fire_at_ms: int


@dataclass
class InboxMessage:
    """A message for an instance's inbox: `kind` and its JSON-ready `payload`."""

    instance_id: str
    kind: str
    payload: dict[str, Any]


@dataclass
class ChildStart:
    """A sub-orchestration (or detached orchestration, `parent_event_id` None) a turn starts. When the id is taken,
    `if_taken` (if any) is queued instead: an explicit child id already in use fails the parent's call at once."""

    instance_id: str
    name: str
    input: str
    version: str | None = None
    parent_event_id: int | None = None
    if_taken: InboxMessage | None = None


@dataclass
class NextExecution:
    """Continue-as-new: the next execution starts with `kv_state` and its ContinueAsNew message `payload`."""

    kv_state: dict[str, tuple[str, int]]
    payload: dict[str, Any]


@dataclass
class TurnChanges:
    """Everything one turn decided, committed by Store.commit_turn in one transaction (DESIGN invariant 2)."""

    #: The history events to append, and the inbox messages the turn consumed.
    history: list[HistoryEvent]
    consumed: list[int]
    #: (name, version) of the orchestration, stamped on its activity rows.
    orchestration: tuple[str, str] = ("", "")
    #: New column values of the instance row and of the execution row (none for most turns).
    instance: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    #: The activities it scheduled, as the replay's commands: each a row of `dx_work_items` (`ttl_ms`: its claim
    #: deadline, else the default; `key`, `priority`: flow control).
    activities: list[ScheduleActivity] = field(default_factory=list)
    default_activity_ttl_ms: int | None = None
    cancelled_activities: list[int] = field(default_factory=list)
    timers: list[NewTimer] = field(default_factory=list)
    cancelled_timers: list[int] = field(default_factory=list)
    child_starts: list[ChildStart] = field(default_factory=list)
    #: The trace context the child instances' spans descend from (the turn's span; observability/otel.py).
    child_trace_context: str | None = None
    #: Cancel requests for other instances, queued only to those still running.
    cancels: list[InboxMessage] = field(default_factory=list)
    #: Completions and failures for parent instances.
    parent_notifications: list[InboxMessage] = field(default_factory=list)
    #: KV operations in order: ("set", key, value, stamp), ("clear", key), ("clear_all",).
    kv_ops: list[tuple[Any, ...]] = field(default_factory=list)
    custom_status_changed: bool = False
    custom_status: str | None = None
    next_execution: NextExecution | None = None
    #: The activity this turn claims in its commit, to run inline once committed (tasks/inline.py); honoured only
    #: when its row is not held by a limit.
    inline_claim: InlineClaim | None = None


@dataclass
class InlineClaim:
    """Claim a turn's new activity row (`event_id`) in the turn's commit, for lease holder `owner`."""

    event_id: int
    owner: str
    lease_ms: int


@dataclass
class TurnFence:
    """The writes that open a turn's commit (Dialect.fence_turn), all or nothing on the lease `owner` holds: the
    instance row's new values (its lease released), the history appended, the messages consumed and the execution
    row's new values; with the names of the activities the turn schedules, whose limits it reads (flow.py)."""

    instance_id: str
    owner: str
    execution_id: int
    instance: dict[str, Any]
    execution: dict[str, Any] = field(default_factory=dict)
    history: list[HistoryEvent] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)
    activity_names: list[str] = field(default_factory=list)
    #: The instance's count of refused pokes when the lease was taken: a different count at the fence means a
    #: message arrived while the lease was held (PostgreSQL; turn_shapes.py).
    refused_pokes: int = 0


@dataclass
class CreatedInstance:
    """A new instance (Store.create_instance; truthy). `start_limit`: its orchestration's start limit (max_running,
    key_limit), or None without one, when the statement that created it read it too (`limit_read`)."""

    start_limit: tuple[int | None, int | None] | None = None
    limit_read: bool = False


@dataclass
class PublishPlan:
    """What to publish once a turn's commit is durable (DESIGN invariant 3)."""

    #: Activity rows to publish, each routed to its session's live owner when it has one.
    activities: list[PendingActivity] = field(default_factory=list)
    #: Instances to wake, as (instance id, orchestration name or None).
    pokes: list[tuple[str, str | None]] = field(default_factory=list)
    #: When the earliest timer this turn created fires (epoch ms), if it created any.
    first_timer_at: int | None = None
    #: Whether more messages may wait for this instance (a poke was refused while the turn held its lease).
    more: bool = False
    #: The activity row the commit claimed for this worker to run now (TurnChanges.inline_claim), if any.
    inline: ClaimedWorkItem | None = None
