"""Failures are visible (issue 10 item 5) on the embedded runtime: a failed activity and the turn that fails its
orchestration end their Celery task as FAILURE (ActivityFailed / OrchestrationFailed, expected errors of the
task) after the store recorded them, without running anything twice, and log a WARNING with the ids; an instance
that waits for a handler no worker has says why (`waiting_reason`), until a turn runs.

The real-process view (task events, Flower) is tests/production/test_failure_visibility.py."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from celery import signals

from duroxide_celery import RuntimeOptions
from duroxide_celery.errors import ActivityFailed, OrchestrationFailed
from duroxide_celery.providers.migrate import _config, current_revision, head_revision
from duroxide_celery.tasks.failures import clip
from duroxide_celery.tasks.queues import ACTIVITY_TASK, TURN_TASK

from .helpers import WAIT_MS, assert_well_formed, wait_for_kind, wait_until


class TaskOutcomes:
    """Celery's task_failure / task_success signals of the engine's tasks in this process (embedded workers run
    them in pool threads of this process)."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, BaseException, tuple[Any, ...]]] = []
        self.successes: list[str] = []
        self._lock = threading.Lock()

    def on_failure(self, sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any):
        with self._lock:
            self.failures.append((sender.name, exception, tuple(args or ())))

    def on_success(self, sender: Any = None, **_: Any) -> None:
        with self._lock:
            self.successes.append(sender.name)

    def failed(self, task_name: str, instance_id: str) -> list[BaseException]:
        with self._lock:
            return [exc for name, exc, args in self.failures if name == task_name and args and args[0] == instance_id]


@pytest.fixture
def outcomes() -> Iterator[TaskOutcomes]:
    seen = TaskOutcomes()
    signals.task_failure.connect(seen.on_failure, weak=False)
    signals.task_success.connect(seen.on_success, weak=False)
    yield seen
    signals.task_failure.disconnect(seen.on_failure)
    signals.task_success.disconnect(seen.on_success)


def _counting(counter: dict[str, int], name: str, fn: Any) -> Any:
    def run(ctx: Any, x: Any) -> Any:
        counter[name] = counter.get(name, 0) + 1
        return fn(ctx, x)

    return run


def _raise(message: str) -> Any:
    def fail(ctx: Any, x: Any) -> Any:
        raise ValueError(message)

    return fail


def test_engine_tasks_ack_their_failures_and_expect_them(runtime_factory):
    rt = runtime_factory(start=False)
    turn, activity = rt.app.tasks[TURN_TASK], rt.app.tasks[ACTIVITY_TASK]
    # A raised turn is acked, not requeued: the failure is committed and must not run again.
    assert turn.acks_late is True and turn.acks_on_failure is True
    assert activity.acks_late is False  # acked when it starts: a raise cannot redeliver it
    assert OrchestrationFailed in turn.throws and ActivityFailed in activity.throws


def test_failed_activity_and_failed_orchestration_end_their_tasks_as_failure(runtime_factory, client, outcomes, caplog):
    runs: dict[str, int] = {}

    def catches(ctx, _):
        try:
            yield ctx.schedule_activity("Charge", "card-4242")
        except Exception as exc:  # noqa: BLE001 - the activity's failure, handled
            return f"compensated: {exc}"

    def lets_it_fail(ctx, _):
        return (yield ctx.schedule_activity("Charge", "card-4242"))

    caplog.set_level(logging.WARNING, logger="duroxide_celery.worker")
    runtime_factory(
        {"Catches": catches, "LetsItFail": lets_it_fail},
        {"Charge": _counting(runs, "Charge", _raise("card declined"))},
    )
    client.start_orchestration("fv-caught", "Catches")
    client.start_orchestration("fv-failed", "LetsItFail")
    caught = client.wait_for_orchestration("fv-caught", WAIT_MS)
    failed = client.wait_for_orchestration("fv-failed", WAIT_MS)
    assert caught.status == "Completed"
    assert caught.output == "compensated: Activity 'Charge' call failed: ValueError: card declined"
    assert failed.status == "Failed"
    assert failed.error.startswith("Activity 'Charge' call failed: ValueError: card declined")
    assert runs == {"Charge": 2}  # once per instance: a raise after recording redelivers nothing

    for instance_id in ("fv-caught", "fv-failed"):
        (activity_failure,) = wait_until(
            lambda i=instance_id: outcomes.failed(ACTIVITY_TASK, i), what=f"the activity task of {instance_id}"
        )
        assert isinstance(activity_failure, ActivityFailed)
        assert str(activity_failure).startswith("ValueError: card declined (activity 'Charge' of instance ")
        assert "card-4242" not in str(activity_failure)  # never the activity's input
        assert_well_formed(client, instance_id)
    (turn_failure,) = wait_until(lambda: outcomes.failed(TURN_TASK, "fv-failed"), what="the failed turn")
    assert isinstance(turn_failure, OrchestrationFailed)
    assert str(turn_failure) == (
        "orchestration 'LetsItFail' of instance fv-failed (execution 1) failed [OrchestrationFailed]: "
        "Activity 'Charge' call failed: ValueError: card declined"
    )
    assert not outcomes.failed(TURN_TASK, "fv-caught")  # a completed orchestration's turns succeed

    warnings = [r for r in caplog.records if r.name == "duroxide_celery.worker" and r.levelno == logging.WARNING]
    activity_warnings = [r for r in warnings if getattr(r, "activity_name", None) == "Charge"]
    assert sorted(r.instance_id for r in activity_warnings) == ["fv-caught", "fv-failed"]
    assert all(r.execution_id == 1 and "card declined" in r.getMessage() for r in activity_warnings)
    (orch_warning,) = [r for r in warnings if getattr(r, "error_type", None) == "OrchestrationFailed"]
    assert orch_warning.instance_id == "fv-failed" and orch_warning.orchestration_name == "LetsItFail"
    assert "fv-failed" in orch_warning.getMessage() and "card-4242" not in orch_warning.getMessage()


def test_failure_of_a_child_fails_its_turn_while_the_parent_that_catches_it_succeeds(runtime_factory, client, outcomes):
    def child(ctx, _):
        yield ctx.schedule_timer(1)
        raise RuntimeError("child broke")

    def parent(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration_with_id("Child", "fv-child", None)
        except Exception:  # noqa: BLE001
            return "handled"

    runtime_factory({"Parent": parent, "Child": child})
    client.start_orchestration("fv-parent", "Parent")
    assert client.wait_for_orchestration("fv-parent", WAIT_MS).output == "handled"
    assert client.get_status("fv-child").status == "Failed"
    (failure,) = wait_until(lambda: outcomes.failed(TURN_TASK, "fv-child"), what="the child's failed turn")
    assert "[OrchestrationFailed]: RuntimeError: child broke" in str(failure)
    assert not outcomes.failed(TURN_TASK, "fv-parent")


def test_a_cancelled_orchestration_is_not_a_task_failure(runtime_factory, client, outcomes):
    def waits(ctx, _):
        return (yield ctx.wait_for_event("never"))

    runtime_factory({"Waits": waits})
    client.start_orchestration("fv-cancel", "Waits")
    wait_for_kind(client, "fv-cancel", "ExternalSubscribed")
    client.cancel_instance("fv-cancel", "operator said so")
    result = client.wait_for_orchestration("fv-cancel", WAIT_MS)
    assert result.status == "Failed" and "canceled" in result.error
    wait_until(lambda: TURN_TASK in outcomes.successes, what="the cancelling turn to end")
    assert not outcomes.failed(TURN_TASK, "fv-cancel")


def test_poisoned_activity_is_a_failed_task_too(runtime_factory, client, outcomes, provider):
    """An activity whose work item ran out of attempts (as after worker crashes) fails once, as FAILURE."""
    from duroxide_celery.providers.schema import work_items

    def orch(ctx, _):
        return (yield ctx.schedule_activity("Never", None))

    options = RuntimeOptions(max_attempts=2)
    no_activities = runtime_factory({"O": orch}, options=RuntimeOptions(max_attempts=2, worker_concurrency=0))
    client.start_orchestration("fv-poison", "O")
    wait_for_kind(client, "fv-poison", "ActivityScheduled")
    with provider.store.write() as conn:  # two workers died running it
        conn.execute(sa.update(work_items).where(work_items.c.instance_id == "fv-poison").values(attempt_count=2))
    no_activities.shutdown(timeout_ms=2000)
    rt = runtime_factory({"O": orch}, {"Never": lambda ctx, _: "ran"}, options=options)
    result = client.wait_for_orchestration("fv-poison", WAIT_MS)
    assert result.status == "Failed" and "poison: activity Never#2 exceeded" in result.error, result.error
    (failure,) = wait_until(lambda: outcomes.failed(ACTIVITY_TASK, "fv-poison"), what="the poisoned activity task")
    assert str(failure).startswith("Poison: poison: activity Never#2 exceeded 3 attempts")
    # Counted, once, as duroxide counts a poisoned activity.
    assert rt.metrics_snapshot().activity_poison == 1
    assert rt.metrics.labeled()["duroxide_activity_executions_total"] == {("Never", "poison", "2"): 1}


def test_an_orchestration_that_never_found_its_handler_fails_its_last_turn(runtime_factory, client, outcomes):
    """The unregistered-handler backoff ends in poison: that turn fails the orchestration, so its task fails."""
    runtime_factory({}, options=RuntimeOptions(max_attempts=1))
    client.start_orchestration("fv-never", "NeverRegistered", None)
    result = client.wait_for_orchestration("fv-never", WAIT_MS)
    assert result.status == "Failed" and "'NeverRegistered' (version latest) is not registered" in result.error
    (failure,) = wait_until(lambda: outcomes.failed(TURN_TASK, "fv-never"), what="the poisoning turn's failure")
    assert str(failure).startswith("orchestration 'NeverRegistered' of instance fv-never (execution 1) failed [Poison]")
    assert result.waiting_reason is None


# -- waiting_reason --------------------------------------------------------------------------------------------
def test_unregistered_orchestration_says_why_it_waits_until_a_turn_runs(runtime_factory, client, caplog):
    caplog.set_level(logging.WARNING, logger="duroxide_celery.worker")
    rt = runtime_factory({})  # started before it knows the orchestration: a rolling deploy's old worker
    client.start_orchestration("late-1", "Late", 21)
    reason = wait_until(lambda: client.get_status("late-1").waiting_reason, what="the backoff's reason")
    assert reason.startswith(
        "orchestration 'Late' (latest version) is not registered on any worker that took this turn; retrying at "
    ), reason
    info = client.get_instance_info("late-1")
    assert info is not None and info.status == "Running" and info.waiting_reason == reason
    backoffs = [r for r in caplog.records if r.name == "duroxide_celery.worker" and "late-1" in r.getMessage()]
    assert backoffs and backoffs[0].levelno == logging.WARNING
    assert "'Late'" in backoffs[0].getMessage() and "retrying at" in backoffs[0].getMessage()

    def late(ctx, x):
        got = yield ctx.wait_for_event("go")
        return x * got

    rt.register_orchestration("Late", late)  # the handler arrives; the backoff's retry finds it
    wait_for_kind(client, "late-1", "ExternalSubscribed")
    running = client.get_status("late-1")
    assert (running.status, running.waiting_reason) == ("Running", None)  # the turn's own UPDATE cleared it
    assert client.get_instance_info("late-1").waiting_reason is None
    client.raise_event("late-1", "go", 2)
    done = client.wait_for_orchestration("late-1", WAIT_MS)
    assert (done.status, done.output, done.waiting_reason) == ("Completed", 42, None)


def test_unregistered_version_is_named_in_the_reason(runtime_factory, client):
    rt = runtime_factory({})
    rt.register_orchestration_versioned("Versioned", "1.0.0", lambda ctx, x: (yield ctx.schedule_timer(1)) or x)
    client.start_orchestration_versioned("late-v2", "Versioned", 7, "2.0.0")
    reason = wait_until(lambda: client.get_status("late-v2").waiting_reason, what="the backoff's reason")
    assert reason.startswith("orchestration 'Versioned' 2.0.0 is not registered on any worker"), reason
    rt.register_orchestration_versioned("Versioned", "2.0.0", lambda ctx, x: (yield ctx.schedule_timer(1)) or x * 2)
    done = client.wait_for_orchestration("late-v2", WAIT_MS)
    assert (done.status, done.output, done.waiting_reason) == ("Completed", 14, None)


def test_unregistered_activity_says_why_the_instance_waits(runtime_factory, client, caplog):
    caplog.set_level(logging.WARNING, logger="duroxide_celery.worker")

    def orch(ctx, x):
        return (yield ctx.schedule_activity("Later", x))

    rt = runtime_factory({"UsesLater": orch})
    client.start_orchestration("late-act", "UsesLater", 5)
    reason = wait_until(lambda: client.get_status("late-act").waiting_reason, what="the activity's backoff reason")
    assert reason.startswith("activity 'Later' is not registered on any worker that took it; retrying at "), reason
    assert client.get_instance_info("late-act").waiting_reason == reason
    warned = [r for r in caplog.records if getattr(r, "activity_name", None) == "Later"]
    assert warned and warned[0].instance_id == "late-act" and warned[0].levelno == logging.WARNING
    rt.register_activity("Later", lambda ctx, x: x + 1)
    done = client.wait_for_orchestration("late-act", WAIT_MS)
    assert (done.status, done.output, done.waiting_reason) == ("Completed", 6, None)
    assert client.get_instance_info("late-act").waiting_reason is None


def test_a_finished_instance_waits_for_nothing(runtime_factory, client):
    runtime_factory({"Quick": lambda ctx, x: (yield ctx.schedule_timer(1)) or x})
    client.start_orchestration("quick-1", "Quick", 1)
    done = client.wait_for_orchestration("quick-1", WAIT_MS)
    assert done.waiting_reason is None and client.get_instance_info("quick-1").waiting_reason is None
    assert client.get_status("nobody").waiting_reason is None


def test_clip_keeps_the_first_line_and_bounds_it():
    assert clip("ValueError: boom\nTraceback (most recent call last): ...") == "ValueError: boom"
    long = clip("x" * 500)
    assert len(long) == 200 and long.endswith("...")
    assert clip(None) == ""


# -- migration 0003 --------------------------------------------------------------------------------------------
def test_upgrade_from_0002_adds_an_empty_waiting_reason(store):
    """A store created by the previous release (revision 0002) with an instance in it upgrades on first use; the
    instance reads back with no waiting reason."""
    from duroxide_celery import Client

    provider = store.open()
    schema = store.location if store.kind == "postgres" else None
    engine = provider._create_engine()
    with engine.connect() as conn, conn.begin():
        if schema:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        command.upgrade(_config(conn, schema), "0002")
    with engine.begin() as conn:
        assert current_revision(conn) == "0002"
        columns = {c["name"] for c in sa.inspect(conn).get_columns("dx_instances", schema=schema)}
        assert "waiting_reason" not in columns
        conn.execute(
            sa.text(
                "INSERT INTO dx_instances (instance_id, orchestration_name, status, current_execution_id, "
                "custom_status_version, created_at, updated_at, locked_until, attempt_count, next_attempt_at) "
                "VALUES ('old-1', 'Old', 'Running', 1, 0, 1, 1, 0, 0, 0)"
            )
        )
    engine.dispose()
    client = Client(provider)  # first use migrates
    status = client.get_status("old-1")
    assert (status.status, status.waiting_reason) == ("Running", None)
    assert client.get_instance_info("old-1").waiting_reason is None
    with provider.store.engine.connect() as conn:
        assert current_revision(conn) == head_revision()  # every later migration applied too
        columns = {c["name"]: c for c in sa.inspect(conn).get_columns("dx_instances", schema=schema)}
    assert columns["waiting_reason"]["nullable"] is True
