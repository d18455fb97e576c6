"""Inline steps on the embedded runtime (tasks/inline.py): an activity completed where turns are served runs its
instance's next turn right there, and that turn runs its single new activity there too, so a sequence takes one
turn task and one activity task instead of one of each per step. The histories are the same as with every step on
the broker (`RuntimeOptions(inline_steps=False)`); a fan-out still goes through the broker, its completions
coalesced; failures inside the chain are recorded once and catchable as usual."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals

from duroxide_celery import RuntimeOptions
from duroxide_celery.tasks.queues import ACTIVITY_TASK, TURN_TASK

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


class TaskCounts:
    """How many engine tasks of each name this process ran (the embedded workers run them in pool threads)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def on_prerun(self, sender: Any = None, **_: Any) -> None:
        with self._lock:
            self.counts[sender.name] = self.counts.get(sender.name, 0) + 1


@pytest.fixture
def tasks_run() -> Iterator[TaskCounts]:
    counts = TaskCounts()
    signals.task_prerun.connect(counts.on_prerun, weak=False)
    yield counts
    signals.task_prerun.disconnect(counts.on_prerun)


def _kinds(client: Any, instance_id: str) -> list[str]:
    return [e.kind for e in client.read_execution_history(instance_id, 1)]


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "broker"])
def test_a_sequence_runs_its_steps_where_the_last_finished(runtime_factory, client, tasks_run, inline):
    runtime_factory(
        {"Sequence": sequence},
        {"Add": lambda ctx, pair: pair[0] + pair[1]},
        options=RuntimeOptions(inline_steps=inline),
    )
    client.start_orchestration("seq", "Sequence", STEPS)
    result = client.wait_for_orchestration("seq", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output == sum(range(STEPS))
    kinds = _kinds(client, "seq")
    assert kinds.count("ActivityScheduled") == STEPS and kinds.count("ActivityCompleted") == STEPS
    assert kinds[0] == "OrchestrationStarted" and kinds[-1] == "OrchestrationCompleted"
    if inline:
        # The start's turn task, then one activity task whose chain ran every other turn and activity.
        assert tasks_run.counts.get(TURN_TASK) == 1, tasks_run.counts
        assert tasks_run.counts.get(ACTIVITY_TASK) == 1, tasks_run.counts
    else:
        assert tasks_run.counts.get(ACTIVITY_TASK) == STEPS, tasks_run.counts
        assert tasks_run.counts.get(TURN_TASK, 0) >= STEPS, tasks_run.counts


def test_a_fan_out_still_runs_on_the_broker(runtime_factory, client, tasks_run):
    runtime_factory({"FanOut": fan_out}, {"Add": lambda ctx, pair: pair[0] + pair[1]})
    client.start_orchestration("fan", "FanOut", 40)
    result = client.wait_for_orchestration("fan", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output == sum(range(1, 41))
    assert tasks_run.counts.get(ACTIVITY_TASK) == 40, tasks_run.counts  # one task per activity: parallel
    kinds = _kinds(client, "fan")
    assert kinds.count("ActivityCompleted") == 40 and kinds[-1] == "OrchestrationCompleted"


def test_an_activity_failing_inside_the_chain_is_recorded_once_and_caught(runtime_factory, client, tasks_run):
    runs: list[Any] = []

    def counted_boom(ctx: Any, value: Any) -> Any:
        runs.append(value)
        return boom(ctx, value)

    runtime_factory({"Catches": catches}, {"Add": lambda ctx, pair: pair[0] + pair[1], "Boom": counted_boom})
    client.start_orchestration("catch", "Catches", None)
    result = client.wait_for_orchestration("catch", WAIT_MS)
    assert result.status == "Completed", result.error
    assert result.output["first"] == 3
    assert "boom after 3" in result.output["caught"]
    assert runs == [3]  # ran inline once: never again by a broker delivery
    assert _kinds(client, "catch") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "ActivityScheduled",
        "ActivityFailed",
        "OrchestrationCompleted",
    ]
    assert tasks_run.counts.get(ACTIVITY_TASK) == 1, tasks_run.counts  # Boom ran inline after Add


def test_inline_steps_must_be_a_bool():
    with pytest.raises(TypeError, match="RuntimeOptions.inline_steps must be a bool, got int"):
        RuntimeOptions(inline_steps=1)
