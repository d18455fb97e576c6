"""duroxide_celery.testing.WorkflowHarness: orchestrations in process, activities inline, timers on a virtual clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from duroxide_celery import Runtime, SqliteProvider
from duroxide_celery.testing import WorkflowHarness

THREE_DAYS_MS = 3 * 24 * 3600 * 1000


def _harness() -> WorkflowHarness:
    h = WorkflowHarness(start_ms=1_000_000)
    h.register_activity("Double", lambda ctx, x: x * 2)

    def refuse(ctx: Any, amount: int) -> Any:
        raise ValueError(f"declined {amount}")

    h.register_activity("Charge", refuse)
    h.register_activity("Refund", lambda ctx, amount: f"refunded {amount}")
    return h


def test_a_workflow_that_sleeps_for_days_finishes_at_once_on_the_virtual_clock() -> None:
    h = _harness()

    def slow(ctx: Any, x: int) -> Any:
        doubled = yield ctx.schedule_activity("Double", x)
        yield ctx.schedule_timer(THREE_DAYS_MS)
        return doubled + 1

    h.register_orchestration("Slow", slow)
    result = h.run("Slow", 20, instance_id="slow-1")
    assert (result.status, result.output) == ("Completed", 41)
    assert h.kinds("slow-1") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "TimerCreated",
        "TimerFired",
        "OrchestrationCompleted",
    ]
    assert h.now_ms == 1_000_000 + THREE_DAYS_MS


def test_activities_run_inline_in_the_callers_thread() -> None:
    h = WorkflowHarness()
    seen: list[str] = []
    h.register_activity("Where", lambda ctx, _: seen.append(threading.current_thread().name) or ctx.instance_id)

    def flow(ctx: Any, _: Any) -> Any:
        return (yield ctx.schedule_activity("Where", None))

    h.register_orchestration("Flow", flow)
    assert h.run("Flow", instance_id="w-1").output == "w-1"
    assert seen == [threading.current_thread().name]


def test_events_timeouts_and_compensation() -> None:
    h = _harness()

    def approval(ctx: Any, amount: int) -> Any:
        winner = yield ctx.race(ctx.wait_for_event("Approved"), ctx.schedule_timer(60_000))
        if winner["index"] == 1:
            return "timed out"
        try:
            yield ctx.schedule_activity("Charge", amount)
        except Exception as exc:  # noqa: BLE001 - compensation
            return {"refund": (yield ctx.schedule_activity("Refund", amount)), "why": str(exc)}
        return "charged"

    h.register_orchestration("Approval", approval)
    h.start_orchestration("a-1", "Approval", 5)
    assert h.get_status("a-1").status == "Running"  # waits for the event or the timer
    h.raise_event("a-1", "Approved", True)
    done = h.get_status("a-1")
    assert done.status == "Completed", done.error
    assert done.output == {"refund": "refunded 5", "why": "Activity 'Charge' call failed: ValueError: declined 5"}

    h.start_orchestration("a-2", "Approval", 6)
    assert h.advance(59_999) == 0 and h.get_status("a-2").status == "Running"
    assert h.advance(1) == 1
    assert h.get_status("a-2").output == "timed out"


def test_sub_orchestrations_continue_as_new_and_kv() -> None:
    h = _harness()

    def child(ctx: Any, x: int) -> Any:
        return (yield ctx.schedule_activity("Double", x))

    def counter(ctx: Any, n: int) -> Any:
        ctx.set_kv_value("n", str(n))
        if n < 3:
            yield ctx.continue_as_new(n + 1)
            return None
        return (yield ctx.schedule_sub_orchestration("Child", n))

    h.register_orchestration("Child", child)
    h.register_orchestration("Counter", counter)
    result = h.run("Counter", 0, instance_id="c-1")
    assert (result.status, result.output) == ("Completed", 6)
    assert h.get_kv_value("c-1", "n") == "3"
    assert h.kinds("c-1", 1)[-1] == "OrchestrationContinuedAsNew"


def test_failures_cancellation_and_missing_handlers() -> None:
    h = _harness()

    def doomed(ctx: Any, amount: int) -> Any:
        return (yield ctx.schedule_activity("Charge", amount))

    def waits(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_event("Never"))

    h.register_orchestration("Doomed", doomed)
    h.register_orchestration("Waits", waits)
    failed = h.run("Doomed", 9)
    assert failed.status == "Failed" and "declined 9" in (failed.error or "")

    h.start_orchestration("w-1", "Waits")
    with pytest.raises(RuntimeError, match="waits for an event"):
        h.wait_for_orchestration("w-1")
    h.cancel_instance("w-1", "not needed")
    cancelled = h.get_status("w-1")
    assert cancelled.status == "Failed" and "not needed" in (cancelled.error or "")

    with pytest.raises(LookupError, match="'Nobody'"):
        h.run("Nobody")

    def calls_missing(ctx: Any, _: Any) -> Any:
        return (yield ctx.schedule_activity("Missing", None))

    h.register_orchestration("CallsMissing", calls_missing)
    with pytest.raises(LookupError, match="activity 'Missing' is not registered"):
        h.run("CallsMissing")


def test_a_runtimes_registrations_are_used() -> None:
    runtime = Runtime(SqliteProvider.in_memory())
    runtime.register_activity("Greet", lambda ctx, name: f"Hello, {name}!")

    def hello(ctx: Any, name: str) -> Any:
        return (yield ctx.schedule_activity("Greet", name))

    runtime.register_orchestration("Hello", hello)
    assert WorkflowHarness(runtime).run("Hello", "harness").output == "Hello, harness!"
