"""Prometheus exposition (the `[prometheus]` extra): the runtime's counters under duroxide's metric names, and the
store's queue depths, through prometheus_client.

- `DuroxideCollector(runtime or client)`: register it in your registry (`registry.register(...)`). A Runtime gives
  its counters and the store's gauges; a Client (no runtime in its process) gives the store's gauges only.
- `start_metrics_server(source, port, addr="127.0.0.1")`: an HTTP endpoint of its own; `metrics_wsgi_app(source)`:
  the same as a WSGI app to mount in a web app.
- `celery worker` processes: with `DUROXIDE_METRICS_PORT=N` in their environment, each process that runs tasks
  serves its own endpoint: prefork child i on port N+i (the solo and thread pools: the worker on port N), bound to
  `DUROXIDE_METRICS_ADDR` (default 127.0.0.1). Counters are per process (a restarted child starts from zero, which
  Prometheus' rate() handles); the store-wide gauges come from port N only, so that summing over a worker's
  endpoints counts each backlog once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..metrics import LABELS, Metrics
from ..providers import Provider
from ..providers.telemetry import running_instances

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..providers.store import Store

__all__ = ["DuroxideCollector", "METRICS_ADDR_ENV", "METRICS_PORT_ENV", "metrics_wsgi_app", "start_metrics_server"]

log = logging.getLogger(__name__)

METRICS_PORT_ENV = "DUROXIDE_METRICS_PORT"
METRICS_ADDR_ENV = "DUROXIDE_METRICS_ADDR"

_HELP = {
    "duroxide_orchestration_starts_total": "Orchestration executions started (continue-as-new included).",
    "duroxide_orchestration_completions_total": "Orchestrations that ended: success, failed or cancelled.",
    "duroxide_orchestration_failures_total": "Orchestration failures by error type.",
    "duroxide_orchestration_infrastructure_errors_total": "Orchestrations failed by an infrastructure error.",
    "duroxide_orchestration_configuration_errors_total": "Orchestrations failed by a configuration error.",
    "duroxide_orchestration_continue_as_new_total": "Continue-as-new operations.",
    "duroxide_orchestration_poison_total": "Orchestrations failed as poison (attempts exhausted).",
    "duroxide_suborchestration_calls_total": "Sub-orchestrations scheduled, by parent and child name.",
    "duroxide_activity_executions_total": "Activity attempts by outcome and retry attempt.",
    "duroxide_activity_infrastructure_errors_total": "Activity attempts failed by an infrastructure error.",
    "duroxide_activity_configuration_errors_total": "Activity attempts failed by a configuration error.",
    "duroxide_activity_poison_total": "Activities failed as poison (attempts exhausted).",
}
#: The store-wide gauges: (name, help, QueueDepths field or None for the running-instance count).
_GAUGES = (
    ("duroxide_orchestrator_queue_depth", "Inbox messages waiting for an instance nobody holds.", "orchestrator_queue"),
    ("duroxide_worker_queue_depth", "Activities waiting, held by no live worker.", "worker_queue"),
    ("duroxide_timer_queue_depth", "Durable timers not yet fired.", "timer_queue"),
    ("duroxide_active_orchestrations", "Instances running (not Completed or Failed).", None),
)


class MetricsSource(Protocol):
    """A Runtime or a Client, typed by shape (tasks/hooks.py imports this module; runtime.py imports tasks/)."""

    provider: Provider


class DuroxideCollector(Collector):
    """duroxide's metrics of one Runtime (this process's counters, and the store's gauges) or one Client (the
    store's gauges). `store_gauges=False` leaves out the gauges (they read the store on every scrape)."""

    def __init__(self, source: MetricsSource, *, store_gauges: bool = True):
        provider = getattr(source, "provider", None)
        store = getattr(provider, "store", None)
        if store is None:
            raise TypeError(f"DuroxideCollector needs a duroxide_celery Runtime or Client, got {source!r}")
        metrics = getattr(source, "metrics", None)
        self._metrics: Metrics | None = metrics if isinstance(metrics, Metrics) else None
        self._store: Callable[[], Store] = lambda: provider.store
        self._store_gauges = store_gauges

    def describe(self) -> Iterable[Any]:
        """The metric names, without reading anything (what `registry.register` calls)."""
        return list(self._families(with_values=False))

    def collect(self) -> Iterable[Any]:
        return list(self._families(with_values=True))

    def _families(self, with_values: bool) -> Iterator[Any]:
        if self._metrics is not None:
            labeled = self._metrics.labeled() if with_values else {}
            for name, labels in LABELS.items():
                family = CounterMetricFamily(name, _HELP[name], labels=labels)
                for values, count in sorted(labeled.get(name, {}).items()):
                    family.add_metric(list(values), count)
                yield family
        if not self._store_gauges:
            return
        values = self._read_gauges() if with_values else {}
        if with_values and values is None:
            return  # the store is unreachable: the counters still go out; the gauges are missing, not zero
        for name, help_text, _field in _GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["state"] if _field is None else [])
            if values:
                family.add_metric(["all"] if _field is None else [], values[name])
            yield family

    def _read_gauges(self) -> dict[str, int] | None:
        store = self._store()
        try:
            depths = store.queue_depths()
            with store.read() as conn:
                running = running_instances(conn)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blipped
            log.warning("duroxide metrics: the store could not be read; queue depths left out of this scrape")
            return None
        values = {name: depths[field] for name, _help, field in _GAUGES if field is not None}
        values["duroxide_active_orchestrations"] = running
        return values


def _registry(source: MetricsSource, store_gauges: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DuroxideCollector(source, store_gauges=store_gauges))
    return registry


def start_metrics_server(
    source: MetricsSource, port: int, addr: str = "127.0.0.1", *, store_gauges: bool = True
) -> WSGIServer:
    """Serve `source`'s metrics at http://addr:port/metrics from a daemon thread; returns the server (its
    `server_port` is the port, useful with port 0; `shutdown()` stops it)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    server, _thread = start_http_server(port, addr=addr, registry=_registry(source, store_gauges))
    return server


def metrics_wsgi_app(source: MetricsSource) -> Callable[..., Any]:
    """A WSGI app serving `source`'s metrics (mount it at /metrics in Flask, Django or any WSGI server)."""
    return make_wsgi_app(_registry(source))


def serve_worker_process(runtime: MetricsSource, process_index: int | None) -> WSGIServer | None:
    """In a `celery worker` process that runs tasks: serve its metrics on DUROXIDE_METRICS_PORT + its pool process
    index, when that variable is set (module docstring). A taken port is logged, never fatal to the worker."""
    base = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not base:
        return None
    try:
        port = int(base) + (process_index or 0)
    except ValueError:
        log.error("%s=%r is not a port number: no metrics endpoint", METRICS_PORT_ENV, base)
        return None
    addr = os.environ.get(METRICS_ADDR_ENV, "").strip() or "127.0.0.1"
    try:
        server = start_metrics_server(runtime, port, addr, store_gauges=not process_index)
    except (OSError, ValueError) as exc:
        log.error("duroxide metrics endpoint on %s:%s could not start: %s", addr, port, exc)
        return None
    log.info("duroxide metrics at http://%s:%d/metrics", addr, server.server_port)
    return server
