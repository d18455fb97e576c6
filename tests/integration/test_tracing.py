"""OpenTelemetry spans in the embedded runtime: one trace per instance, named and attributed as
observability/otel.py says, collected with the SDK's in-memory exporter (the process's real TracerProvider)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra (opentelemetry-sdk, in dev) is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.test.globals_test import reset_trace_globals  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

from duroxide_celery import InstanceAlreadyExists  # noqa: E402
from duroxide_celery.providers.telemetry import trace_context  # noqa: E402

from .helpers import wait_until  # noqa: E402

#: In every input: no span attribute or status may quote it.
SECRET = "s3cret-payload"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A real SDK TracerProvider for this test only (the API allows one per process: the globals are reset)."""
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    reset_trace_globals()


def greet(ctx: Any, name: str) -> str:
    return f"hello {name}"


def refuse(ctx: Any, value: Any) -> None:
    raise ValueError(f"refused {value}")


def child(ctx: Any, name: str) -> Any:
    return (yield ctx.schedule_activity("Greet", name))


def parent(ctx: Any, name: str) -> Any:
    first = yield ctx.schedule_activity("Greet", name)
    second = yield ctx.schedule_sub_orchestration("Child", name)
    return [first, second]


def failing(ctx: Any, value: Any) -> Any:
    return (yield ctx.schedule_activity("Refuse", value))


def _of(exporter: InMemorySpanExporter, prefix: str, instance_id: str | None = None) -> list[ReadableSpan]:
    found = [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]
    return [s for s in found if instance_id is None or s.attributes.get("duroxide.instance_id") == instance_id]


def _turns_ended(exporter: InMemorySpanExporter, name: str, status: str) -> list[ReadableSpan]:
    """The spans of `name`'s turns that ended its instance with `status` (they end just after their commit,
    which a wait for the instance may see first)."""
    return [s for s in _of(exporter, f"duroxide.turn {name}") if s.attributes.get("duroxide.turn.status") == status]


def _assert_no_payload(exporter: InMemorySpanExporter) -> None:
    for s in exporter.get_finished_spans():
        texts = [str(v) for v in s.attributes.values()] + [s.status.description or ""]
        assert not any(SECRET in t for t in texts), (s.name, texts)


def _assert_no_orphans(exporter: InMemorySpanExporter) -> None:
    finished = exporter.get_finished_spans()
    ids = {s.context.span_id for s in finished}
    for s in finished:
        assert s.parent is None or s.parent.span_id in ids, f"{s.name} has a parent that was never recorded"


def test_an_instance_and_its_child_form_one_trace(
    spans: InMemorySpanExporter, runtime_factory: Any, client: Any
) -> None:
    rt = runtime_factory({"Parent": parent, "Child": child}, {"Greet": greet})
    client.start_orchestration("traced-1", "Parent", SECRET)
    assert client.wait_for_orchestration("traced-1").status == "Completed"
    last = wait_until(lambda: _turns_ended(spans, "Parent", "Completed"), what="the parent's last turn span")[0]

    (start,) = _of(spans, "duroxide.start Parent")
    assert start.parent is None  # no span was current at the call: the instance's own root
    assert dict(start.attributes) == {"duroxide.instance_id": "traced-1", "duroxide.orchestration.name": "Parent"}
    trace_id = start.context.trace_id
    ours = [s for s in spans.get_finished_spans() if s.name.startswith("duroxide.")]
    assert {s.context.trace_id for s in ours} == {trace_id}

    turns = _of(spans, "duroxide.turn Parent", "traced-1")
    assert len(turns) >= 2 and last in turns
    for turn in turns:
        assert turn.parent.span_id == start.context.span_id  # every turn directly under the start: a flat trace
        assert turn.attributes["duroxide.execution_id"] == 1
        assert turn.attributes["duroxide.worker_id"] == rt.worker_id
        assert turn.attributes["duroxide.attempt"] >= 1
        assert turn.status.status_code != StatusCode.ERROR

    (greet_parent,) = _of(spans, "duroxide.activity Greet", "traced-1")
    assert greet_parent.parent.span_id == start.context.span_id
    assert greet_parent.attributes["duroxide.activity.name"] == "Greet"
    assert greet_parent.attributes["duroxide.orchestration.name"] == "Parent"
    assert greet_parent.attributes["duroxide.attempt"] == 1

    # The child was created by one of the parent's turns: its spans sit under that turn, in the parent's trace.
    child_id = client.get_instance_tree("traced-1").all_ids[1]
    child_turns = _of(spans, "duroxide.turn Child", child_id)
    assert child_turns and not _of(spans, "duroxide.start Child")
    creator = {s.parent.span_id for s in child_turns}
    assert len(creator) == 1 and creator <= {t.context.span_id for t in turns}
    (greet_child,) = _of(spans, "duroxide.activity Greet", child_id)
    assert greet_child.parent.span_id in creator

    _assert_no_orphans(spans)
    _assert_no_payload(spans)


def test_a_caller_span_is_the_parent_and_failures_are_marked(
    spans: InMemorySpanExporter, runtime_factory: Any, client: Any
) -> None:
    runtime_factory({"Failing": failing}, {"Refuse": refuse})
    with trace.get_tracer("test").start_as_current_span("web request") as request:
        client.start_orchestration("traced-2", "Failing", SECRET)
    assert client.wait_for_orchestration("traced-2").status == "Failed"
    failed = wait_until(lambda: _turns_ended(spans, "Failing", "Failed"), what="the failing turn's span")[0]
    (start,) = _of(spans, "duroxide.start Failing")
    assert start.parent.span_id == request.get_span_context().span_id
    assert failed.context.trace_id == request.get_span_context().trace_id
    assert failed.status.status_code == StatusCode.ERROR
    (attempt,) = _of(spans, "duroxide.activity Refuse", "traced-2")
    assert attempt.status.status_code == StatusCode.ERROR
    assert attempt.attributes["error.type"] == "ValueError"
    _assert_no_orphans(spans)
    _assert_no_payload(spans)


def test_a_bulk_start_gives_each_instance_its_own_start_span(
    spans: InMemorySpanExporter, runtime_factory: Any, client: Any
) -> None:
    runtime_factory({"Child": child, "Failing": failing}, {"Greet": greet, "Refuse": refuse})
    client.start_orchestrations([("bulk-1", "Child", SECRET), ("bulk-2", "Child", SECRET)])
    with trace.get_tracer("test").start_as_current_span("web request") as request:
        client.start_orchestrations([("bulk-3", "Child", SECRET), ("bulk-4", "Child", SECRET)])
    with pytest.raises(InstanceAlreadyExists):
        client.start_orchestrations([("bulk-5", "Child", SECRET), ("bulk-1", "Child", SECRET)], if_exists="fail")
    for i in range(1, 5):
        assert client.wait_for_orchestration(f"bulk-{i}").status == "Completed"
    wait_until(lambda: len(_turns_ended(spans, "Child", "Completed")) == 4, what="the four last turn spans")
    refused = [s for s in _of(spans, "duroxide.start Child") if s.status.status_code == StatusCode.ERROR]
    assert sorted(s.attributes["duroxide.instance_id"] for s in refused) == ["bulk-1", "bulk-5"]
    assert {s.attributes["error.type"] for s in refused} == {"InstanceAlreadyExists"}  # the refused call: all marked
    starts = {s.attributes["duroxide.instance_id"]: s for s in _of(spans, "duroxide.start Child") if s not in refused}
    assert sorted(starts) == ["bulk-1", "bulk-2", "bulk-3", "bulk-4"]
    # Not nested in each other: the roots of two traces, then two siblings under the caller's span.
    assert starts["bulk-1"].parent is None and starts["bulk-2"].parent is None
    assert starts["bulk-1"].context.trace_id != starts["bulk-2"].context.trace_id
    for i in (3, 4):
        assert starts[f"bulk-{i}"].parent.span_id == request.get_span_context().span_id
    for i in range(1, 5):
        for turn in _of(spans, "duroxide.turn Child", f"bulk-{i}"):
            assert turn.parent.span_id == starts[f"bulk-{i}"].context.span_id  # each instance under its own start
    assert client.get_status("bulk-5").status == "NotFound"
    _assert_no_orphans(spans)
    _assert_no_payload(spans)


def test_an_instance_started_untraced_is_rooted_at_its_first_traced_turn(
    runtime_factory: Any, client: Any, provider: Any
) -> None:
    reset_trace_globals()  # the process that starts it does not trace: nothing is stored
    rt = runtime_factory({"Child": child}, {"Greet": greet}, start=False)
    client.start_orchestration("untraced", "Child", "x")
    with provider.store.read() as conn:
        assert trace_context(conn, "untraced") is None
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)  # the workers trace
    try:
        rt.start()
        assert client.wait_for_orchestration("untraced").status == "Completed"
        wait_until(lambda: _turns_ended(exporter, "Child", "Completed"), what="the last turn's span")
        turns = sorted(_of(exporter, "duroxide.turn Child", "untraced"), key=lambda s: s.start_time)
        (greet_span,) = _of(exporter, "duroxide.activity Greet", "untraced")
        root = turns[0]
        assert root.parent is None and len(turns) >= 2
        assert all(s.parent.span_id == root.context.span_id for s in [*turns[1:], greet_span])
        with provider.store.read() as conn:
            assert f"{root.context.trace_id:032x}" in trace_context(conn, "untraced")
    finally:
        tracer_provider.shutdown()
        reset_trace_globals()


WITHOUT_OTEL = """
import sys
sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed: importing it raises ImportError
from duroxide_celery import Client, Runtime, SqliteProvider
from duroxide_celery.observability import tracing_enabled
from duroxide_celery.providers.telemetry import trace_context

provider = SqliteProvider.in_memory()
runtime = Runtime(provider)
runtime.register_activity("Greet", lambda ctx, name: "hello " + name)
runtime.register_orchestration("G", lambda ctx, name: (yield ctx.schedule_activity("Greet", name)))
runtime.start()
client = Client(provider)
client.start_orchestration("g", "G", "ada")
result = client.wait_for_orchestration("g", 15000)
runtime.shutdown(2000)
with provider.store.read() as conn:
    print(result.status, result.output, tracing_enabled(), trace_context(conn, "g"))
"""


def test_without_opentelemetry_installed_everything_runs_untraced() -> None:
    out = subprocess.run([sys.executable, "-c", WITHOUT_OTEL], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "Completed hello ada False None"
