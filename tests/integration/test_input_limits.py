"""Issue 11 items 2, 5, 6, 12 and 13 on a real store (SQLite, or PostgreSQL with DUROXIDE_TEST_DB=postgres): input
the store cannot hold is refused by the Client with the same clear error on both stores, before anything is
written; inside an orchestration it is an error the code catches; JSON payloads carry NUL characters intact; and
nothing else is affected (other instances keep completing)."""

from __future__ import annotations

import math

import pytest

from duroxide_celery import InstanceFilter, InstanceNotFound, OperationTimedOut, PruneOptions
from duroxide_celery.replay.events import MAX_JSON_DEPTH

from .helpers import WAIT_MS, event_data, kinds, wait_for_kind


def _echo_orch(ctx, x):
    return (yield ctx.schedule_activity("Echo", x))


ECHO = {"Echo": lambda ctx, x: x}


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _assert_still_works(client, instance_id: str = "after") -> None:
    client.start_orchestration(instance_id, "Echo", {"still": "works"})
    result = client.wait_for_orchestration(instance_id, WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"still": "works"})


# -- item 12 and 13: JSON the Client refuses ----------------------------------------------------------------------
def test_client_refuses_colliding_keys_and_deep_json_writing_nothing(runtime_factory, client):
    runtime_factory({"Echo": _echo_orch, "Wait": _wait_orch}, ECHO)
    with pytest.raises(
        TypeError, match="orchestration input value is not JSON-serializable: dict key 1 is of type int"
    ):
        client.start_orchestration("keys", "Echo", {1: "a", "1": "b", None: "c", "null": "d"})
    with pytest.raises(TypeError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        client.start_orchestration("deep", "Echo", _nested(MAX_JSON_DEPTH + 1))
    with pytest.raises(TypeError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        client.start_orchestration("deeper", "Echo", _nested(50_000))
    assert client.list_all_instances() == []
    # Event data goes through the same encoder.
    client.start_orchestration("waiting", "Wait", None)
    with pytest.raises(TypeError, match="dict key None is of type NoneType"):
        client.raise_event("waiting", "go", {None: "c", "null": "d"})
    with pytest.raises(TypeError, match="dict key 2 is of type int"):
        client.enqueue_event("waiting", "q", [{2: "x"}])
    assert [k for k in kinds(client, "waiting") if k == "ExternalEvent"] == []
    # The deepest value allowed round-trips.
    client.start_orchestration("deepest", "Echo", _nested(MAX_JSON_DEPTH))
    result = client.wait_for_orchestration("deepest", WAIT_MS)
    assert (result.status, result.output) == ("Completed", _nested(MAX_JSON_DEPTH))
    client.raise_event("waiting", "go", {"1": "b", "null": "d"})
    result = client.wait_for_orchestration("waiting", WAIT_MS)
    assert (result.status, result.output) == ("Completed", {"1": "b", "null": "d"})


def _wait_orch(ctx, _):
    return (yield ctx.wait_for_event("go"))


def test_activity_result_with_colliding_keys_is_a_catchable_failure(runtime_factory, client):
    def orch(ctx, _):
        try:
            return (yield ctx.schedule_activity("Collide", None))
        except Exception as exc:  # noqa: BLE001 - the activity's failure, caught
            return f"caught: {exc}"

    runtime_factory({"Collide": orch, "Echo": _echo_orch}, {"Collide": lambda ctx, _: {1: "a", "1": "b"}, **ECHO})
    client.start_orchestration("collide", "Collide", None)
    result = client.wait_for_orchestration("collide", WAIT_MS)
    assert result.status == "Completed"
    assert "dict key 1 is of type int; JSON object keys must be str" in result.output
    assert kinds(client, "collide").count("ActivityScheduled") == 1
    _assert_still_works(client)


# -- item 2 and 13: text the Client refuses, the same on both stores ------------------------------------------------
def test_client_refuses_text_the_store_cannot_hold_before_any_write(runtime_factory, client):
    runtime_factory({"Echo": _echo_orch, "Wait": _wait_orch}, ECHO)
    nul = "must not contain NUL characters"
    with pytest.raises(ValueError, match=f"instance id {nul}"):
        client.start_orchestration("id\x00", "Echo", 1)
    with pytest.raises(ValueError, match="instance id must be valid Unicode text; it contains a lone surrogate"):
        client.start_orchestration("id\ud800", "Echo", 1)
    with pytest.raises(ValueError, match="instance id is 513 characters; the limit is 512"):
        client.start_orchestration("i" * 513, "Echo", 1)
    with pytest.raises(ValueError, match=f"orchestration name {nul}"):
        client.start_orchestration("ok", "Echo\x00", 1)
    with pytest.raises(ValueError, match="orchestration name is 257 characters; the limit is 256"):
        client.start_orchestration("ok", "E" * 257, 1)
    with pytest.raises(ValueError, match="version is 65 characters; the limit is 64"):
        client.start_orchestration_versioned("ok", "Echo", 1, "1" * 65)
    with pytest.raises(ValueError, match=f"version {nul}"):
        client.start_orchestration_versioned("ok", "Echo", 1, "1.0\x00")
    assert client.list_all_instances() == []

    client.start_orchestration("waiting", "Wait", None)
    with pytest.raises(ValueError, match=f"event name {nul}"):
        client.raise_event("waiting", "go\x00", 1)
    with pytest.raises(ValueError, match=f"queue name {nul}"):
        client.enqueue_event("waiting", "q\x00", 1)
    with pytest.raises(ValueError, match=f"cancel reason {nul}"):
        client.cancel_instance("waiting", "why\x00")
    with pytest.raises(ValueError, match=f"instance id {nul}"):
        client.raise_event("wait\x00", "go", 1)

    # Reads and management calls: an id the store cannot hold names no instance, so they answer as for an unknown
    # id on both stores (PostgreSQL used to raise raw database errors where SQLite answered).
    for bad in ("a\x00", "\x00", "id\ud800"):
        assert client.get_status(bad).status == "NotFound"
        assert client.get_instance_info(bad) is None
        assert client.list_executions(bad) == []
        assert client.get_execution_info(bad, 1) is None
        assert client.read_execution_history(bad, 1) == []
        assert client.get_kv_value(bad, "k") is None
        assert client.get_orchestration_stats(bad) is None
        for call in (client.get_waits, client.get_instance_tree, client.delete_instance, client.prune_executions):
            with pytest.raises(InstanceNotFound, match="not found"):
                call(bad)
        with pytest.raises(OperationTimedOut):
            client.wait_for_orchestration(bad, 0)
    with pytest.raises(ValueError, match=f"KV key {nul}"):
        client.get_kv_value("waiting", "k\x00")
    with pytest.raises(ValueError, match=f"status {nul}"):
        client.list_instances_by_status("Running\x00")
    with pytest.raises(TypeError, match="instance id must be a str, got int"):
        client.get_status(42)
    with pytest.raises(TypeError, match="execution_id must be an int, got str"):
        client.read_execution_history("waiting", "1")
    with pytest.raises(ValueError, match="execution_id is out of the 64-bit integer range"):
        client.get_execution_info("waiting", 2**70)
    with pytest.raises(ValueError, match=f"instance id {nul}"):
        InstanceFilter(instance_ids=["a\x00"])
    with pytest.raises(ValueError, match="completed_before is out of the 64-bit integer range"):
        PruneOptions(completed_before=2**70)
    with pytest.raises(ValueError, match="limit is out of the 64-bit integer range"):
        InstanceFilter(limit=2**64)
    # Valid reads of what does not exist answer plainly on both stores.
    assert client.get_kv_value("waiting", "k" * 600) is None
    assert client.read_execution_history("waiting", 2**40) == []
    assert client.get_execution_info("waiting", 2**40) is None

    client.raise_event("waiting", "go", "done")
    assert client.wait_for_orchestration("waiting", WAIT_MS).output == "done"
    _assert_still_works(client)


def test_wait_calls_refuse_timeouts_that_would_never_end(runtime_factory, client):
    runtime_factory({"Wait": _wait_orch}, {})
    client.start_orchestration("waiting", "Wait", None)
    for bad in (math.nan, math.inf, -math.inf, -1):
        with pytest.raises(ValueError, match="timeout_ms must"):
            client.wait_for_orchestration("waiting", bad)
        with pytest.raises(ValueError, match="timeout_ms must"):
            client.wait_for_status_change("waiting", 0, 10, bad)
        with pytest.raises(ValueError, match="timeout_ms must"):
            client.wait_for_kv_value("waiting", "k", bad)
        with pytest.raises(ValueError, match="timeout_ms must"):
            client.wait_for_orchestration_typed("waiting", bad)
    with pytest.raises(ValueError, match="poll_interval_ms must be a finite number"):
        client.wait_for_status_change("waiting", 0, math.nan, 1000)
    with pytest.raises(TypeError, match="timeout_ms must be a number of milliseconds, got str"):
        client.wait_for_orchestration("waiting", "30")
    # A zero timeout checks once.
    assert client.wait_for_status_change("waiting", -1, 10, 0).status == "Running"


# -- item 2: NUL inside JSON payloads is fine -------------------------------------------------------------------
def test_nul_characters_inside_json_payloads_round_trip(runtime_factory, client):
    def orch(ctx, x):
        echoed = yield ctx.schedule_activity("Echo", x)
        event = yield ctx.wait_for_event("go")
        ctx.set_kv_value("k", "plain")
        return {"echoed": echoed, "event": event, "key\x00": "v\x00"}

    runtime_factory({"Nul": orch, "Echo": _echo_orch}, ECHO)
    value = {"s": "a\x00b", "list": ["\x00", "x\x00y"]}
    client.start_orchestration("nul", "Nul", value)
    wait_for_kind(client, "nul", "ExternalSubscribed")
    client.raise_event("nul", "go", "e\x00")
    result = client.wait_for_orchestration("nul", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output == {"echoed": value, "event": "e\x00", "key\x00": "v\x00"}
    started = client.read_execution_history("nul", 1)[0]
    assert event_data(started)["input"] == '{"s":"a\\u0000b","list":["\\u0000","x\\u0000y"]}'


# -- item 6 and 5: context inputs the store or broker cannot hold -----------------------------------------------
def _try_all(ctx, _):
    attempts = [
        ("activity name", lambda: ctx.schedule_activity("a" * 257, None)),
        ("session id", lambda: ctx.schedule_activity("Echo", 1, session_id="s\x00")),
        ("kv key", lambda: ctx.set_kv_value("k" * 513, "v")),
        ("kv value", lambda: ctx.set_kv_value("k", "v\x00")),
        ("child id", lambda: ctx.schedule_sub_orchestration_with_id("Echo", "c" * 513, 1)),
        ("detached id", lambda: ctx.start_orchestration("Echo", "d" * 513, 1)),
        ("timer", lambda: ctx.schedule_timer(1e300)),
        ("nan timer", lambda: ctx.schedule_timer(math.nan)),
        ("custom status", lambda: ctx.set_custom_status("s\x00")),
        ("event name", lambda: ctx.wait_for_event("e\x00")),
        ("tag", lambda: ctx.schedule_activity("Echo", 1).with_tag("t" * 240)),
        ("json keys", lambda: ctx.schedule_activity("Echo", {1: "a", "1": "b"})),
    ]
    caught = {}
    for what, call in attempts:
        try:
            task = call()
            if task is not None:
                yield task
            caught[what] = "accepted"
        except (TypeError, ValueError) as exc:
            caught[what] = str(exc)
    caught["echo"] = yield ctx.schedule_activity("Echo", "fine")
    return caught


def test_context_inputs_the_store_cannot_hold_are_catchable_errors(runtime_factory, client):
    runtime_factory({"TryAll": _try_all, "Echo": _echo_orch}, ECHO)
    client.start_orchestration("try-all", "TryAll", None)
    client.start_orchestration("neighbour", "Echo", "unaffected")
    result = client.wait_for_orchestration("try-all", WAIT_MS)
    assert result.status == "Completed", result.error
    caught = result.output
    assert caught["echo"] == "fine"
    expected = {
        "activity name": "activity name is 257 characters; the limit is 256",
        "session id": "session_id must not contain NUL characters",
        "kv key": "KV key is 513 characters; the limit is 512",
        "kv value": "KV value for key 'k' must not contain NUL characters",
        "child id": "sub-orchestration instance id is 513 characters; the limit is 512",
        "detached id": "instance id is 513 characters; the limit is 512",
        "timer": "timer delay is 1e+300 ms; the limit is 3153600000000 ms (100 years)",
        "nan timer": "timer delay must be a finite number of milliseconds, got nan",
        "custom status": "custom status must not contain NUL characters",
        "event name": "event name must not contain NUL characters",
        "tag": "is too long for its broker queue",
        "json keys": "dict key 1 is of type int",
    }
    for what, text in expected.items():
        assert text in caught[what], (what, caught[what])
    history = client.read_execution_history("try-all", 1)
    assert [e.kind for e in history].count("ActivityScheduled") == 1  # only the valid Echo
    assert not [e for e in history if e.kind in ("KeyValueSet", "CustomStatusUpdated", "TimerCreated")]
    assert set(client.list_all_instances()) == {"neighbour", "try-all"}  # no child or detached instance
    assert client.wait_for_orchestration("neighbour", WAIT_MS).output == "unaffected"


def test_a_512_character_instance_id_runs_sub_orchestrations(runtime_factory, client):
    def parent(ctx, x):
        first = yield ctx.schedule_sub_orchestration("Echo", x)
        second = yield ctx.schedule_sub_orchestration("Echo", x + 1)
        return [first, second]

    runtime_factory({"Parent": parent, "Echo": _echo_orch}, ECHO)
    long_id = "p" * 512
    client.start_orchestration(long_id, "Parent", 1)
    result = client.wait_for_orchestration(long_id, WAIT_MS)
    assert (result.status, result.output) == ("Completed", [1, 2])
    tree = client.get_instance_tree(long_id)
    children = tree.all_ids[1:]
    assert len(children) == 2 and all(len(c) <= 512 and "::sub::" in c for c in children)
    for child in children:
        info = client.get_instance_info(child)
        assert info.parent_instance_id == long_id and info.status == "Completed"
    _assert_still_works(client)


def test_bare_except_cannot_swallow_the_custom_status_limit(runtime_factory, client):
    def orch(ctx, _):
        try:
            ctx.set_custom_status("x" * (256 * 1024 + 1))
        except:  # noqa: E722 - the point of the test
            pass
        return (yield ctx.schedule_activity("Echo", "swallowed"))

    runtime_factory({"Big": orch, "Echo": _echo_orch}, ECHO)
    client.start_orchestration("big-status", "Big", None)
    result = client.wait_for_orchestration("big-status", WAIT_MS)
    assert result.status == "Failed"
    assert result.error == "custom status is 262145 bytes; the limit is 262144 bytes"
    assert kinds(client, "big-status") == ["OrchestrationStarted", "OrchestrationFailed"]
    assert result.custom_status is None
    _assert_still_works(client)
