"""ExecutorParts: the collaborators both executors of a worker process are built from, passed as one.

install_tasks builds it once from the Runtime; TurnExecutor and ActivityExecutor each add what only they need (the
queue names, the provider). Read `identity` at each use: a worker bootstep may change it before the worker consumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..metrics import Metrics
from ..observability.otel import Tracing
from ..options import RuntimeOptions
from ..providers.store import Store
from ..registry import Registry
from .identity import WorkerIdentity
from .inline import InlinePolicy
from .publish import Publisher

#: The store of this process, asked at each use: a provider builds it again in a forked child.
StoreSource = Callable[[], Store]


@dataclass(frozen=True)
class ExecutorParts:
    store: StoreSource
    publisher: Publisher
    settings: RuntimeOptions
    identity: WorkerIdentity
    registry: Registry
    metrics: Metrics
    #: OpenTelemetry spans (observability/otel.py; inert without a configured TracerProvider).
    tracing: Tracing
    #: Which steps run inline (tasks/inline.py); None: none.
    inline: InlinePolicy | None = None


class PartsExecutor:
    """Base of both executors: the parts as attributes, read at each use."""

    def __init__(self, parts: ExecutorParts):
        self.store = parts.store
        self.publisher = parts.publisher
        self.settings = parts.settings
        self.identity = parts.identity
        self.registry = parts.registry
        self.metrics = parts.metrics
        self.tracing = parts.tracing
        self.inline = parts.inline
