"""Public API surface: registration styles, RuntimeOptions keywords, the export list."""

from __future__ import annotations

import pytest

import duroxide_celery
from duroxide_celery import Client, RuntimeOptions

from .helpers import WAIT_MS, kinds


def test_export_list_is_pinned():
    # Changing the public API must be deliberate: update this list in the same change.
    assert sorted(duroxide_celery.__all__) == [
        "ActivityContext",
        "ActivityFailed",
        "ActivityWait",
        "CannotDeleteSubOrchestration",
        "ChildWait",
        "Client",
        "DeleteInstanceResult",
        "Event",
        "EventWait",
        "ExecutionInfo",
        "InstanceAlreadyExists",
        "InstanceFilter",
        "InstanceInfo",
        "InstanceNotFound",
        "InstanceStillRunning",
        "InstanceTree",
        "MAX_KV_KEYS",
        "MAX_KV_VALUE_BYTES",
        "MAX_TAG_NAME_BYTES",
        "MAX_WORKER_TAGS",
        "MetricsSnapshot",
        "OperationTimedOut",
        "OrchestrationContext",
        "OrchestrationFailed",
        "OrchestrationResult",
        "PostgresProvider",
        "PruneOptions",
        "PruneResult",
        "QueueDepths",
        "RewindRefused",
        "Runtime",
        "RuntimeOptions",
        "ScheduleAlreadyExists",
        "ScheduleInfo",
        "ScheduleNotFound",
        "ScheduleRun",
        "SqliteProvider",
        "StartRequest",
        "StartResult",
        "StoreNotReady",
        "SystemMetrics",
        "SystemStats",
        "TagFilter",
        "TimerWait",
        "Waits",
        "errors",
        "init_tracing",
        "parse_result",
    ]
    for name in duroxide_celery.__all__:
        assert hasattr(duroxide_celery, name), name
    assert (duroxide_celery.MAX_KV_KEYS, duroxide_celery.MAX_KV_VALUE_BYTES) == (150, 65536)
    assert (duroxide_celery.MAX_WORKER_TAGS, duroxide_celery.MAX_TAG_NAME_BYTES) == (5, 256)


DUROXIDE_OPTION_KEYWORDS = {
    "orchestration_concurrency": 2,
    "worker_concurrency": 3,
    "dispatcher_poll_interval_ms": 50,
    "worker_lock_timeout_ms": 30_000,
    "log_format": "json",
    "log_level": "info",
    "service_name": "svc",
    "service_version": "1.2.3",
    "max_sessions_per_runtime": 4,
    "session_idle_timeout_ms": 60_000,
    "worker_node_id": "node-1",
    "worker_tag_filter": "default_only",
    "orchestrator_lock_timeout_ms": 5000,
    "orchestrator_lock_renewal_buffer_ms": 2000,
    "max_attempts": 7,
    "worker_lock_renewal_buffer_ms": 5000,
    "session_lock_timeout_ms": 30_000,
    "session_lock_renewal_buffer_ms": 5000,
}


def test_runtime_options_accepts_every_duroxide_keyword(runtime_factory, client):
    options = RuntimeOptions(**DUROXIDE_OPTION_KEYWORDS)
    for key, value in DUROXIDE_OPTION_KEYWORDS.items():
        assert getattr(options, key) == value
    assert RuntimeOptions() == RuntimeOptions(**dict.fromkeys(DUROXIDE_OPTION_KEYWORDS))

    # ...and a runtime configured with all of them works.
    def orch(ctx, x):
        return (yield ctx.schedule_activity("Inc", x))

    runtime_factory({"O": orch}, {"Inc": lambda ctx, x: x + 1}, options=options)
    client.start_orchestration("opts-1", "O", 41)
    result = client.wait_for_orchestration("opts-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", 42)


def test_runtime_options_rejects_unknown_keyword():
    with pytest.raises(TypeError, match="no_such_option"):
        RuntimeOptions(no_such_option=1)
    with pytest.raises(TypeError):
        RuntimeOptions(5)  # keyword-only


def test_register_as_decorator(runtime_factory, client):
    rt = runtime_factory(start=False)

    @rt.register_activity("Greet")
    def greet(ctx, name):
        return f"Hello, {name}!"

    @rt.register_orchestration("Hello")
    def hello(ctx, inp):
        return (yield ctx.schedule_activity("Greet", inp["name"]))

    @rt.register_orchestration_versioned("Hello", "2.0.0")
    def hello_v2(ctx, inp):
        greeting = yield ctx.schedule_activity("Greet", inp["name"])
        return {"v": ctx.orchestration_version, "greeting": greeting}

    # The decorators hand the function back unchanged.
    assert greet.__name__ == "greet" and hello.__name__ == "hello" and hello_v2.__name__ == "hello_v2"
    rt.start()
    client.start_orchestration("deco-latest", "Hello", {"name": "World"})
    client.start_orchestration_versioned("deco-v1", "Hello", {"name": "v1"}, "1.0.0")
    latest = client.wait_for_orchestration("deco-latest", WAIT_MS)
    pinned = client.wait_for_orchestration("deco-v1", WAIT_MS)
    assert (latest.status, latest.output) == ("Completed", {"v": "2.0.0", "greeting": "Hello, World!"})
    assert (pinned.status, pinned.output) == ("Completed", "Hello, v1!")
    assert client.get_instance_info("deco-v1").orchestration_version == "1.0.0"
    assert client.get_instance_info("deco-latest").orchestration_version == "2.0.0"


def test_register_as_call(runtime_factory, provider):
    rt = runtime_factory(start=False)

    def double(ctx, x):
        return x * 2

    def orch_v1(ctx, x):
        return (yield ctx.schedule_activity("Double", x))

    def orch_v3(ctx, x):
        doubled = yield ctx.schedule_activity("Double", x)
        return [ctx.orchestration_version, doubled]

    assert rt.register_activity("Double", double) is double
    assert rt.register_orchestration("Calc", orch_v1) is orch_v1
    assert rt.register_orchestration_versioned("Calc", "3.0.0", orch_v3) is orch_v3
    rt.start()
    client = Client(provider)
    client.start_orchestration("call-latest", "Calc", 5)
    client.start_orchestration_versioned("call-v1", "Calc", 6, "1.0.0")
    assert client.wait_for_orchestration("call-latest", WAIT_MS).output == ["3.0.0", 10]
    assert client.wait_for_orchestration("call-v1", WAIT_MS).output == 12
    assert kinds(client, "call-v1") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "OrchestrationCompleted",
    ]


def test_registration_rejects_bad_names(runtime_factory):
    rt = runtime_factory(start=False)
    with pytest.raises(ValueError):
        rt.register_activity("", lambda ctx, x: x)
    with pytest.raises(ValueError):
        rt.register_orchestration_versioned("O", "not-semver", lambda ctx, x: x)
    with pytest.raises(ValueError, match="^activity name must not contain NUL characters"):
        rt.register_activity("A\x00", lambda ctx, x: x)
    with pytest.raises(ValueError, match="^orchestration name is 257 characters; the limit is 256$"):
        rt.register_orchestration("O" * 257, lambda ctx, x: x)
    with pytest.raises(ValueError, match="^orchestration name must be a non-empty string, got '  '$"):
        rt.register_orchestration("  ", lambda ctx, x: x)
    with pytest.raises(TypeError, match="^activity name must be a str, got int$"):
        rt.register_activity(5, lambda ctx, x: x)
    with pytest.raises(ValueError, match="semver"):
        rt.register_orchestration_versioned("O", "1.0.0\n", lambda ctx, x: x)
    assert rt.activities == {} and rt.orchestration_names() == []


def _first(ctx, x):
    return x


def _second(ctx, x):
    return x


def test_a_name_registered_again_keeps_its_function(runtime_factory):
    rt = runtime_factory(start=False)
    rt.register_activity("A", _first)
    rt.register_activity("A", _first)  # the same function again: a no-op (a module imported twice, a re-run setup)
    with pytest.raises(ValueError, match=r"^activity 'A' is already registered with .*\._first; got .*\._second$"):
        rt.register_activity("A", _second)
    assert rt.activities["A"] is _first
    rt.register_orchestration("O", _first)
    rt.register_orchestration("O", _first)
    with pytest.raises(ValueError, match=r"^orchestration 'O' version 1\.0\.0 is already registered with .*_first"):
        rt.register_orchestration_versioned("O", "1.0.0", _second)
    rt.register_orchestration_versioned("O", "2.0.0", _second)  # a new version is how an orchestration changes
    assert rt.resolve_orchestration("O", None) == ("2.0.0", _second)
    assert rt.resolve_orchestration("O", "1.0.0") == ("1.0.0", _first)


def test_plain_function_orchestration_completes_at_once(runtime_factory, client):
    runtime_factory({"Plain": lambda ctx, x: {"echo": x}})
    client.start_orchestration("plain-1", "Plain", [1, "two"])
    result = client.wait_for_orchestration("plain-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"echo": [1, "two"]})


def test_in_memory_provider_runs_an_orchestration(runtime_factory, memory_provider):
    def orch(ctx, name):
        greeting = yield ctx.schedule_activity("Greet", name)
        yield ctx.schedule_timer(50)
        return greeting

    runtime_factory({"Hello": orch}, {"Greet": lambda ctx, n: f"Hello, {n}!"}, provider_=memory_provider)
    client = Client(memory_provider)
    client.start_orchestration("mem-1", "Hello", "World")
    result = client.wait_for_orchestration("mem-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "Hello, World!")
    assert kinds(client, "mem-1") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "TimerCreated",
        "TimerFired",
        "OrchestrationCompleted",
    ]
