"""Unserved tags (issue 5 item 2): an activity with a ttl (its own `ttl_ms`, or the runtime's
`default_activity_ttl_ms`) that no worker claims in time fails with a catchable "not picked up" error, instead of
waiting forever; one that is claimed in time is unaffected."""

from __future__ import annotations

import time

import pytest

from duroxide_celery import RuntimeOptions, TagFilter

from .helpers import WAIT_MS


def gpu_or_cpu(ctx, _):
    try:
        return (yield ctx.schedule_activity("Render", "scene", ttl_ms=300).with_tag("gpu"))
    except Exception as exc:  # noqa: BLE001 - the orchestration's fallback path
        ctx.set_custom_status(str(exc))
        return (yield ctx.schedule_activity("Render", "scene-on-cpu"))


def test_unclaimed_activity_fails_after_its_ttl_and_the_fallback_runs(runtime_factory, client):
    runtime_factory({"GpuOrCpu": gpu_or_cpu}, {"Render": lambda ctx, x: f"{x}:{ctx.tag()}"})
    client.start_orchestration("ttl-1", "GpuOrCpu", None)
    result = client.wait_for_orchestration("ttl-1", WAIT_MS)
    assert result.output == "scene-on-cpu:None"
    assert "activity 'Render' was not picked up by any worker within its ttl of 300 ms" in result.custom_status
    assert "no running worker serves tag 'gpu'" in result.custom_status
    events = client.read_execution_history("ttl-1", 1)
    failed = [e for e in events if e.kind == "ActivityFailed"]
    assert len(failed) == 1 and "not picked up" in failed[0].data
    scheduled = [e for e in events if e.kind == "ActivityScheduled"]
    assert '"ttl_ms": 300' in scheduled[0].data


def test_runtime_default_ttl_applies_to_activities_without_their_own(runtime_factory, client):
    def unserved(ctx, _):
        try:
            return (yield ctx.schedule_activity("Render", "x").with_tag("tpu"))
        except Exception as exc:  # noqa: BLE001
            return f"fallback: {exc}"

    runtime_factory(
        {"Unserved": unserved}, {"Render": lambda ctx, x: x}, options=RuntimeOptions(default_activity_ttl_ms=200)
    )
    client.start_orchestration("ttl-default", "Unserved", None)
    output = client.wait_for_orchestration("ttl-default", WAIT_MS).output
    assert output.startswith("fallback: ")
    assert "within its ttl of 200 ms (no running worker serves tag 'tpu')" in output


def test_claimed_activity_outlives_its_ttl(runtime_factory, client):
    def slow_but_served(ctx, _):
        return (yield ctx.schedule_activity("Slow", "done").with_tag("gpu").with_ttl(500))

    def slow(ctx, x):
        # Running past the ttl is fine: the ttl bounds the wait for a worker, not the run.
        time.sleep(0.8)
        return x

    runtime_factory({"Served": slow_but_served})
    gpu_only = RuntimeOptions(worker_tag_filter=TagFilter.tags(["gpu"]), orchestration_concurrency=0)
    runtime_factory({}, {"Slow": slow}, options=gpu_only)
    client.start_orchestration("ttl-served", "Served", None)
    result = client.wait_for_orchestration("ttl-served", WAIT_MS)
    assert result.status == "Completed" and result.output == "done"
    assert not [e for e in client.read_execution_history("ttl-served", 1) if e.kind == "ActivityFailed"]


@pytest.mark.parametrize("bad", [0, -5, 1.5, "100", True])
def test_bad_ttl_fails_the_orchestration_clearly(runtime_factory, client, bad):
    def bad_ttl(ctx, _):
        yield ctx.schedule_activity("Render", "x", ttl_ms=bad)

    runtime_factory({"BadTtl": bad_ttl}, {"Render": lambda ctx, x: x})
    instance = f"ttl-bad-{bad!r}"
    client.start_orchestration(instance, "BadTtl", None)
    result = client.wait_for_orchestration(instance, WAIT_MS)
    assert result.status == "Failed"
    assert "activity ttl_ms must be a positive int (milliseconds)" in result.error


def test_bad_default_ttl_is_refused_at_construction():
    with pytest.raises(TypeError, match="default_activity_ttl_ms must be an int"):
        RuntimeOptions(default_activity_ttl_ms="soon")
    with pytest.raises(ValueError, match="default_activity_ttl_ms must be >= 0"):
        RuntimeOptions(default_activity_ttl_ms=-1)
