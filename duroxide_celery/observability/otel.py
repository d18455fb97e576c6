"""OpenTelemetry spans of starts, turns and activity attempts, one trace per instance (the `[otel]` extra).

The trace context (W3C `traceparent`/`tracestate`, as JSON) is stored with the instance when it is created
(`dx_instances.trace_context`), so every later span of the instance, in any worker process, after restarts and
replays, descends from it:

- `duroxide.start <Name>`: `Client.start_orchestration`; a child of the caller's current span, else the root of a
  new trace. Its context is the one stored, and the wake-up it publishes is sent inside it. A bulk start
  (`Client.start_orchestrations`) has one such span per instance, siblings; its wake-ups go out in one batch, in
  the caller's context.
- `duroxide.turn <Name>`, `duroxide.activity <Name>`: children of the stored context (one level under the start:
  a long workflow's trace stays flat). A span that is current when they begin, such as the `run/duroxide.turn`
  span of opentelemetry-instrumentation-celery, becomes a link, not the parent: a poke sent by the recovery sweep
  or beat, or an event raised from a web request, carries another trace, and the instance's spans stay in one.
  Messages published inside our spans (activity tasks, pokes) carry our span as their parent, so Celery's own
  spans join the instance's trace too.
- A sub-orchestration (or a detached `ctx.start_orchestration`) stores the context of the parent's turn span that
  created it: its spans are in the parent's trace, under that turn.
- An instance started by a process that did not trace gets the context of its first traced turn (written in that
  turn's lease transaction): that turn's span is the root of the instance's trace.

Attributes are ids, names, versions, the attempt and the worker id; never inputs, outputs or error messages
(a failure sets the span's status to ERROR with `error.type` only: messages can quote payloads).
Inert (no span, no store read) unless opentelemetry-api is importable and a TracerProvider is configured.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ActivityFailed
from ..providers.telemetry import trace_context

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, Span, Status, StatusCode, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the [otel] extra is not installed: every hook does nothing
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ..providers.store import ClaimedWorkItem, InstanceLease, Store
    from ..providers.turn_shapes import TurnTransaction as LeasedTurn
    from ..replay.engine import TurnResult

__all__ = ["ActivitySpan", "Tracing", "TurnSpan", "tracing_enabled"]

TRACER_NAME = "duroxide_celery"
INSTANCE_ID = "duroxide.instance_id"
EXECUTION_ID = "duroxide.execution_id"
ORCHESTRATION_NAME = "duroxide.orchestration.name"
ORCHESTRATION_VERSION = "duroxide.orchestration.version"
ACTIVITY_NAME = "duroxide.activity.name"
ACTIVITY_ID = "duroxide.activity.id"
ACTIVITY_TAG = "duroxide.activity.tag"
ATTEMPT = "duroxide.attempt"
WORKER_ID = "duroxide.worker_id"
TURN_STATUS = "duroxide.turn.status"
ERROR_TYPE = "error.type"

#: The leading type name of an ActivityFailed message (`ValueError: ...`, `Poison: ...`).
_TYPE_NAME = re.compile(r"[A-Za-z_][\w.]*")
#: The W3C format is what the store keeps, whatever propagator the process configured globally.
_W3C = TraceContextTextMapPropagator() if trace is not None else None
#: The turn span of this thread's turn in progress, for `Tracing.turn_committed`.
_ACTIVE_TURN: contextvars.ContextVar[TurnSpan | None] = contextvars.ContextVar("duroxide_turn_span", default=None)


def tracing_enabled() -> bool:
    """Whether spans are recorded: opentelemetry-api importable and a real TracerProvider set."""
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def dump_context(span: Span) -> str | None:
    """The span's context as stored JSON ({"traceparent": ..., "tracestate": ...}); None for an invalid span."""
    if _W3C is None or not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return json.dumps(carrier, sort_keys=True)


def load_context(stored: str | None) -> Any:
    """The OpenTelemetry Context a stored trace context names; with none, an empty Context (a span started in it
    is a root, whatever span is current in this thread)."""
    try:
        carrier = json.loads(stored) if stored else None
    except ValueError:
        carrier = None  # not ours to repair: the span starts its own trace
    return _W3C.extract(carrier) if isinstance(carrier, dict) else otel_context.Context()


def _links() -> list[Any] | None:
    """A link to the span current in this thread (Celery's task span when that is instrumented), if any."""
    current = trace.get_current_span().get_span_context()
    return [Link(current)] if current.is_valid else None


def _start_attributes(instance_id: str, name: str, version: str | None) -> dict[str, str]:
    attributes = {INSTANCE_ID: instance_id, ORCHESTRATION_NAME: name}
    if version:
        attributes[ORCHESTRATION_VERSION] = version
    return attributes


def _mark_failed(span: Span, error_type: str) -> None:
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


class Tracing:
    """The span hooks the Client and the executors call. One per Client or Runtime; cheap when disabled."""

    def __init__(self) -> None:
        self._cached: tuple[Any, Tracer] | None = None

    def tracer(self) -> Tracer | None:
        """The tracer of the current TracerProvider; None when tracing is off."""
        if not tracing_enabled():
            return None
        provider = trace.get_tracer_provider()
        cached = self._cached
        if cached is None or cached[0] is not provider:
            cached = self._cached = (provider, provider.get_tracer(TRACER_NAME))
        return cached[1]

    @contextmanager
    def start(self, instance_id: str, name: str, version: str | None) -> Iterator[str | None]:
        """The `duroxide.start` span around writing a new instance and waking a worker; yields the trace context
        to store with the instance (None when tracing is off)."""
        tracer = self.tracer()
        if tracer is None:
            yield None
            return
        with tracer.start_as_current_span(
            f"duroxide.start {name}",
            attributes=_start_attributes(instance_id, name, version),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield dump_context(span)
            except BaseException as exc:
                _mark_failed(span, type(exc).__name__)
                raise

    @contextmanager
    def starts(self, starts: Sequence[tuple[str, str, str | None]]) -> Iterator[list[str | None]]:
        """A bulk start's spans: one `duroxide.start` span per (instance id, name, version), siblings under the
        caller's current span (each instance keeps its own trace); yields their trace contexts in order."""
        tracer = self.tracer()
        if tracer is None:
            yield [None] * len(starts)
            return
        spans = [
            tracer.start_span(
                f"duroxide.start {name}",
                attributes=_start_attributes(instance_id, name, version),
                record_exception=False,
                set_status_on_exception=False,
            )
            for instance_id, name, version in starts
        ]
        try:
            yield [dump_context(span) for span in spans]
        except BaseException as exc:
            for span in spans:
                _mark_failed(span, type(exc).__name__)
            raise
        finally:
            for span in spans:
                span.end()

    def current_context(self) -> str | None:
        """The trace context for an instance created inside the current span (a turn's child): that span's."""
        if self.tracer() is None:
            return None
        return dump_context(trace.get_current_span())

    @contextmanager
    def turn(self, instance_id: str, worker_id: str) -> Iterator[TurnSpan]:
        """Around one turn; its span begins at `TurnSpan.leased` (a poke that finds nothing to do leaves none)."""
        turn = TurnSpan(self.tracer(), worker_id)
        try:
            yield turn
        except BaseException as exc:
            turn.failed(exc)
            raise
        finally:
            turn.close()

    @staticmethod
    def turn_committed(result: TurnResult) -> None:
        """The outcome of this thread's turn in progress (called once its commit is done)."""
        turn = _ACTIVE_TURN.get()
        if turn is not None:
            turn.committed(result)

    @contextmanager
    def activity_attempt(self, store: Store, worker_id: str) -> Iterator[ActivitySpan]:
        """Around one activity task; its span begins at `ActivitySpan.claimed` (a duplicate delivery leaves
        none). ActivityFailed (the attempt failed and was recorded) ends it with an ERROR status."""
        attempt = ActivitySpan(self.tracer(), store, worker_id)
        try:
            yield attempt
        except BaseException as exc:
            attempt.failed(exc)
            raise
        finally:
            attempt.close()


class _SpanScope:
    """A span started late (once the lease or claim is ours), dated from when its step began, current until
    closed."""

    def __init__(self, tracer: Tracer | None, worker_id: str):
        self._tracer = tracer
        self._worker_id = worker_id
        self._began = time.time_ns() if tracer is not None else 0
        self.span: Span | None = None
        self._token: Any = None

    def _begin(self, name: str, stored: str | None, attributes: dict[str, Any]) -> None:
        assert self._tracer is not None
        attributes[WORKER_ID] = self._worker_id
        self.span = self._tracer.start_span(
            name,
            context=load_context(stored),
            links=_links(),
            attributes=attributes,
            start_time=self._began,
            record_exception=False,
            set_status_on_exception=False,
        )
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def failed(self, exc: BaseException) -> None:
        if self.span is not None:
            _mark_failed(self.span, type(exc).__name__)

    def close(self) -> None:
        if self.span is None:
            return
        otel_context.detach(self._token)
        self.span.end()
        self.span = None


class TurnSpan(_SpanScope):
    """One turn's `duroxide.turn <Name>` span."""

    def leased(self, lease: InstanceLease, turn: LeasedTurn) -> None:
        """The turn holds the instance: begin its span under the instance's stored context (read in the turn's
        lease transaction: on SQLite it holds the only write transaction). An instance started by a process that
        did not trace has none: this span becomes its root, stored for the spans that follow."""
        if self._tracer is None:
            return
        stored = turn.trace_context()
        self._begin(
            f"duroxide.turn {lease.orchestration_name}",
            stored,
            {
                INSTANCE_ID: lease.instance_id,
                EXECUTION_ID: lease.execution_id,
                ORCHESTRATION_NAME: lease.orchestration_name,
                ATTEMPT: lease.attempt_count,
            },
        )
        self._active = _ACTIVE_TURN.set(self)
        if stored is None and self.span is not None:
            adopted = dump_context(self.span)
            if adopted is not None:
                turn.adopt_trace_context(adopted)

    def committed(self, result: TurnResult) -> None:
        if self.span is None:
            return
        if result.orchestration_version:
            self.span.set_attribute(ORCHESTRATION_VERSION, result.orchestration_version)
        self.span.set_attribute(TURN_STATUS, result.status)
        if result.status == "Failed":
            details = result.error or {}
            _mark_failed(self.span, str(details.get("kind") or details.get("category") or "Failed"))

    def close(self) -> None:
        if self.span is not None:
            _ACTIVE_TURN.reset(self._active)
        super().close()


class ActivitySpan(_SpanScope):
    """One activity attempt's `duroxide.activity <Name>` span."""

    def __init__(self, tracer: Tracer | None, store: Store, worker_id: str):
        super().__init__(tracer, worker_id)
        self._store = store

    def claimed(self, item: ClaimedWorkItem) -> None:
        """This worker holds the activity: begin its span under the instance's stored context."""
        if self._tracer is None:
            return
        with self._store.read() as conn:
            stored = trace_context(conn, item.instance_id)
        attributes: dict[str, Any] = {
            INSTANCE_ID: item.instance_id,
            EXECUTION_ID: item.execution_id,
            ORCHESTRATION_NAME: item.orchestration_name or "",
            ACTIVITY_NAME: item.name,
            ACTIVITY_ID: item.event_id,
            ATTEMPT: item.attempt_count,
        }
        if item.orchestration_version:
            attributes[ORCHESTRATION_VERSION] = item.orchestration_version
        if item.tag:
            attributes[ACTIVITY_TAG] = item.tag
        self._begin(f"duroxide.activity {item.name}", stored, attributes)

    def failed(self, exc: BaseException) -> None:
        if self.span is None:
            return
        if isinstance(exc, ActivityFailed):
            # Its message starts with the error's type name (tasks/activity.py `_fail`); only that part is kept.
            found = _TYPE_NAME.match(str(exc))
            _mark_failed(self.span, found.group(0) if found else "ActivityFailed")
        else:
            super().failed(exc)
