"""The Prometheus exposition (observability/prometheus.py) of an embedded runtime, scraped over HTTP: duroxide's
metric names and labels, counts that match what ran, and the store's queue depths."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

pytest.importorskip("prometheus_client", reason="the [prometheus] extra (in dev) is not installed")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from duroxide_celery import Client  # noqa: E402
from duroxide_celery.observability.prometheus import (  # noqa: E402
    DuroxideCollector,
    metrics_wsgi_app,
    start_metrics_server,
)

from .helpers import wait_until  # noqa: E402


def double(ctx: Any, n: int) -> int:
    return 2 * n


def refuse(ctx: Any, n: int) -> None:
    raise ValueError("no")


def work(ctx: Any, n: int) -> Any:
    return (yield ctx.schedule_activity("Double", n))


def fails(ctx: Any, n: int) -> Any:
    return (yield ctx.schedule_activity("Refuse", n))


def sleeps(ctx: Any, n: int) -> Any:
    yield ctx.schedule_timer(3_600_000)


def on_gpu(ctx: Any, n: int) -> Any:
    return (yield ctx.schedule_activity("Double", n).with_tag("gpu"))  # no worker here serves the tag


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def server(runtime_factory: Any) -> Iterator[tuple[Any, Any]]:
    rt = runtime_factory({"Work": work, "Fails": fails, "Sleeps": sleeps, "OnGpu": on_gpu}, {"Double": double})
    rt.register_activity("Refuse", refuse)
    httpd = start_metrics_server(rt, 0)
    yield rt, httpd
    httpd.shutdown()
    httpd.server_close()


def test_scrape_counts_what_ran_and_the_backlog(server: tuple[Any, Any], client: Client) -> None:
    rt, httpd = server
    for i in range(3):
        client.start_orchestration(f"work-{i}", "Work", i)
    client.start_orchestration("fails", "Fails", 0)
    client.start_orchestration("sleeps", "Sleeps", 0)
    client.start_orchestration("gpu", "OnGpu", 0)
    for i in range(3):
        assert client.wait_for_orchestration(f"work-{i}").status == "Completed"
    assert client.wait_for_orchestration("fails").status == "Failed"
    wait_until(lambda: client.get_queue_depths().timer_queue == 1, what="the timer of 'sleeps'")
    wait_until(lambda: client.get_queue_depths().worker_queue == 1, what="the gpu activity of 'gpu'")

    assert httpd.server_address[0] == "127.0.0.1"
    url = f"http://127.0.0.1:{httpd.server_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        found = samples(response.read().decode())

    def value(name: str, **labels: str) -> float | None:
        return found.get((name, tuple(sorted(labels.items()))))

    completions = "duroxide_orchestration_completions_total"
    assert value(completions, orchestration_name="Work", version="1.0.0", status="success") == 3
    assert value(completions, orchestration_name="Fails", version="1.0.0", status="failed") == 1
    failures = "duroxide_orchestration_failures_total"
    assert value(failures, orchestration_name="Fails", version="1.0.0", error_type="app_error") == 1
    assert value("duroxide_orchestration_starts_total", orchestration_name="Sleeps", version="1.0.0") == 1
    executions = "duroxide_activity_executions_total"
    assert value(executions, activity_name="Double", outcome="success", retry_attempt="0") == 3
    assert value(executions, activity_name="Refuse", outcome="app_error", retry_attempt="0") == 1
    assert value("duroxide_timer_queue_depth") == 1
    assert value("duroxide_worker_queue_depth") == 1
    assert value("duroxide_orchestrator_queue_depth") == 0
    assert value("duroxide_active_orchestrations", state="all") == 2
    # The snapshot the runtime reports agrees with the exposition.
    assert rt.metrics_snapshot().orch_completions == 3


def test_a_user_registry_and_a_client_source(server: tuple[Any, Any], provider: Any) -> None:
    rt, _httpd = server
    registry = CollectorRegistry()
    registry.register(DuroxideCollector(rt))
    text = generate_latest(registry).decode()
    assert "# TYPE duroxide_orchestration_completions_total counter" in text
    assert "duroxide_orchestrator_queue_depth 0.0" in text

    # A Client has no runtime counters: its collector gives the store's gauges only.
    client_registry = CollectorRegistry()
    client_registry.register(DuroxideCollector(Client(provider)))
    names = {f.name for f in text_string_to_metric_families(generate_latest(client_registry).decode())}
    assert names == {
        "duroxide_orchestrator_queue_depth",
        "duroxide_worker_queue_depth",
        "duroxide_timer_queue_depth",
        "duroxide_active_orchestrations",
    }
    # The same exposition as a WSGI app, called as a web server would.
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    answered: list[str] = []
    body = b"".join(metrics_wsgi_app(rt)(environ, lambda status, headers: answered.append(status)))
    assert answered == ["200 OK"] and b"# TYPE duroxide_worker_queue_depth gauge" in body

    with pytest.raises(TypeError, match="needs a duroxide_celery Runtime or Client"):
        DuroxideCollector(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port must be an int from 0 to 65535"):
        start_metrics_server(rt, 70000)
