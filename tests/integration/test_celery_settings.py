"""Runtime(app=...) registers the engine's tasks on the user's Celery app and changes nothing else: the engine's
tasks and messages carry their own options (DESIGN invariant 8). Real workers of a host app are exercised in
tests/production/test_host_app.py; here the app and a WorkController are only constructed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from duroxide_celery import Client, Runtime, SqliteProvider
from duroxide_celery.tasks.binding import runtime_of
from duroxide_celery.tasks.queues import NO_TIME_LIMIT_S

pytestmark = pytest.mark.filterwarnings("ignore::celery.platforms.SecurityWarning")

ENGINE_TASKS = {"duroxide.turn", "duroxide.activity", "duroxide.fire_timers", "duroxide.recover"}


class HostSettings:
    """A production-like app: its own routes, limits, results and acknowledgement policy."""

    broker_url = "memory://"
    result_backend = "cache+memory://"
    task_time_limit = 3
    task_soft_time_limit = 2
    task_default_rate_limit = "10/m"
    task_acks_late = False
    task_track_started = True
    task_routes = {"*": {"queue": "app-queue"}}
    task_default_queue = "app-default"
    beat_schedule = {"tick": {"task": "host.tick", "schedule": 5.0}}
    task_annotations = {"*": {"rate_limit": "1/s", "max_retries": 1}}


def _host_app() -> Celery:
    app = Celery("host", set_as_current=False)
    app.config_from_object(HostSettings)

    @app.task(name="host.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _file_provider(tmp_path: Path) -> SqliteProvider:
    return SqliteProvider.open(str(tmp_path / "store.db"))


def _settings(app: Celery) -> dict[str, Any]:
    return {key: repr(value) for key, value in app.conf.items() if key not in {"beat_schedule"}}


def test_the_app_configuration_is_unchanged(tmp_path: Path) -> None:
    reference, app = _host_app(), _host_app()
    runtime = Runtime(_file_provider(tmp_path), app=app)
    assert _settings(app) == _settings(reference)
    assert app.conf.beat_schedule == reference.conf.beat_schedule
    assert ENGINE_TASKS <= set(app.tasks) and runtime_of(app) is runtime
    add = app.tasks["host.add"]
    assert (add.ignore_result, add.acks_late, add.time_limit, add.rate_limit) == (False, False, 3, "1/s")
    assert add.track_started is True


def test_engine_tasks_carry_their_own_options(tmp_path: Path) -> None:
    app = _host_app()
    Runtime(_file_provider(tmp_path), app=app)
    turn, activity = app.tasks["duroxide.turn"], app.tasks["duroxide.activity"]
    for task in (turn, activity):
        assert task.ignore_result is True and task.serializer == "json"
        assert task.time_limit == task.soft_time_limit == NO_TIME_LIMIT_S  # never the app's 3 s
        assert task.reject_on_worker_lost is True and task.track_started is False
        assert task.rate_limit == "0/s"  # neither task_default_rate_limit nor a "*" annotation reaches it
    assert (turn.acks_late, activity.acks_late) == (True, False)


def test_engine_messages_go_to_engine_queues_whatever_the_routes_say(tmp_path: Path) -> None:
    app = _host_app()
    runtime = Runtime(_file_provider(tmp_path), app=app)
    sent: list[dict[str, Any]] = []
    original = app.send_task

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        options = app.amqp.router.route(dict(kwargs), name, kwargs.get("args"), {}) if "router" not in kwargs else {}
        sent.append({"name": name, **kwargs, **options})
        return original(name, *args, **kwargs)

    app.send_task = spy  # type: ignore[method-assign]
    runtime.publisher.poke([("i-1", "Flow")])
    (message,) = sent
    assert message["queue"].name == "duroxide.orchestrator"
    assert message["router"].routes == []  # the app's task_routes are not consulted
    assert message["shadow"] == "orch:Flow#i-1"
    assert message["time_limit"] == NO_TIME_LIMIT_S and message["serializer"] == "json"


def test_an_app_that_refuses_json_is_refused_at_construction() -> None:
    app = Celery("pickle-only", set_as_current=False)
    app.conf.accept_content = ["pickle"]
    with pytest.raises(ValueError, match="accept_content"):
        Runtime(SqliteProvider.in_memory(), app=app)
    with pytest.raises(TypeError, match="celery.Celery"):
        Runtime(SqliteProvider.in_memory(), app=object())  # type: ignore[arg-type]


def test_an_in_memory_store_with_a_real_app_is_refused_at_construction() -> None:
    app = Celery("real", set_as_current=False)
    with pytest.raises(ValueError, match=r"SqliteProvider.in_memory\(\) is private to this process, so the workers"):
        Runtime(SqliteProvider.in_memory(), app=app)
    assert "duroxide.turn" not in app.tasks  # refused before anything was installed on the app


def test_a_plain_worker_consumes_the_app_queues_and_the_engine_queues(tmp_path: Path) -> None:
    app = _host_app()
    Runtime(SqliteProvider.open(str(tmp_path / "store.db")), app=app)
    worker = app.Worker(pool_cls="solo", without_mingle=True, without_gossip=True, without_heartbeat=True)
    consumed = set(app.amqp.queues.consume_from or app.amqp.queues)
    assert {"app-default", "duroxide.orchestrator", "duroxide.activities"} <= consumed
    assert worker.prefetch_multiplier == 4  # serves the app's queues too: the app's settings stand


def test_q_narrows_a_worker_to_the_named_queues(tmp_path: Path) -> None:
    app = _host_app()
    Runtime(SqliteProvider.open(str(tmp_path / "store.db")), app=app)
    worker = app.Worker(
        queues=["duroxide.orchestrator"],
        pool_cls="solo",
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
    )
    assert set(app.amqp.queues.consume_from) == {"duroxide.orchestrator"}
    assert worker.prefetch_multiplier == 1  # engine-only: one reserved message per process


def test_a_worker_of_app_queues_only_does_not_touch_the_store(tmp_path: Path) -> None:
    app = _host_app()
    store_dir = tmp_path / "missing-dir"
    provider = SqliteProvider(f"sqlite:///{store_dir}/store.db")  # unusable: its directory does not exist
    Runtime(provider, app=app)
    app.Worker(queues=["app-queue"], pool_cls="solo", without_mingle=True, without_gossip=True, without_heartbeat=True)
    assert not store_dir.exists()
    with pytest.raises(SystemExit, match="cannot use the duroxide store"):
        app.Worker(
            queues=["duroxide.orchestrator"],
            pool_cls="solo",
            without_mingle=True,
            without_gossip=True,
            without_heartbeat=True,
        )


def test_two_apps_in_one_process_keep_their_own_runtimes(tmp_path: Path) -> None:
    first, second = Celery("one"), Celery("two")
    rt1 = Runtime(SqliteProvider.open(str(tmp_path / "one.db")), app=first)
    rt2 = Runtime(SqliteProvider.open(str(tmp_path / "two.db")), app=second)
    assert runtime_of(first) is rt1 and runtime_of(second) is rt2
    assert first.tasks["duroxide.turn"] is not second.tasks["duroxide.turn"]


def test_task_always_eager_runs_workflows_in_this_process() -> None:
    """A test setup with task_always_eager has no workers: the engine runs in process and starts by itself."""
    app = Celery("eager", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name="eager.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    provider = SqliteProvider.in_memory()
    runtime = Runtime(provider, app=app)
    runtime.register_activity("Double", lambda ctx, x: x * 2)

    def flow(ctx: Any, x: int) -> Any:
        doubled = yield ctx.schedule_activity("Double", x)
        yield ctx.schedule_timer(10)
        return doubled + 1

    runtime.register_orchestration("Flow", flow)
    try:
        client = Client(provider, app=app)
        client.start_orchestration("eager-1", "Flow", 20)
        result = client.wait_for_orchestration("eager-1", 10_000)
        assert (result.status, result.output) == ("Completed", 41)
        assert add.delay(2, 3).get() == 5  # the app's own eager tasks are untouched
    finally:
        runtime.shutdown(5_000)
