"""Observability beyond logs: OpenTelemetry spans (`otel.py`, the `[otel]` extra) and a Prometheus exposition of
the runtime's counters and the store's queue depths (`prometheus.py`, the `[prometheus]` extra)."""

from .otel import Tracing, tracing_enabled

__all__ = ["Tracing", "tracing_enabled"]
