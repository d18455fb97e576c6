"""Activity tags on the embedded runtime: each tag is its own queue; a runtime consumes what its filter names
(semantics.md 2.18). Several Runtime objects in one process act as separate workers (issue 5 item 5)."""

from __future__ import annotations

import pytest

from duroxide_celery import RuntimeOptions, TagFilter

from .helpers import WAIT_MS


def pipeline(ctx, _):
    gpu = yield ctx.schedule_activity("Where", "gpu-job").with_tag("gpu")
    plain = yield ctx.schedule_activity("Where", "plain-job")
    return [gpu, plain]


def test_tagged_work_goes_to_the_worker_whose_filter_names_the_tag(runtime_factory, client):
    runtime_factory({"Pipeline": pipeline}, {"Where": lambda ctx, x: f"{x}@default:{ctx.tag()}"})
    runtime_factory(
        {},
        {"Where": lambda ctx, x: f"{x}@gpu-worker:{ctx.tag()}"},
        options=RuntimeOptions(worker_tag_filter=TagFilter.tags(["gpu"]), orchestration_concurrency=0),
    )
    client.start_orchestration("tags-1", "Pipeline", None)
    result = client.wait_for_orchestration("tags-1", WAIT_MS)
    assert result.output == ["gpu-job@gpu-worker:gpu", "plain-job@default:None"]
    scheduled = [e for e in client.read_execution_history("tags-1", 1) if e.kind == "ActivityScheduled"]
    assert '"tag": "gpu"' in scheduled[0].data


def test_any_filter_serves_a_tag_first_used_after_it_started(runtime_factory, client):
    runtime_factory(
        {"Pipeline": pipeline},
        {"Where": lambda ctx, x: f"{x}@any"},
        options=RuntimeOptions(worker_tag_filter=TagFilter.ANY),
    )
    client.start_orchestration("tags-any", "Pipeline", None)
    assert client.wait_for_orchestration("tags-any", WAIT_MS).output == ["gpu-job@any", "plain-job@any"]


def test_unserved_tag_waits_and_a_race_with_a_timer_falls_back(runtime_factory, client):
    def with_fallback(ctx, _):
        first = yield ctx.race(ctx.schedule_activity("Where", "x").with_tag("gpu"), ctx.schedule_timer(200))
        return "gpu" if first["index"] == 0 else "fallback"

    runtime_factory({"Fallback": with_fallback}, {"Where": lambda ctx, x: x})
    client.start_orchestration("tags-fallback", "Fallback", None)
    assert client.wait_for_orchestration("tags-fallback", WAIT_MS).output == "fallback"


def test_bad_filters_are_clear_errors_at_construction(runtime_factory):
    with pytest.raises(ValueError, match="at most 5 tags, got 6"):
        TagFilter.tags(["a", "b", "c", "d", "e", "f"])
    with pytest.raises(ValueError, match="invalid worker_tag_filter"):
        runtime_factory({}, options=RuntimeOptions(worker_tag_filter="gpu"), start=False)
    with pytest.raises(ValueError, match="may contain only"):
        TagFilter.tags(["bad tag"])
