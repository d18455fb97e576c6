"""A tiny in-memory driver for the pure replay engine, for unit tests.

`Sim` plays the part of the store: it keeps one instance's history and inbox, runs `run_turn` with a fixed clock and
a deterministic guid source, appends the new events to history and remembers the outgoing work. Helper methods
build inbox messages in the shapes `replay/ingest.py` reads (completions carry the execution id and the event id of
their schedule event; results and event data are JSON text; failure details come from `events.error_details`).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from duroxide_celery.replay import events as ev
from duroxide_celery.replay.commands import TurnInput, TurnResult
from duroxide_celery.replay.engine import ReplayEngine, run_turn
from duroxide_celery.replay.events import HistoryEvent, dumps, error_details

NOW_MS = 1_700_000_000_000
#: Every simulated turn is also computed by resuming the previous turn's engine, and the two must agree.
RESUME_CHECK = True

Handler = Callable[..., Any]


def make_resolver(registry: dict[str, Handler] | Callable[..., Any]) -> Callable[[str, str | None], Any]:
    """A resolver over {name: handler} or {name@version: handler}; plain names register as 1.0.0."""
    if callable(registry):
        return registry  # already a resolver

    def resolve(name: str, version: str | None) -> tuple[str, Handler] | None:
        if version is not None and f"{name}@{version}" in registry:
            return version, registry[f"{name}@{version}"]
        if name in registry and version in (None, "1.0.0"):
            return "1.0.0", registry[name]
        if version is None:
            versions = sorted(k.split("@", 1)[1] for k in registry if k.startswith(name + "@"))
            if versions:
                return versions[-1], registry[f"{name}@{versions[-1]}"]
        return None

    return resolve


def guid_source(execution_id: int, seed: int) -> Callable[[], str]:
    """Deterministic 36-char guids; a turn re-run from the same history length gets the same sequence."""
    counter = itertools.count(1)
    return lambda: f"00000000-0000-4000-8{execution_id % 1000:03d}-{seed % 10**6:06d}{next(counter):06d}"


class Sim:
    """One instance, one execution at a time. `turn()` consumes the inbox; `next_execution()` follows a CAN."""

    def __init__(
        self,
        registry: dict[str, Handler] | Callable[..., Any],
        instance_id: str = "inst",
        execution_id: int = 1,
        now_ms: int = NOW_MS,
    ):
        self.resolve = make_resolver(registry)
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.now_ms = now_ms
        self.history: list[HistoryEvent] = []
        self.inbox: list[dict[str, Any]] = []
        self.kv_snapshot: dict[str, tuple[str, int]] = {}
        self.kv_store: dict[str, dict[str, str]] = {}  # other instances' KV, for get_kv_value_from_instance
        self.results: list[TurnResult] = []
        self.turn_messages: list[list[dict[str, Any]]] = []  # the inbox batch of each turn
        self.turn_starts: list[int] = []  # len(history) before each turn
        self.turn_clocks: list[int] = []  # now_ms of each turn

    # -- running ------------------------------------------------------------------------------------------------
    def turn_input(self, history: list[HistoryEvent], messages: list[dict[str, Any]], now_ms: int) -> TurnInput:
        return TurnInput(
            instance_id=self.instance_id,
            execution_id=self.execution_id,
            history=copy.deepcopy(history),
            messages=copy.deepcopy(messages),
            now_ms=now_ms,
            new_guid=guid_source(self.execution_id, len(history)),
            kv_snapshot=dict(self.kv_snapshot),
            kv_reader=lambda inst, key: self.kv_store.get(inst, {}).get(key),
        )

    def turn(self, advance_ms: int = 1000) -> TurnResult:
        """Run one turn over the whole inbox; commit its new events. The clock advances after each turn."""
        messages, self.inbox = self.inbox, []
        self.turn_starts.append(len(self.history))
        self.turn_messages.append(messages)
        self.turn_clocks.append(self.now_ms)
        result = run_turn(self.turn_input(self.history, messages, self.now_ms), self.resolve)
        if RESUME_CHECK:
            self._check_resume(messages, result)
        self._check_ids(result)
        self.history.extend(result.new_events)
        self.results.append(result)
        self.now_ms += advance_ms
        return result

    def _check_resume(self, messages: list[dict[str, Any]], fresh: TurnResult) -> None:
        """Compute the same turn a second way, by resuming the engine kept from the previous turn (as workers
        do for hot instances), and require exactly the full replay's result."""
        engine = getattr(self, "_engine", None)
        inp = self.turn_input(self.history, messages, self.now_ms)
        if engine is not None and engine.resumable and engine.resolve is self.resolve:  # new code: new process
            resumed = engine.resume(inp)
        else:
            engine = ReplayEngine(inp, self.resolve)
            resumed = engine.run()
        assert result_summary(resumed) == result_summary(fresh), "resumed turn differs from a full replay"
        self._engine = engine if resumed.status == "Running" else None

    def _check_ids(self, result: TurnResult) -> None:
        expected = len(self.history) + 1
        for e in result.new_events:
            assert e.event_id == expected, f"event ids must be dense: got {e.event_id}, expected {expected}"
            expected += 1

    def replay(self, messages: Iterable[dict[str, Any]] = (), history: list[HistoryEvent] | None = None) -> TurnResult:
        """Run a turn over the committed history without committing anything (a re-run, a crash recovery)."""
        hist = self.history if history is None else history
        return run_turn(self.turn_input(hist, list(messages), self.now_ms), self.resolve)

    def rerun_last_turn(self) -> TurnResult:
        """Re-run the last turn from the history it started with and the messages it consumed, at its clock."""
        inp = self.turn_input(self.history[: self.turn_starts[-1]], self.turn_messages[-1], self.turn_clocks[-1])
        return run_turn(inp, self.resolve)

    @property
    def last(self) -> TurnResult:
        return self.results[-1]

    def next_execution(self) -> Sim:
        """Follow a ContinuedAsNew: a new Sim for execution_id + 1 whose inbox holds the ContinueAsNew message."""
        can = self.last.continue_as_new
        assert can is not None, "the last turn did not continue as new"
        nxt = Sim(self.resolve, self.instance_id, self.execution_id + 1, self.now_ms)
        nxt.kv_snapshot = dict(self.last.kv_state)
        nxt.kv_store = self.kv_store
        nxt.inbox.append({"kind": ev.MSG_CONTINUE_AS_NEW, **can})
        return nxt

    # -- inbox messages -----------------------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> Sim:
        self.inbox.append(msg)
        return self

    def start(self, name: str, input: Any = None, version: str | None = None, **parent: Any) -> Sim:
        msg: dict[str, Any] = {"kind": ev.MSG_START, "name": name, "input": dumps(input)}
        if version is not None:
            msg["version"] = version
        msg.update(parent)  # parent_instance_id, parent_execution_id, parent_event_id
        return self.send(msg)

    def complete(self, event_id: int, result: Any = None, execution_id: int | None = None) -> Sim:
        return self.send(
            {
                "kind": ev.MSG_ACTIVITY_COMPLETED,
                "execution_id": self.execution_id if execution_id is None else execution_id,
                "event_id": event_id,
                "result": dumps(result),
            }
        )

    def fail(self, event_id: int, message: str, category: str = ev.APPLICATION, execution_id: int | None = None) -> Sim:
        return self.send(
            {
                "kind": ev.MSG_ACTIVITY_FAILED,
                "execution_id": self.execution_id if execution_id is None else execution_id,
                "event_id": event_id,
                "details": error_details(category, message, "ActivityFailed"),
            }
        )

    def fire(self, event_id: int, execution_id: int | None = None) -> Sim:
        fire_at = self.event(event_id).data.get("fire_at_ms") if event_id <= len(self.history) else None
        return self.send(
            {
                "kind": ev.MSG_TIMER_FIRED,
                "execution_id": self.execution_id if execution_id is None else execution_id,
                "event_id": event_id,
                "fire_at_ms": fire_at,
            }
        )

    def raise_event(self, name: str, data: Any = None) -> Sim:
        return self.send({"kind": ev.MSG_EXTERNAL_RAISED, "name": name, "data": dumps(data)})

    def enqueue(self, queue: str, data: Any = None) -> Sim:
        return self.send({"kind": ev.MSG_QUEUE_MESSAGE, "name": queue, "data": dumps(data)})

    def sub_completed(self, event_id: int, result: Any = None, execution_id: int | None = None) -> Sim:
        return self.send(
            {
                "kind": ev.MSG_SUB_COMPLETED,
                "execution_id": self.execution_id if execution_id is None else execution_id,
                "event_id": event_id,
                "result": dumps(result),
            }
        )

    def sub_failed(
        self, event_id: int, message: str, category: str = ev.APPLICATION, execution_id: int | None = None
    ) -> Sim:
        return self.send(
            {
                "kind": ev.MSG_SUB_FAILED,
                "execution_id": self.execution_id if execution_id is None else execution_id,
                "event_id": event_id,
                "details": error_details(category, message, "OrchestrationFailed"),
            }
        )

    def cancel(self, reason: str | None = "") -> Sim:
        return self.send({"kind": ev.MSG_CANCEL, "reason": reason})

    # -- history queries ----------------------------------------------------------------------------------------
    def event(self, event_id: int) -> HistoryEvent:
        return self.history[event_id - 1]

    def kinds(self, events: Iterable[HistoryEvent] | None = None) -> list[str]:
        return [e.kind for e in (self.history if events is None else events)]

    def ids(self, kind: str, **data: Any) -> list[int]:
        """Event ids of history events of `kind` whose data matches the given fields."""
        return [e.event_id for e in self.history if e.kind == kind and all(e.data.get(k) == v for k, v in data.items())]

    def scheduled(self, name: str | None = None) -> list[int]:
        """Event ids of ActivityScheduled (optionally by name), in order."""
        return self.ids(ev.ACTIVITY_SCHEDULED, **({"name": name} if name else {}))

    def timers(self) -> list[int]:
        return self.ids(ev.TIMER_CREATED)

    def subs(self) -> list[int]:
        return self.ids(ev.SUB_ORCHESTRATION_SCHEDULED)

    def open_activities(self) -> list[int]:
        closed = {e.source_event_id for e in self.history if e.source_event_id is not None}
        return [i for i in self.scheduled() if i not in closed]


def outgoing_of(result: TurnResult, cls: type) -> list[Any]:
    return [o for o in result.outgoing if isinstance(o, cls)]


def error_message(result: TurnResult) -> str:
    assert result.error is not None, f"expected a failure, got status {result.status}"
    return result.error["message"]


def output_of(result: TurnResult) -> Any:
    return ev.loads(result.output)


def result_summary(result: TurnResult) -> dict[str, Any]:
    """The parts of a TurnResult that must be identical when the same turn is computed twice."""
    return {
        "status": result.status,
        "new_events": [e.to_json() for e in result.new_events],
        "outgoing": [(type(o).__name__, vars(o)) for o in result.outgoing],
        "output": result.output,
        "error": result.error,
        "custom_status": result.custom_status,
        "custom_status_changed": result.custom_status_changed,
        "kv_ops": result.kv_ops,
        "kv_state": result.kv_state,
        "continue_as_new": result.continue_as_new,
        "parent": result.parent,
        "dropped_messages": result.dropped_messages,
    }


def assert_replay_stable(sim: Sim) -> None:
    """Every turn, re-run from the history it started with and the messages it consumed, decides exactly the same
    thing; and re-running over the full committed history with no new messages adds nothing."""
    for i, (start, messages, clock) in enumerate(zip(sim.turn_starts, sim.turn_messages, sim.turn_clocks)):
        again = run_turn(sim.turn_input(sim.history[:start], messages, clock), sim.resolve)
        assert result_summary(again) == result_summary(sim.results[i]), f"turn {i} is not reproducible"
    final = sim.replay()
    if sim.last.status == "Running":
        assert final.status == "Running"
        assert final.new_events == [], [e.to_json() for e in final.new_events]
        assert final.outgoing == [], final.outgoing
        assert final.custom_status_changed is False
        assert final.kv_ops == []
    elif sim.last.status in ("Completed", "Failed", "ContinuedAsNew"):
        assert final.status == "Idle"
        assert final.new_events == [] and final.outgoing == []


class ActivityError(Exception):
    """Raise from a simulated activity or child to make `Sim.drive` report an application failure."""


def drive(
    sim: Sim,
    activities: dict[str, Callable[[Any], Any]] | None = None,
    children: dict[str, Callable[[Any], Any]] | None = None,
    fire_timers: bool = True,
    max_turns: int = 100,
) -> TurnResult:
    """Turn until the instance stops asking for work it can get: outgoing activities are answered by
    `activities[name](input)` (an exception becomes an Application failure with its text), timers fire,
    children (StartOrchestration with a parent) are answered by `children[name](input)`."""
    activities = activities or {}
    children = children or {}
    result = sim.turn()
    for _ in range(max_turns):
        if result.status != "Running":
            return result
        for out in result.outgoing:
            kind = type(out).__name__
            if kind == "ScheduleActivity" and out.name in activities:
                try:
                    sim.complete(out.event_id, activities[out.name](ev.loads(out.input)))
                except ActivityError as exc:
                    sim.fail(out.event_id, str(exc))
            elif kind == "ScheduleTimer" and fire_timers:
                sim.fire(out.event_id)
            elif kind == "StartOrchestration" and out.parent_instance_id and out.name in children:
                try:
                    sim.sub_completed(out.parent_event_id, children[out.name](ev.loads(out.input)))
                except ActivityError as exc:
                    sim.sub_failed(out.parent_event_id, str(exc))
        if not sim.inbox:
            return result
        result = sim.turn()
    raise AssertionError(f"still running after {max_turns} turns")
