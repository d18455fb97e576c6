"""Traces and metrics across real processes (issue 15 parts 3 and 4): the test process starts an instance, a
threads-pool orchestrator worker runs its turns, a prefork activity worker its activities, all traced with the
OpenTelemetry SDK and with opentelemetry-instrumentation-celery; the spans of every process are merged and must
form one trace per instance. Each worker also serves its Prometheus metrics (DUROXIDE_METRICS_PORT), scraped over
HTTP."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.instrumentation.celery", reason="opentelemetry-instrumentation-celery (dev)")
pytest.importorskip("prometheus_client", reason="the [prometheus] extra (in dev) is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.test.globals_test import reset_trace_globals  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from .conftest import Cluster  # noqa: E402

APP = "tests.production.traceapp"


@pytest.fixture
def test_process_spans() -> Iterator[InMemorySpanExporter]:
    """This process traces (the Client's start span) and instruments Celery, like a web app would."""
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield exporter
    instrumentor.uninstrument()
    provider.shutdown()
    reset_trace_globals()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hex(value: str | None) -> int | None:
    return int(value, 16) if value else None


@dataclass
class Span:
    """A finished span from any process: `pid` 0 is this test process."""

    name: str
    trace: int
    id: int
    parent: int | None
    attrs: dict[str, Any]
    links: list[int]
    pid: int


def _collect(spans_dir: Path, here: InMemorySpanExporter) -> list[Span]:
    """Every finished span: this process's, and each worker process's JSON lines (the SDK's `to_json`)."""
    out = [
        Span(
            s.name,
            s.context.trace_id,
            s.context.span_id,
            s.parent.span_id if s.parent else None,
            dict(s.attributes),
            [link.context.span_id for link in s.links],
            0,
        )
        for s in here.get_finished_spans()
    ]
    for path in spans_dir.glob("spans-*.jsonl"):
        pid = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            s = json.loads(line)
            trace_id, span_id = _hex(s["context"]["trace_id"]), _hex(s["context"]["span_id"])
            links = [_hex(link["context"]["span_id"]) for link in s.get("links") or []]
            out.append(Span(s["name"], trace_id, span_id, _hex(s["parent_id"]), s["attributes"], links, pid))
    return out


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_one_trace_per_instance_across_workers_and_each_worker_serves_its_metrics(
    redis_cluster: Cluster, test_process_spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    cluster = redis_cluster
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    orch_port, act_port = _free_port(), _free_port()
    traced = {"TRACEAPP_SPANS_DIR": str(spans_dir), "TRACEAPP_CELERY_INSTRUMENT": "1"}
    common = ["--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO"]
    orch = cluster.run(
        "worker-orch",
        ["worker", "-Q", f"{cluster.prefix}.orchestrator", "-P", "threads", "-c", "2", "-n", f"o-{cluster.prefix}@%h"]
        + common,
        APP,
        {**traced, "DUROXIDE_METRICS_PORT": str(orch_port)},
    )
    act = cluster.run(
        "worker-act",
        ["worker", "-Q", f"{cluster.prefix}.activities", "-P", "prefork", "-c", "1", "-n", f"a-{cluster.prefix}@%h"]
        + common,
        APP,
        {**traced, "DUROXIDE_METRICS_PORT": str(act_port)},
    )
    orch.wait_for_log(" ready.")
    act.wait_for_log(" ready.")

    cluster.client.start_orchestration("order-1", "Traced", "ada")
    cluster.wait_all_terminal(["order-1"])
    assert cluster.client.get_status("order-1").output == ["hello ada", "hello ada"]
    child_id = cluster.client.get_instance_tree("order-1").all_ids[1]

    def complete() -> list[Span] | None:
        """All spans, once the parent's last turn span is written, and every parent and link target too (a
        Celery task span ends just after the turn span inside it)."""
        spans = _collect(spans_dir, test_process_spans)
        ids = {s.id for s in spans}
        status = "duroxide.turn.status"
        ended = any(s.name == "duroxide.turn Traced" and s.attrs.get(status) == "Completed" for s in spans)
        referenced = {s.parent for s in spans if s.parent is not None} | {i for s in spans for i in s.links}
        return spans if ended and referenced <= ids else None

    spans = cluster.wait_for(complete, "every span of order-1, with no orphan parent or dangling link")
    by_id = {s.id: s for s in spans}

    def ours(prefix: str, instance_id: str) -> list[Span]:
        return [s for s in spans if s.name.startswith(prefix) and s.attrs.get("duroxide.instance_id") == instance_id]

    (start,) = ours("duroxide.start Traced", "order-1")
    assert start.pid == 0 and start.parent is None
    trace_id = start.trace
    # One trace: ours and Celery's spans of this run all belong to it.
    assert {s.trace for s in spans} == {trace_id}, sorted({(s.name, s.trace) for s in spans})

    turns = ours("duroxide.turn Traced", "order-1")
    greets = ours("duroxide.activity Greet", "order-1")
    child_turns = ours("duroxide.turn Child", child_id)
    child_greets = ours("duroxide.activity Greet", child_id)
    assert len(turns) >= 3 and len(greets) == 1 and child_turns and len(child_greets) == 1
    assert {s.pid for s in turns + child_turns} == {orch.pid}  # threads pool: the worker process itself
    act_pids = {s.pid for s in greets + child_greets}
    assert len(act_pids) == 1 and act_pids.isdisjoint({orch.pid, act.pid, 0})  # a prefork child of the worker
    for turn in turns:
        assert turn.parent == start.id
    for greet in greets:
        assert greet.parent == start.id and greet.attrs["duroxide.activity.name"] == "Greet"
    creator = {s.parent for s in child_turns + child_greets}
    assert len(creator) == 1 and by_id[creator.pop()] in turns  # the child hangs under the parent turn that made it

    # Celery's own task spans (instrumented in every process) are linked from ours, never parents of ours; the
    # messages our spans publish are Celery producer spans under ours.
    for span in turns + child_turns + greets + child_greets:
        kind = "duroxide.turn" if span.name.startswith("duroxide.turn") else "duroxide.activity"
        assert [by_id[link].name for link in span.links] == [f"run/{kind}"]
    published = [s for s in spans if s.name == "apply_async/duroxide.activity"]
    assert published and all(by_id[s.parent].name.startswith("duroxide.turn") for s in published)
    assert len({s.id for s in spans}) == len(spans)  # no span recorded twice

    # Metrics: each worker process serves its own counters; the store's gauges come with them.
    orch_metrics = _scrape(orch_port)
    completions = "duroxide_orchestration_completions_total"
    for name in ("Traced", "Child"):
        key = (completions, (("orchestration_name", name), ("status", "success"), ("version", "1.0.0")))
        assert orch_metrics[key] == 1
    assert orch_metrics[("duroxide_orchestrator_queue_depth", ())] == 0
    act_metrics = _scrape(act_port)  # the prefork child 0 of the activity worker
    greet_key = ("activity_name", "Greet"), ("outcome", "success"), ("retry_attempt", "0")
    assert act_metrics[("duroxide_activity_executions_total", greet_key)] == 2
    assert not any(name == completions for name, _labels in act_metrics)
