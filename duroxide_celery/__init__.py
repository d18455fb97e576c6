"""duroxide-celery: durable orchestrations (the duroxide programming model) on Celery and SQLAlchemy.

The public names match duroxide-python, so its programs port by changing imports.
"""

from . import errors
from .activity_context import ActivityContext, OrchestrationContext
from .client import Client
from .errors import (
    ActivityFailed,
    CannotDeleteSubOrchestration,
    InstanceAlreadyExists,
    InstanceNotFound,
    InstanceStillRunning,
    OperationTimedOut,
    OrchestrationFailed,
    RewindRefused,
    ScheduleAlreadyExists,
    ScheduleNotFound,
    StoreNotReady,
)
from .metrics import MetricsSnapshot
from .options import RuntimeOptions
from .providers import PostgresProvider, SqliteProvider
from .replay.limits import MAX_KV_KEYS, MAX_KV_VALUE_BYTES
from .runtime import Runtime
from .tagfilter import MAX_TAG_NAME_BYTES, MAX_WORKER_TAGS, TagFilter
from .tracing import init_tracing, parse_result
from .types import (
    ActivityWait,
    ChildWait,
    DeleteInstanceResult,
    Event,
    EventWait,
    ExecutionInfo,
    InstanceFilter,
    InstanceInfo,
    InstanceTree,
    OrchestrationResult,
    PruneOptions,
    PruneResult,
    QueueDepths,
    ScheduleInfo,
    ScheduleRun,
    StartRequest,
    StartResult,
    SystemMetrics,
    SystemStats,
    TimerWait,
    Waits,
)

__all__ = [
    "MAX_KV_KEYS",
    "MAX_KV_VALUE_BYTES",
    "MAX_TAG_NAME_BYTES",
    "MAX_WORKER_TAGS",
    "ActivityContext",
    "ActivityFailed",
    "ActivityWait",
    "CannotDeleteSubOrchestration",
    "ChildWait",
    "Client",
    "DeleteInstanceResult",
    "Event",
    "EventWait",
    "ExecutionInfo",
    "InstanceAlreadyExists",
    "InstanceFilter",
    "InstanceInfo",
    "InstanceNotFound",
    "InstanceStillRunning",
    "InstanceTree",
    "MetricsSnapshot",
    "OperationTimedOut",
    "OrchestrationContext",
    "OrchestrationFailed",
    "OrchestrationResult",
    "PostgresProvider",
    "PruneOptions",
    "PruneResult",
    "QueueDepths",
    "RewindRefused",
    "Runtime",
    "RuntimeOptions",
    "ScheduleAlreadyExists",
    "ScheduleInfo",
    "ScheduleNotFound",
    "ScheduleRun",
    "SqliteProvider",
    "StartRequest",
    "StartResult",
    "StoreNotReady",
    "SystemMetrics",
    "SystemStats",
    "TagFilter",
    "TimerWait",
    "Waits",
    "errors",
    "init_tracing",
    "parse_result",
]
