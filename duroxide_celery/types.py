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
class ActivityWait:
    """An activity the instance has scheduled and not yet received the outcome of (a `dx_work_items` row, or a
    completion already delivered to the inbox that no turn has read yet: `state` "delivered").

    state: "queued" (no worker holds it), "running" (claimed: `claimed_by` is the lease owner, `claimed_until`
    its expiry), "backing off" (given back until `visible_at`: no worker has its handler, or it is retried),
    "held" (waiting in the store for a slot of its activity's limit: `held_by` says which, e.g. "held by limit
    CallApi(key_limit=2) for key 'tenant:42'"), "delivered" (finished; its result waits for the next turn)."""

    event_id: int
    name: str
    tag: str | None
    session_id: str | None
    attempt: int
    state: str
    claimed_by: str | None
    claimed_until: int | None
    scheduled_at: int
    visible_at: int = 0
    #: The worker node that owns the activity's session (its session queue), if it has one.
    session_owner: str | None = None
    #: Why a "held" activity waits (flow control: the limit holding it); None otherwise.
    held_by: str | None = None


@dataclass(frozen=True)
class TimerWait:
    """A durable timer not yet fired into history; `created_at` is when the orchestration scheduled it."""

    event_id: int
    fire_at: int
    created_at: int


@dataclass(frozen=True)
class EventWait:
    """An open `wait_for_event` (positional event) or `dequeue_event` (queue): the subscription's event id, the
    event or queue name, and since when (the subscription's history timestamp, epoch ms)."""

    event_id: int
    name: str
    since: int


@dataclass(frozen=True)
class ChildWait:
    """A sub-orchestration whose outcome the instance has not received: its id, name and current status
    ("NotFound" while its start is still in flight)."""

    event_id: int
    instance_id: str
    name: str
    status: str
    since: int


@dataclass(frozen=True)
class Waits:
    """What a running instance is waiting on, from the store's pending work and its current execution's history.
    A finished instance waits on nothing (every list empty).

    waiting_reason: why it makes no progress at all (a handler no worker has registered: the turn backs off
    until `retry_at`). inbox_pending: messages delivered to it that no turn has processed yet.
    Events and queues are derived from the current execution's history: subscriptions no arrival was paired with
    (providers/waits.open_work)."""

    instance_id: str
    status: str
    execution_id: int
    activities: tuple[ActivityWait, ...] = ()
    timers: tuple[TimerWait, ...] = ()
    events: tuple[EventWait, ...] = ()
    queues: tuple[EventWait, ...] = ()
    children: tuple[ChildWait, ...] = ()
    waiting_reason: str | None = None
    retry_at: int | None = None
    inbox_pending: int = 0

    @property
    def is_waiting(self) -> bool:
        """Whether there is anything at all to show."""
        return bool(
            self.activities
            or self.timers
            or self.events
            or self.queues
            or self.children
            or self.waiting_reason
            or self.inbox_pending
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
    #: What it waits on (get_instance_info(..., include_waits=False) leaves it None).
    waits: Waits | None = None
    #: The instance this one restarts (Client.restart), else None.
    restarted_from: str | None = None


@dataclass(frozen=True)
class StartRequest:
    """One start of `Client.start_orchestrations`: the arguments of `start_orchestration` (a `version` pins it as
    `start_orchestration_versioned` does; `key` is what a start limit counts it under). Checked by the call."""

    instance_id: str
    orchestration_name: str
    input: Any = None
    version: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class StartResult:
    """What a start did: `outcome` is "created" (a new instance), "restarted" (a finished instance's id got a
    fresh execution: if_exists="restart_if_finished") or "kept" (the id existed; nothing was written). True when
    this call started something."""

    instance_id: str
    outcome: str
    execution_id: int

    def __bool__(self) -> bool:
        return self.outcome != "kept"


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


@dataclass(frozen=True)
class ScheduleRun:
    """What happened to one tick of a schedule (or, with `ticks` > 1, to a run of ticks from `fire_at` on).

    `action`: "started" (its instance `instance_id` was started), "triggered" (trigger_schedule started it),
    "buffered" (it waits for the previous run to end; a "started" record follows), "skipped" (`detail` says why:
    the previous run still running, superseded by a later tick, or missed beyond the catch-up window).
    `status` is the started instance's status now (Running, Completed, Failed, or NotFound once deleted).
    Times are epoch milliseconds (UTC); `fire_at` is the tick's nominal time."""

    fire_at: int
    action: str
    instance_id: str | None = None
    status: str | None = None
    ticks: int = 1
    detail: str | None = None
    recorded_at: int = 0


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule: its definition, its state and (from get_schedule) what happened to its latest ticks.

    Times are epoch milliseconds (UTC). `next_fire_times` are nominal ticks (each may start up to `jitter_ms`
    later); empty once `end_at` has passed; for a paused schedule, those from where it stood when paused (resuming
    plans from the first tick after now). `recent_runs` is newest first (the store keeps the latest 50 records
    per schedule; list_schedules leaves it empty). `skipped_count` counts every skipped tick since creation."""

    schedule_id: str
    orchestration_name: str
    input: Any
    version: str | None
    cron: str | None
    every_ms: int | None
    timezone: str
    overlap: str
    catchup_window_ms: int
    jitter_ms: int
    start_at: int | None
    end_at: int | None
    paused: bool
    next_fire_times: list[int]
    buffered_fire_at: int | None
    last_fire_at: int | None
    last_instance_id: str | None
    skipped_count: int
    created_at: int
    updated_at: int
    recent_runs: list[ScheduleRun]
