"""A Celery app for the observability tests (test_observability.py): a workflow with an activity and a
sub-orchestration, in worker processes that trace with the OpenTelemetry SDK.

With TRACEAPP_SPANS_DIR set, each process (prefork children included) exports its finished spans, one JSON object
per line, to `<dir>/spans-<pid>.jsonl`; the test merges the files. With TRACEAPP_CELERY_INSTRUMENT=1 Celery is
instrumented too (opentelemetry-instrumentation-celery). Settings come from the variables app_env.py reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.production.app_env import production_runtime


class JsonLinesExporter(SpanExporter):
    """Appends each span's JSON (the SDK's own `to_json`) to this process's file, as it ends."""

    def __init__(self, directory: str):
        self.directory = directory

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        path = os.path.join(self.directory, f"spans-{os.getpid()}.jsonl")
        with open(path, "a", encoding="utf-8") as out:
            for span in spans:
                out.write(span.to_json(indent=None) + "\n")
        return SpanExportResult.SUCCESS


if os.environ.get("TRACEAPP_SPANS_DIR"):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["TRACEAPP_SPANS_DIR"])))
    trace.set_tracer_provider(provider)
    if os.environ.get("TRACEAPP_CELERY_INSTRUMENT") == "1":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()

app, runtime = production_runtime("traceapp")


@runtime.register_activity("Greet")
def greet(ctx: Any, name: str) -> str:
    return f"hello {name}"


@runtime.register_orchestration("Child")
def child(ctx: Any, name: str) -> Any:
    return (yield ctx.schedule_activity("Greet", name))


@runtime.register_orchestration("Traced")
def traced(ctx: Any, name: str) -> Any:
    first = yield ctx.schedule_activity("Greet", name)
    second = yield ctx.schedule_sub_orchestration("Child", name)
    return [first, second]
