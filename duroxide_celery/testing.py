"""Test your orchestrations in process, with no broker, no worker and no database: `WorkflowHarness`.

The harness drives the same replay engine the workers run, in the calling thread. Activities are called inline,
so they see what the test sees (a Django `TestCase`'s uncommitted rows included); durable timers wait on a virtual
clock that the test moves (`advance`) or that `run`/`wait_for_orchestration` skip forward, so a workflow that
sleeps for three days finishes at once. Its calls mirror the Client's:

    from duroxide_celery.testing import WorkflowHarness

    harness = WorkflowHarness(runtime)             # the runtime's registrations (or register_* on the harness)
    result = harness.run("Checkout", {"order": 1})  # start, run to the end, skipping timers
    assert result.status == "Completed"

    harness.start_orchestration("a-1", "Approval", 7)   # runs until it waits for an event or a timer
    harness.raise_event("a-1", "Approved", True)
    assert harness.get_status("a-1").output == "approved"

Differences from a deployment, on purpose: nothing is persisted, activities run once each (no leases, retries of
the broker or crashes), activity tags and sessions are ignored, and a missing orchestration or activity raises
LookupError at once instead of backing off.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .activity_context import ActivityContext
from .registry import DEFAULT_VERSION, Registry
from .replay import events as ev
from .replay.commands import (
    CancelActivity,
    CancelInstance,
    CancelTimer,
    NotifyParent,
    ScheduleActivity,
    ScheduleTimer,
    StartOrchestration,
    TurnInput,
)
from .replay.engine import run_turn
from .replay.events import HistoryEvent, dumps, error_details, loads
from .tasks.failures import describe
from .types import TERMINAL_STATUSES, OrchestrationResult

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["WorkflowHarness"]


@dataclass
class _Instance:
    """One instance's state: what the store keeps in a deployment."""

    instance_id: str
    execution_id: int = 1
    status: str = "Pending"
    name: str = ""
    version: str | None = None
    output: str | None = None
    error: str | None = None
    custom_status: str | None = None
    custom_status_version: int = 0
    histories: dict[int, list[HistoryEvent]] = field(default_factory=dict)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    kv: dict[str, tuple[str, int]] = field(default_factory=dict)


class WorkflowHarness:
    """Runs orchestrations in this thread on the replay engine, with inline activities and a virtual clock."""

    def __init__(self, runtime: Runtime | None = None, *, start_ms: int | None = None, max_turns: int = 100_000):
        self._runtime = runtime
        self._own = Registry()
        self._instances: dict[str, _Instance] = {}
        self._timers: list[tuple[int, str, int, int]] = []  # (fire_at_ms, instance id, execution id, event id)
        self._max_turns = max_turns
        #: The virtual clock (epoch ms): orchestrations read it, timers fire by it; only the harness moves it.
        self.now_ms = int(time.time() * 1000) if start_ms is None else int(start_ms)

    # -- registration (besides the runtime's) -------------------------------------------------------------------
    def register_activity(self, name: str, fn: Callable[..., Any]) -> None:
        self._own.register_activity(name, fn)

    def register_orchestration(self, name: str, fn: Callable[..., Any], version: str = DEFAULT_VERSION) -> None:
        self._own.register_orchestration_versioned(name, version, fn)

    def _resolve(self, name: str, version: str | None) -> tuple[str, Callable[..., Any]] | None:
        """The harness's own registration first, then the runtime's."""
        found = self._own.resolve_orchestration(name, version)
        if found is None and self._runtime is not None:
            found = self._runtime.resolve_orchestration(name, version)
        return found

    def _activity(self, name: str) -> Callable[..., Any]:
        fn = self._own.activities.get(name)
        if fn is None and self._runtime is not None:
            fn = self._runtime.activities.get(name)
        if fn is None:
            raise LookupError(f"activity {name!r} is not registered with this harness or its runtime")
        return fn

    # -- the Client's calls -------------------------------------------------------------------------------------
    def start_orchestration(
        self, instance_id: str, orchestration_name: str, input: Any = None, *, key: str | None = None
    ) -> None:
        """Start an instance and run it until it waits for an event or a timer (or ends). `key` is accepted, as
        the Client's, and not used: the harness applies no flow-control limits."""
        self._start(instance_id, orchestration_name, input, None)

    def start_orchestration_versioned(
        self, instance_id: str, orchestration_name: str, input: Any, version: str, *, key: str | None = None
    ) -> None:
        self._start(instance_id, orchestration_name, input, version)

    def raise_event(self, instance_id: str, event_name: str, data: Any = None) -> None:
        self._deliver(instance_id, {"kind": ev.MSG_EXTERNAL_RAISED, "name": event_name, "data": dumps(data)})

    def enqueue_event(self, instance_id: str, queue_name: str, data: Any = None) -> None:
        self._deliver(instance_id, {"kind": ev.MSG_QUEUE_MESSAGE, "name": queue_name, "data": dumps(data)})

    def cancel_instance(self, instance_id: str, reason: str | None = None) -> None:
        self._deliver(instance_id, {"kind": ev.MSG_CANCEL, "reason": "" if reason is None else str(reason)})

    def get_status(self, instance_id: str) -> OrchestrationResult:
        inst = self._instances.get(instance_id)
        if inst is None:
            return OrchestrationResult(status="NotFound")
        return OrchestrationResult(
            status="Running" if inst.status == "Pending" else inst.status,
            output=loads(inst.output) if inst.status == "Completed" else None,
            error=inst.error,
            custom_status=inst.custom_status,
            custom_status_version=inst.custom_status_version,
        )

    def wait_for_orchestration(self, instance_id: str, timeout_ms: int | None = None) -> OrchestrationResult:
        """Skip the virtual clock forward, timer by timer, until the instance ends (at most `timeout_ms` of virtual
        time, if given); raises RuntimeError if it waits for an event no timer will ever end."""
        self._require(instance_id)
        deadline = None if timeout_ms is None else self.now_ms + int(timeout_ms)
        while self._instances[instance_id].status not in TERMINAL_STATUSES:
            due = self._next_timer()
            if due is None or (deadline is not None and due > deadline):
                if deadline is not None and due is not None:
                    self.now_ms = deadline
                    raise TimeoutError(f"instance {instance_id} did not finish within {timeout_ms} ms of virtual time")
                raise RuntimeError(
                    f"instance {instance_id} waits for an event or message and has no timer to skip to: "
                    "raise_event/enqueue_event first"
                )
            self.advance(due - self.now_ms)
        return self.get_status(instance_id)

    def run(self, orchestration_name: str, input: Any = None, *, instance_id: str | None = None) -> OrchestrationResult:
        """Start an instance and run it to its end, skipping timers; returns its final status."""
        instance_id = instance_id or f"test-{uuid.uuid4().hex[:12]}"
        self.start_orchestration(instance_id, orchestration_name, input)
        return self.wait_for_orchestration(instance_id)

    def read_execution_history(self, instance_id: str, execution_id: int | None = None) -> list[HistoryEvent]:
        inst = self._require(instance_id)
        return list(inst.histories.get(execution_id or inst.execution_id, []))

    def kinds(self, instance_id: str, execution_id: int | None = None) -> list[str]:
        """The event kinds of an execution's history, in order (handy in assertions)."""
        return [e.kind for e in self.read_execution_history(instance_id, execution_id)]

    def get_kv_value(self, instance_id: str, key: str) -> str | None:
        entry = self._require(instance_id).kv.get(key)
        return entry[0] if entry is not None else None

    # -- the virtual clock --------------------------------------------------------------------------------------
    def advance(self, ms: int) -> int:
        """Move the virtual clock forward by `ms`, firing every timer that falls due on the way (in order) and
        running what they wake; returns how many timers fired."""
        if ms < 0:
            raise ValueError("the virtual clock only moves forward")
        target = self.now_ms + int(ms)
        fired = 0
        while True:
            due = self._next_timer()
            if due is None or due > target:
                break
            self.now_ms = max(self.now_ms, due)
            batch = [t for t in self._timers if t[0] <= self.now_ms]
            self._timers = [t for t in self._timers if t[0] > self.now_ms]
            for fire_at, instance_id, execution_id, event_id in sorted(batch):
                self._instances[instance_id].inbox.append(
                    {
                        "kind": ev.MSG_TIMER_FIRED,
                        "execution_id": execution_id,
                        "event_id": event_id,
                        "fire_at_ms": fire_at,
                    }
                )
                fired += 1
            self._settle()
        self.now_ms = target
        return fired

    def _next_timer(self) -> int | None:
        return min((t[0] for t in self._timers), default=None)

    # -- running ------------------------------------------------------------------------------------------------
    def _require(self, instance_id: str) -> _Instance:
        inst = self._instances.get(instance_id)
        if inst is None:
            raise LookupError(f"no instance {instance_id!r} in this harness")
        return inst

    def _start(self, instance_id: str, name: str, input: Any, version: str | None, **parent: Any) -> None:
        if instance_id in self._instances:
            return  # the first start wins, as with the Client
        message: dict[str, Any] = {"kind": ev.MSG_START, "name": name, "input": dumps(input)}
        if version is not None:
            message["version"] = version
        message.update({k: v for k, v in parent.items() if v is not None})
        self._instances[instance_id] = _Instance(instance_id, name=name, version=version, inbox=[message])
        self._settle()

    def _deliver(self, instance_id: str, message: dict[str, Any]) -> None:
        inst = self._instances.get(instance_id)
        if inst is None or inst.status in TERMINAL_STATUSES:
            return  # dropped, as the Client drops signals to unknown or finished instances
        inst.inbox.append(message)
        self._settle()

    def _settle(self) -> None:
        """Run turns until no instance has messages waiting (activities answer inline, within this)."""
        for _ in range(self._max_turns):
            ready = [inst for inst in self._instances.values() if inst.inbox]
            if not ready:
                return
            for inst in ready:
                self._turn(inst)
        raise RuntimeError(f"more than {self._max_turns} turns without settling: an endless loop of messages?")

    def _turn(self, inst: _Instance) -> None:
        messages, inst.inbox = inst.inbox, []
        if inst.status in TERMINAL_STATUSES:
            return
        history = inst.histories.setdefault(inst.execution_id, [])
        result = run_turn(
            TurnInput(
                instance_id=inst.instance_id,
                execution_id=inst.execution_id,
                history=list(history),
                messages=messages,
                now_ms=self.now_ms,
                new_guid=lambda: str(uuid.uuid4()),
                clock=lambda: self.now_ms,
                kv_snapshot=dict(inst.kv),
                kv_reader=self._read_kv,
            ),
            self._resolve,
        )
        if result.unregistered is not None:
            name, version = result.unregistered
            raise LookupError(f"orchestration {name!r} {version or '(latest)'} is not registered with this harness")
        history.extend(result.new_events)
        inst.kv = dict(result.kv_state)
        inst.name = result.orchestration_name or inst.name
        inst.version = result.orchestration_version or inst.version
        if result.custom_status_changed:
            inst.custom_status = result.custom_status
            inst.custom_status_version += 1
        for command in result.outgoing:
            self._apply(inst, command)
        if result.status == "Running":
            inst.status = "Running"
        elif result.status in TERMINAL_STATUSES:
            inst.status = result.status
            inst.output = result.output
            inst.error = None if result.error is None else str(result.error.get("message", result.error))
        elif result.status == "ContinuedAsNew":
            assert result.continue_as_new is not None
            inst.execution_id += 1
            inst.status = "Running"
            inst.inbox.append({"kind": ev.MSG_CONTINUE_AS_NEW, **result.continue_as_new})

    def _read_kv(self, instance_id: str, key: str) -> str | None:
        inst = self._instances.get(instance_id)
        entry = inst.kv.get(key) if inst is not None else None
        return entry[0] if entry is not None else None

    def _apply(self, inst: _Instance, command: Any) -> None:
        if isinstance(command, ScheduleActivity):
            inst.inbox.append(self._call_activity(inst, command))
        elif isinstance(command, ScheduleTimer):
            self._timers.append((command.fire_at_ms, inst.instance_id, inst.execution_id, command.event_id))
        elif isinstance(command, CancelTimer):
            self._timers = [
                t for t in self._timers if (t[1], t[2], t[3]) != (inst.instance_id, inst.execution_id, command.event_id)
            ]
        elif isinstance(command, StartOrchestration):
            self._instances.setdefault(
                command.instance_id, _Instance(command.instance_id, name=command.name)
            ).inbox.append(
                {
                    "kind": ev.MSG_START,
                    "name": command.name,
                    "input": command.input,
                    **({"version": command.version} if command.version else {}),
                    **{
                        key: value
                        for key, value in (
                            ("parent_instance_id", command.parent_instance_id),
                            ("parent_execution_id", command.parent_execution_id),
                            ("parent_event_id", command.parent_event_id),
                        )
                        if value is not None
                    },
                }
            )
        elif isinstance(command, CancelInstance):
            target = self._instances.get(command.instance_id)
            if target is not None and target.status not in TERMINAL_STATUSES:
                target.inbox.append({"kind": ev.MSG_CANCEL, "reason": command.reason})
        elif isinstance(command, NotifyParent):
            parent = self._instances.get(command.parent_instance_id)
            if parent is not None and parent.status not in TERMINAL_STATUSES:
                message: dict[str, Any] = {
                    "kind": command.kind,
                    "execution_id": command.parent_execution_id,
                    "event_id": command.parent_event_id,
                }
                if command.result is not None:
                    message["result"] = command.result
                if command.details is not None:
                    message["details"] = command.details
                parent.inbox.append(message)
        elif isinstance(command, CancelActivity):
            pass  # activities ran inline already: nothing is in flight to cancel

    def _call_activity(self, inst: _Instance, command: ScheduleActivity) -> dict[str, Any]:
        """Run the activity now, in this thread; its outcome is the message a worker would send."""
        fn = self._activity(command.name)
        ctx = ActivityContext(
            instance_id=inst.instance_id,
            execution_id=inst.execution_id,
            orchestration_name=inst.name,
            orchestration_version=inst.version or "",
            activity_name=command.name,
            worker_id="workflow-harness",
            session_id=command.session_id,
            _tag=command.tag,
        )
        where = {"execution_id": inst.execution_id, "event_id": command.event_id}
        try:
            value = fn(ctx, loads(command.input))
            return {"kind": ev.MSG_ACTIVITY_COMPLETED, **where, "result": dumps(value)}
        except Exception as exc:  # noqa: BLE001 - the activity's failure is the orchestration's to handle
            message = f"Activity '{command.name}' call failed: {describe(exc)}"
            return {
                "kind": ev.MSG_ACTIVITY_FAILED,
                **where,
                "details": error_details(ev.APPLICATION, message, "ActivityFailed"),
            }
