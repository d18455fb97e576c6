"""Client.start_orchestrations: many starts checked first, written in one transaction, woken in one batch, with
the single start's semantics per item (existing ids, if_exists, start limits), on the embedded runtime and the
selected store."""

from __future__ import annotations

from typing import Any

import pytest

from duroxide_celery import InstanceAlreadyExists, StartRequest, StartResult

from .helpers import WAIT_MS, kinds, wait_for_kind


def _double_orch(ctx: Any, x: Any) -> Any:
    return (yield ctx.schedule_activity("Double", x))


def _gate_orch(ctx: Any, x: Any) -> Any:
    return [x, (yield ctx.wait_for_event("go"))]


ORCHS = {"Double": _double_orch, "Gate": _gate_orch}
ACTS = {"Double": lambda ctx, x: 2 * x}


def test_fifty_starts_in_one_call_all_complete_with_their_outputs(runtime_factory, client):
    rt = runtime_factory(start=False)
    for name, fn in ORCHS.items():
        rt.register_orchestration(name, fn)
    rt.register_orchestration("Ver", lambda ctx, x: (yield ctx.schedule_timer(1)) or "v1")  # 1.0.0
    rt.register_orchestration_versioned("Ver", "2.0.0", lambda ctx, x: (yield ctx.schedule_timer(1)) or "v2")
    for name, fn in ACTS.items():
        rt.register_activity(name, fn)
    rt.start()
    starts: list[Any] = [(f"bulk-{i}", "Double", i) for i in range(48)]
    starts.append(StartRequest("bulk-pinned", "Ver", version="1.0.0"))
    starts.append(StartRequest("bulk-latest", "Ver"))
    results = client.start_orchestrations(iter(starts))  # any iterable
    assert results == [StartResult(f"bulk-{i}", "created", 1) for i in range(48)] + [
        StartResult("bulk-pinned", "created", 1),
        StartResult("bulk-latest", "created", 1),
    ]
    for i in range(48):
        result = client.wait_for_orchestration(f"bulk-{i}", WAIT_MS)
        assert (result.status, result.output) == ("Completed", 2 * i)
        assert kinds(client, f"bulk-{i}") == [
            "OrchestrationStarted",
            "ActivityScheduled",
            "ActivityCompleted",
            "OrchestrationCompleted",
        ]
    assert client.wait_for_orchestration("bulk-pinned", WAIT_MS).output == "v1"
    assert client.get_instance_info("bulk-pinned").orchestration_version == "1.0.0"
    assert client.wait_for_orchestration("bulk-latest", WAIT_MS).output == "v2"
    assert sorted(client.list_all_instances()) == sorted(
        s[0] if isinstance(s, tuple) else s.instance_id for s in starts
    )


def test_an_empty_call_writes_nothing(client):
    assert client.start_orchestrations([]) == []
    assert client.start_orchestrations(iter(())) == []
    assert client.list_all_instances() == []


#: A bad item, as start_orchestration would take it: (instance id, name, input, version, key).
BAD_ITEMS = [
    pytest.param(("", "Double", 1, None, None), id="empty-id"),
    pytest.param(("a::sub::1", "Double", 1, None, None), id="reserved-marker"),
    pytest.param(("x" * 513, "Double", 1, None, None), id="id-too-long"),
    pytest.param((7, "Double", 1, None, None), id="id-not-str"),
    pytest.param(("ok-id", "", 1, None, None), id="empty-name"),
    pytest.param(("ok-id", "Dou\x00ble", 1, None, None), id="nul-in-name"),
    pytest.param(("ok-id", "Double", {"when": object()}, None, None), id="input-not-json"),
    pytest.param(("ok-id", "Double", float("nan"), None, None), id="input-nan"),
    pytest.param(("ok-id", "Double", 1, "v" * 65, None), id="version-too-long"),
    pytest.param(("ok-id", "Double", 1, None, "a\x00b"), id="nul-in-key"),
]


@pytest.mark.parametrize("bad", BAD_ITEMS)
def test_a_bad_item_raises_the_single_starts_error_naming_its_index_and_writes_nothing(runtime_factory, client, bad):
    runtime_factory(ORCHS, ACTS)
    client.start_orchestration("before", "Double", 1)
    assert client.wait_for_orchestration("before", WAIT_MS).status == "Completed"
    instance_id, name, input, version, key = bad
    # What the single start says about the same arguments (it writes nothing either).
    with pytest.raises((TypeError, ValueError)) as single:
        if version is None:
            client.start_orchestration(instance_id, name, input, key=key)
        else:
            client.start_orchestration_versioned(instance_id, name, input, version, key=key)
    starts = [("good-0", "Double", 1), StartRequest("good-1", "Double", 2)]
    starts.append(StartRequest(instance_id, name, input, version=version, key=key))
    starts.append(("good-3", "Double", 3))
    with pytest.raises(type(single.value)) as bulk:
        client.start_orchestrations(starts)
    assert str(bulk.value) == f"starts[2]: {single.value}"
    assert client.list_all_instances() == ["before"]
    assert client.get_status("good-0").status == "NotFound"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (["a-list", "Double", 1], "starts[1]: a start must be a StartRequest or an (instance_id, orchestration_name"),
        (
            ("one",),
            "starts[1]: a start must be a StartRequest or an (instance_id, orchestration_name[, input]) tuple, "
            "got a tuple of 1 items",
        ),
        (("a", "Double", 1, "1.0.0"), "got a tuple of 4 items"),
        ("just-an-id", "got str"),
        (None, "got NoneType"),
    ],
)
def test_an_item_of_the_wrong_shape_is_a_type_error_naming_its_index(client, item, message):
    with pytest.raises(TypeError) as raised:
        client.start_orchestrations([("fine", "Double", 1), item])
    assert message in str(raised.value) and str(raised.value).startswith("starts[1]: ")
    assert client.list_all_instances() == []


@pytest.mark.parametrize("starts", [StartRequest("one", "Double"), "ids", {"a": "Double"}, 42, None])
def test_starts_must_be_an_iterable_of_starts(client, starts):
    with pytest.raises(TypeError, match="starts must be an iterable of StartRequest or tuples, got "):
        client.start_orchestrations(starts)
    assert client.list_all_instances() == []


def test_a_bad_if_exists_is_refused_before_anything_is_written(client):
    with pytest.raises(ValueError, match="if_exists must be one of 'keep', 'fail', 'restart_if_finished', got 'x'"):
        client.start_orchestrations([("a", "Double", 1)], if_exists="x")
    assert client.list_all_instances() == []


def test_a_duplicate_id_in_one_call_is_a_value_error_naming_it(client):
    starts = [("d-0", "Double", 1), ("dup", "Double", 2), ("d-2", "Double", 3), ("dup", "Double", 4)]
    with pytest.raises(ValueError) as raised:
        client.start_orchestrations(starts)
    assert str(raised.value) == "starts[3]: instance id 'dup' is also starts[1]; an id can start only once per call"
    assert client.list_all_instances() == []


def test_an_existing_id_is_kept_by_default_and_the_others_start(runtime_factory, client):
    runtime_factory(ORCHS, ACTS)
    client.start_orchestration("old", "Double", 5)
    assert client.wait_for_orchestration("old", WAIT_MS).output == 10
    results = client.start_orchestrations([("new-0", "Double", 1), ("old", "Double", 50), ("new-1", "Double", 2)])
    assert results == [
        StartResult("new-0", "created", 1),
        StartResult("old", "kept", 1),
        StartResult("new-1", "created", 1),
    ]
    assert [bool(r) for r in results] == [True, False, True]
    assert client.wait_for_orchestration("new-0", WAIT_MS).output == 2
    assert client.wait_for_orchestration("new-1", WAIT_MS).output == 4
    assert client.get_status("old").output == 10  # the first start won: its input and output stand
    assert client.list_executions("old") == [1]


def test_if_exists_fail_refuses_the_whole_call_naming_the_index(runtime_factory, client):
    runtime_factory(ORCHS, ACTS)
    client.start_orchestration("taken", "Double", 5)
    assert client.wait_for_orchestration("taken", WAIT_MS).status == "Completed"
    with pytest.raises(InstanceAlreadyExists) as raised:
        client.start_orchestrations(
            [("f-0", "Double", 1), ("taken", "Double", 2), ("f-2", "Double", 3)], if_exists="fail"
        )
    assert str(raised.value) == "starts[1]: Instance taken already exists"
    assert client.list_all_instances() == ["taken"]  # f-0 and f-2 were rolled back with it


def test_if_exists_restart_if_finished_restarts_finished_ids_and_keeps_running_ones(runtime_factory, client):
    runtime_factory(ORCHS, ACTS)
    client.start_orchestration("done", "Double", 5)
    client.start_orchestration("waiting", "Gate", "w")
    assert client.wait_for_orchestration("done", WAIT_MS).output == 10
    wait_for_kind(client, "waiting", "ExternalSubscribed")
    results = client.start_orchestrations(
        [("done", "Double", 7), ("waiting", "Gate", "ignored"), ("fresh", "Double", 1)], if_exists="restart_if_finished"
    )
    assert results == [
        StartResult("done", "restarted", 2),
        StartResult("waiting", "kept", 1),
        StartResult("fresh", "created", 1),
    ]
    assert client.wait_for_orchestration("fresh", WAIT_MS).output == 2
    assert client.wait_for_orchestration("done", WAIT_MS).output == 14
    assert client.list_executions("done") == [1, 2]
    client.raise_event("waiting", "go", "now")
    assert client.wait_for_orchestration("waiting", WAIT_MS).output == ["w", "now"]


def test_start_limits_hold_the_excess_of_a_bulk_start(runtime_factory, client):
    rt = runtime_factory(ORCHS, ACTS, start=False)
    rt.limit_starts("Gate", limit=3, key_limit=2)
    rt.start()
    starts = [StartRequest(f"a{i}", "Gate", f"a{i}", key="a") for i in range(4)]
    starts += [StartRequest("b0", "Gate", "b0", key="b"), ("free", "Double", 1)]
    results = client.start_orchestrations(starts)
    assert [r.outcome for r in results] == ["created"] * 6
    # Admitted in the call's transaction: two of key a (its key_limit), then b; the third slot of 3 is b0's.
    admitted, held = ["a0", "a1", "b0"], ["a2", "a3"]
    for instance_id in admitted:
        wait_for_kind(client, instance_id, "ExternalSubscribed")
    for instance_id in held:
        status = client.get_status(instance_id)
        assert status.status == "Running" and kinds(client, instance_id) == []  # no turn ran
        assert status.waiting_reason == "held by limit Gate(limit=3, key_limit=2) for key 'a'"
    assert client.wait_for_orchestration("free", WAIT_MS).output == 2  # other orchestrations are not held
    # Ending admitted instances frees slots: the held ones run, oldest first within their key.
    for instance_id in admitted + held:
        wait_for_kind(client, instance_id, "ExternalSubscribed")
        client.raise_event(instance_id, "go", instance_id.upper())
        assert client.wait_for_orchestration(instance_id, WAIT_MS).output == [instance_id, instance_id.upper()]
