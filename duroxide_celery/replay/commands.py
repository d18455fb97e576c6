"""What one turn takes in and hands back: TurnInput, TurnResult, and the commands the store carries out.

A command is work outside this instance that the turn decided (schedule or cancel an activity or timer, start or
cancel another instance, tell the parent); the store performs the commands in the transaction that commits the
turn's history, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .events import HistoryEvent


@dataclass
class ScheduleActivity:
    event_id: int
    name: str
    input: str
    session_id: str | None = None
    tag: str | None = None
    ttl_ms: int | None = None
    #: Flow control (`.with_key()`, `.with_priority()`): the key the activity's limits count it under, its priority.
    key: str | None = None
    priority: int | None = None


@dataclass
class CancelActivity:
    event_id: int


@dataclass
class ScheduleTimer:
    event_id: int
    fire_at_ms: int


@dataclass
class CancelTimer:
    event_id: int


@dataclass
class StartOrchestration:
    """Start another instance: a child (with parent link) or a detached one (parent fields None)."""

    instance_id: str
    name: str
    input: str
    version: str | None = None
    parent_instance_id: str | None = None
    parent_execution_id: int | None = None
    parent_event_id: int | None = None


@dataclass
class CancelInstance:
    instance_id: str
    reason: str


@dataclass
class NotifyParent:
    parent_instance_id: str
    parent_execution_id: int
    parent_event_id: int
    kind: str  # ev.MSG_SUB_COMPLETED or ev.MSG_SUB_FAILED
    result: str | None = None
    details: dict[str, Any] | None = None


Command = (
    ScheduleActivity | CancelActivity | ScheduleTimer | CancelTimer | StartOrchestration | CancelInstance | NotifyParent
)


@dataclass
class TurnInput:
    instance_id: str
    execution_id: int
    history: list[HistoryEvent]
    messages: list[dict[str, Any]]
    now_ms: int
    new_guid: Callable[[], str]
    clock: Callable[[], int] | None = None
    kv_snapshot: dict[str, tuple[str, int]] = field(default_factory=dict)
    kv_reader: Callable[[str, str], str | None] | None = None
    #: The untagged activity queue (`<prefix>.activities`); a tagged activity goes to `<activity_queue>.<tag>`,
    #: which must fit AMQP's 255-byte queue names. None: assume the longest default name, the embedded runtime's
    #: `duroxide-<12 hex digits>.activities` (a tag of at most 222 bytes).
    activity_queue: str | None = None


#: What the tag check assumes when the turn does not name its activity queue (see TurnInput.activity_queue).
DEFAULT_ACTIVITY_QUEUE_ASSUMED = "duroxide-" + "0" * 12 + ".activities"


@dataclass
class TurnResult:
    """Everything one turn decided. `status` is Running, Completed, Failed or ContinuedAsNew for a turn that ran;
    `Idle` (nothing to do: no execution, or it already ended) and `Unregistered` (no handler here) commit nothing."""

    status: str
    new_events: list[HistoryEvent] = field(default_factory=list)
    outgoing: list[Command] = field(default_factory=list)
    orchestration_name: str | None = None
    orchestration_version: str | None = None
    output: str | None = None
    error: dict[str, Any] | None = None
    custom_status_changed: bool = False
    custom_status: str | None = None
    kv_ops: list[tuple[Any, ...]] = field(default_factory=list)
    kv_state: dict[str, tuple[str, int]] = field(default_factory=dict)
    continue_as_new: dict[str, Any] | None = None
    parent: dict[str, Any] | None = None
    unregistered: tuple[str, str | None] | None = None
    dropped_messages: int = 0
    #: The ReplayEngine that computed this turn (a worker may keep it to resume the instance next turn). Typed
    #: Any because this module may not import engine.py, which imports it.
    replay_engine: Any = field(default=None, repr=False, compare=False)
