"""Client.get_waits ("waiting on" as data, issue 15 part 1) for every kind of wait, on an embedded runtime over
the suite's store (SQLite, or PostgreSQL with DUROXIDE_TEST_DB=postgres): pending activities (queued for a tag no
worker serves, running on a worker, on a session), timers, awaited events and queues, running children, and an
orchestration backed off because no worker has its handler. Also InstanceInfo.waits and the CLI's `status`.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner

from duroxide_celery import InstanceNotFound, Waits
from duroxide_celery.cli import main

from .helpers import WAIT_MS, wait_for_kind, wait_until


def test_every_kind_of_wait_is_listed_then_cleared(runtime_factory, client, store):
    release = threading.Event()

    def slow(ctx, x):
        release.wait(WAIT_MS / 1000)
        return x

    def child(ctx, _):
        return (yield ctx.wait_for_event("child-go"))

    def parent(ctx, _):
        results = yield ctx.all(
            [
                ctx.schedule_activity("Gpu", 1).with_tag("gpu"),  # no worker serves this tag: stays queued
                ctx.schedule_activity("Slow", 2),
                ctx.schedule_activity_on_session("Slow", 3, "sess-1"),
                ctx.schedule_timer(3_600_000),
                ctx.wait_for_event("approve"),
                ctx.dequeue_event("jobs"),
                ctx.schedule_sub_orchestration_with_id("Child", "w-parent-child", None),
            ]
        )
        return results

    runtime_factory({"Parent": parent, "Child": child}, {"Slow": slow, "Gpu": lambda ctx, x: x})
    before = int(time.time() * 1000)
    client.start_orchestration("w-parent", "Parent", None)
    wait_for_kind(client, "w-parent-child", "ExternalSubscribed")

    def both_running() -> Waits | None:
        waits = client.get_waits("w-parent")
        return waits if sum(a.state == "running" for a in waits.activities) == 2 else None

    waits = wait_until(both_running, what="both Slow activities claimed")
    assert (waits.instance_id, waits.status, waits.execution_id) == ("w-parent", "Running", 1)
    by_input = {(a.name, a.tag, a.session_id): a for a in waits.activities}
    assert set(by_input) == {("Gpu", "gpu", None), ("Slow", None, None), ("Slow", None, "sess-1")}
    gpu = by_input[("Gpu", "gpu", None)]
    assert (gpu.state, gpu.claimed_by, gpu.attempt) == ("queued", None, 0)
    for key in (("Slow", None, None), ("Slow", None, "sess-1")):
        slow_wait = by_input[key]
        assert slow_wait.attempt == 1 and slow_wait.claimed_by and slow_wait.claimed_until > before
        assert slow_wait.scheduled_at >= before
    assert by_input[("Slow", None, "sess-1")].session_owner  # the worker node holding the session
    assert by_input[("Slow", None, None)].session_owner is None
    (timer,) = waits.timers
    assert timer.fire_at - timer.created_at == 3_600_000 and timer.created_at >= before
    assert [(e.name, e.since >= before) for e in waits.events] == [("approve", True)]
    assert [q.name for q in waits.queues] == ["jobs"]
    (kid,) = waits.children
    assert (kid.instance_id, kid.name, kid.status) == ("w-parent-child", "Child", "Running")
    assert waits.waiting_reason is None and waits.retry_at is None and waits.is_waiting

    info = client.get_instance_info("w-parent")
    assert info is not None and info.waits is not None and [e.name for e in info.waits.events] == ["approve"]
    assert client.get_instance_info("w-parent", include_waits=False).waits is None

    # The CLI's status shows the same, as text and as JSON.
    url = store.location if store.kind == "postgres" else f"sqlite:///{store.location}"
    args = ["--db", url] if store.kind == "sqlite" else ["--db", _pg_url(), "--schema", store.location]
    text = CliRunner().invoke(main, [*args, "status", "w-parent"])
    assert text.exit_code == 0, text.output
    assert "waiting on" in text.output and "event 'approve'" in text.output and "queue 'jobs'" in text.output
    assert "activity Gpu" in text.output and "tag gpu: queued" in text.output and "child w-parent-child" in text.output
    assert "timer #" in text.output
    doc = json.loads(CliRunner().invoke(main, [*args, "status", "w-parent", "--json"]).output)
    assert [e["name"] for e in doc["waits"]["events"]] == ["approve"]
    assert {a["state"] for a in doc["waits"]["activities"]} == {"queued", "running"}

    # Each arrival clears its wait.
    client.raise_event("w-parent", "approve", "yes")
    client.enqueue_event("w-parent", "jobs", {"n": 1})
    client.raise_event("w-parent-child", "child-go", "kid")
    release.set()

    def settled() -> Waits | None:
        w = client.get_waits("w-parent")
        done = not (w.events or w.queues or w.children) and [a.name for a in w.activities] == ["Gpu"]
        return w if done and not w.inbox_pending else None

    waits = wait_until(settled, what="the event, the message, the child and both Slow activities to land")
    assert len(waits.timers) == 1 and waits.activities[0].state == "queued"

    client.cancel_instance("w-parent", "done testing")
    assert client.wait_for_orchestration("w-parent", WAIT_MS).status == "Failed"
    finished = client.get_waits("w-parent")
    assert finished.status == "Failed" and not finished.is_waiting


def test_backed_off_orchestration_says_its_handler_is_missing(runtime_factory, client):
    runtime_factory({})
    client.start_orchestration("w-late", "NotDeployed", None)
    waits = wait_until(lambda: client.get_waits("w-late").waiting_reason and client.get_waits("w-late"))
    assert waits.waiting_reason.startswith("orchestration 'NotDeployed' (latest version) is not registered")
    assert waits.status == "Running" and waits.is_waiting
    assert client.get_instance_info("w-late").waits.waiting_reason == waits.waiting_reason


def test_unknown_instance_and_bad_ids(client, provider):
    with pytest.raises(InstanceNotFound, match="Instance nobody not found"):
        client.get_waits("nobody")
    with pytest.raises(TypeError, match="instance id must be a str"):
        client.get_waits(42)  # type: ignore[arg-type]


def _pg_url() -> str:
    from .conftest import PG_URL

    return PG_URL
