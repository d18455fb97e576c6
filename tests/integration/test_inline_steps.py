"""Inline steps on the embedded runtime (tasks/inline.py): an activity completed where turns are served runs its
instance's next turn right there, and that turn runs its single new activity there too, so a sequence takes one
turn task and one activity task instead of one of each per step. The histories are the same as with every step on
the broker (`RuntimeOptions(inline_steps=False)`); a fan-out still goes through the broker, its completions
coalesced; failures inside the chain are recorded once and catchable as usual."""

from __future__ import annotations

from typing import Any

import pytest
from celery import current_task

from duroxide_celery import RuntimeOptions

from .helpers import WAIT_MS

STEPS = 10


def sequence(ctx: Any, n: int) -> Any:
    total = 0
    for i in range(n):
        total = yield ctx.schedule_activity("Add", [total, i])
    return total


def fan_out(ctx: Any, n: int) -> Any:
    values = yield ctx.all([ctx.schedule_activity("Add", [i, 1]) for i in range(n)])
    return sum(v["ok"] for v in values)


def catches(ctx: Any, _: Any) -> Any:
    first = yield ctx.schedule_activity("Add", [1, 2])
    try:
        yield ctx.schedule_activity("Boom", first)
    except Exception as exc:  # noqa: BLE001 - the orchestration handles the activity's failure
        return {"first": first, "caught": str(exc)}
    return {"first": first, "caught": None}


def boom(ctx: Any, value: Any) -> Any:
    raise ValueError(f"boom after {value}")


def _kinds(client: Any, instance_id: str) -> list[str]:
    return [e.kind for e in client.read_execution_history(instance_id, 1)]


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "broker"])
def test_a_sequence_runs_its_steps_where_the_last_finished(runtime_factory, client, inline):
    ran_in: list[str] = []  # the Celery task each Add ran in

    def add(ctx: Any, pair: Any) -> Any:
        ran_in.append(current_task.request.id)
        return pair[0] + pair[1]

    runtime_factory({"Sequence": sequence}, {"Add": add}, options=RuntimeOptions(inline_steps=inline))
    client.start_orchestration("seq", "Sequence", STEPS)
    result = client.wait_for_orchestration("seq", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output == sum(range(STEPS))
    kinds = _kinds(client, "seq")
    assert kinds.count("ActivityScheduled") == STEPS and kinds.count("ActivityCompleted") == STEPS
    assert kinds[0] == "OrchestrationStarted" and kinds[-1] == "OrchestrationCompleted"
    assert len(ran_in) == STEPS
    # Inline: the first activity's task ran every later turn and activity; else each activity had a task of its own.
    assert len(set(ran_in)) == (1 if inline else STEPS), ran_in


def test_a_fan_out_still_runs_on_the_broker(runtime_factory, client):
    ran_in: list[str] = []

    def add(ctx: Any, pair: Any) -> Any:
        ran_in.append(current_task.request.id)
        return pair[0] + pair[1]

    runtime_factory({"FanOut": fan_out}, {"Add": add})
    client.start_orchestration("fan", "FanOut", 40)
    result = client.wait_for_orchestration("fan", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output == sum(range(1, 41))
    assert len(ran_in) == 40 and len(set(ran_in)) == 40  # one task per activity: they ran in parallel
    kinds = _kinds(client, "fan")
    assert kinds.count("ActivityCompleted") == 40 and kinds[-1] == "OrchestrationCompleted"


def test_an_activity_failing_inside_the_chain_is_recorded_once_and_caught(runtime_factory, client):
    ran_in: dict[str, list[str]] = {"Add": [], "Boom": []}

    def add(ctx: Any, pair: Any) -> Any:
        ran_in["Add"].append(current_task.request.id)
        return pair[0] + pair[1]

    def counted_boom(ctx: Any, value: Any) -> Any:
        ran_in["Boom"].append(current_task.request.id)
        return boom(ctx, value)

    runtime_factory({"Catches": catches}, {"Add": add, "Boom": counted_boom})
    client.start_orchestration("catch", "Catches", None)
    result = client.wait_for_orchestration("catch", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output["first"] == 3
    assert "boom after 3" in result.output["caught"]
    assert len(ran_in["Add"]) == 1 and ran_in["Boom"] == ran_in["Add"]  # once, inline, in Add's task
    assert _kinds(client, "catch") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "ActivityScheduled",
        "ActivityFailed",
        "OrchestrationCompleted",
    ]


def test_inline_steps_must_be_a_bool():
    with pytest.raises(TypeError, match="RuntimeOptions.inline_steps must be a bool, got int"):
        RuntimeOptions(inline_steps=1)
