"""The replay driver: one orchestration turn, computed from history plus new inbox messages. No I/O.

How a turn works. New inbox messages are first turned into history events (replay/ingest.py: stale executions,
duplicates and completions of cancelled work are dropped). Then the generator is run from the start. Every event
the code *produces* (schedules, cancel breadcrumbs, custom status, KV) is matched in order against the events of
that kind already in history; a difference is nondeterminism. Every event that *arrives* (completions, raised
events, cancel requests) is fed to the code in history order, one at a time, and only when the code is blocked
on something unresolved. Feeding arrivals lazily, in order, is what makes race winners, positional events and
queue delivery replay exactly as they first ran.

Alternatives considered: (a) deciding winners by comparing completion event ids after the fact: a queue message
matched by a race loser then needs un-consuming; (b) Temporal-style command/event state machines per task:
more machinery than a generator API that awaits one thing at a time needs.
"""

from __future__ import annotations

import hashlib
import inspect
import traceback
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from . import events as ev
from .commands import (
    DEFAULT_ACTIVITY_QUEUE_ASSUMED,
    CancelActivity,
    CancelInstance,
    CancelTimer,
    Command,
    NotifyParent,
    ScheduleActivity,
    ScheduleTimer,
    StartOrchestration,
    TurnInput,
    TurnResult,
)
from .context import OrchestrationContext
from .events import HistoryEvent, dumps, error_details, loads
from .futures import AllWaiter, Future, RaceWaiter, SingleWaiter, Waiter
from .ingest import InboxFilter, start_message, started_event_data
from .limits import (
    MAX_CARRY_FORWARD,
    MAX_CUSTOM_STATUS_BYTES,
    MAX_DELAY_MS,
    MAX_INSTANCE_ID_CHARS,
    MAX_KV_KEYS,
    MAX_KV_VALUE_BYTES,
    MAX_QUEUE_NAME_BYTES,
)
from .retry import ActivityTimeout, retry_loop
from .rewind import effective_history
from .yieldables import (
    SINGLE_TASKS,
    ActivityTask,
    AllTask,
    ContinueAsNewTask,
    DequeueTask,
    DetachedStartTask,
    NewGuidTask,
    RaceTask,
    SubOrchestrationTask,
    Task,
    TimerTask,
    TryDequeueTask,
    UtcNowTask,
    WaitEventTask,
)

Handler = Callable[[OrchestrationContext, Any], Any]
#: resolve(name, version or None) -> (version, handler), or None when this worker does not have it.
Resolver = Callable[[str, "str | None"], "tuple[str, Handler] | None"]


class Nondeterminism(BaseException):
    """The code no longer produces what history recorded."""


class _Terminate(BaseException):
    """Internal: end the turn with a terminal event."""

    def __init__(self, kind: str, data: dict[str, Any]):
        super().__init__(kind)
        self.kind, self.data = kind, data


def run_turn(inp: TurnInput, resolve: Resolver) -> TurnResult:
    """Compute one turn of an instance. Pure: the same input always gives the same result."""
    return ReplayEngine(inp, resolve).run()


class ReplayEngine:
    """Replays one instance's history through its orchestration code and computes the turn; implements the
    ContextHost protocol (replay/host.py) that the OrchestrationContext calls."""

    def __init__(self, inp: TurnInput, resolve: Resolver) -> None:
        self.inp = inp
        self.resolve = resolve
        self.instance_id = inp.instance_id
        self.execution_id = inp.execution_id
        self.orchestration_name = ""
        self.orchestration_version = ""
        # Events set aside by Client.rewind are replaced by inert placeholders (replay/rewind.py).
        self.history: list[HistoryEvent] = effective_history(inp.history)
        self.old_count = len(self.history)
        self.new_events: list[HistoryEvent] = []
        self.outgoing: list[Command] = []
        self.replaying = True
        self.custom_status: str | None = None
        self.kv: dict[str, tuple[str, int]] = dict(inp.kv_snapshot)
        self.kv_ops: list[tuple[Any, ...]] = []
        self.custom_status_changed = False
        self._seq = 0
        self._futures: dict[int, Future] = {}
        self._waits: dict[str, deque[Future]] = {}
        self._dequeues: dict[str, deque[Future]] = {}
        # Queue messages delivered with no dequeue waiting, as JSON text (None: a message without data).
        self._queue_buffer: dict[str, deque[str | None]] = {}
        self._taken_early: set[int] = set()  # QueueEventDelivered ids handed out by try_dequeue before their turn
        self._cancel_reason: str | None = None
        self._waiter: Waiter | None = None
        # Nondeterminism is latched: the first mismatch is kept and re-raised at the code's next step, so a bare
        # `except:` around a fire-and-forget call (set_custom_status, KV) cannot let changed code replay on.
        self._nondeterminism: Nondeterminism | None = None
        # A fire-and-forget call that must fail the instance (the custom status limit) is latched the same way:
        # the instance fails even when the code swallowed the exception.
        self._fatal: _Terminate | None = None
        # Built from history at the first ingestion, then kept current by _new_event.
        self._inbox: InboxFilter | None = None
        self._stack: list[Generator[Any, Any, Any]] = []
        self._produced: Any = None
        self._started: HistoryEvent | None = None
        #: True when the last turn ended blocked (Running): `resume()` may continue it with new messages.
        self.resumable = False

    # -- entry ------------------------------------------------------------------------------------------------
    def run(self) -> TurnResult:
        started = self.history[0] if self.history else None
        messages = list(self.inp.messages)
        if started is None:
            start_msg = start_message(messages)
            if start_msg is None:
                return TurnResult(status="Idle", dropped_messages=len(messages))
            resolved = self.resolve(start_msg["name"], start_msg.get("version"))
            if resolved is None:
                return TurnResult(status="Unregistered", unregistered=(start_msg["name"], start_msg.get("version")))
            version, handler = resolved
            data = started_event_data(start_msg, start_msg["name"], version)
            started = self._new_event(ev.ORCHESTRATION_STARTED, data)
            self.replaying = False
            messages.remove(start_msg)
        else:
            if any(e.kind in ev.TERMINAL_KINDS for e in self.history):
                return TurnResult(status="Idle", dropped_messages=len(messages))
            name, version = started.data["name"], started.data["version"]
            resolved = self.resolve(name, version)
            if resolved is None:
                return TurnResult(status="Unregistered", unregistered=(name, version))
            _, handler = resolved
        self.orchestration_name = started.data["name"]
        self.orchestration_version = started.data["version"]
        self.custom_status = started.data.get("initial_custom_status")
        for name, data in started.data.get("carry_forward_events") or []:
            self._queue_buffer.setdefault(name, deque()).append(data)
        dropped = self._ingest(messages)
        result = self._execute(handler, started)
        result.dropped_messages = dropped
        return result

    # -- messages -> arrival events ---------------------------------------------------------------------------
    def _ingest(self, messages: list[dict[str, Any]]) -> int:
        if self._inbox is None:
            self._inbox = InboxFilter(self.history)
        return self._inbox.ingest(messages, self.execution_id, self._new_event)

    # -- running the code -------------------------------------------------------------------------------------
    def _execute(self, handler: Handler, started: HistoryEvent) -> TurnResult:
        syscall_ids = {
            e.event_id
            for e in self.history
            if e.kind == ev.ACTIVITY_SCHEDULED and e.data.get("name", "").startswith(ev.SYSCALL_PREFIX)
        }
        self._actions = [e for e in self.history[: self.old_count] if e.kind in ev.ACTION_KINDS]
        self._action_pos = 0
        self._inputs = [e for e in self.history if e.kind in ev.INPUT_KINDS and e.source_event_id not in syscall_ids]
        self._input_pos = 0
        self._completions = {e.source_event_id: e for e in self.history if e.source_event_id in syscall_ids}
        ctx = OrchestrationContext(self)
        self._started = started
        return self._settle(lambda: self._drive(handler, ctx, loads(started.data.get("input"))))

    def _settle(self, step: Callable[[], None]) -> TurnResult:
        """Run `step` (which ends by raising) and turn its ending into the turn's result."""
        started = self._started
        assert started is not None
        self.resumable = False
        try:
            step()
        except _Terminate as term:
            return self._finish(term.kind, term.data, started)
        except _Blocked:
            self.resumable = True
            return self._finish(None, {}, started)
        except Nondeterminism as exc:
            return self._finish(
                ev.ORCHESTRATION_FAILED,
                {"details": error_details(ev.CONFIGURATION, f"nondeterministic: {exc}", "Nondeterminism")},
                started,
            )
        return self._finish(None, {}, started)

    def resume(self, inp: TurnInput) -> TurnResult:
        """Continue a blocked engine with a new turn's messages, without replaying its history.

        Only valid when `inp.history` is exactly the history this engine ended its last turn with (the caller
        checks the stored length); the result is what a full replay would compute, at the cost of the new
        messages alone. Used by workers to keep hot instances in memory (like Temporal's sticky cache)."""
        assert self.resumable and len(inp.history) == len(self.history)
        self.inp = inp
        self.old_count = len(self.history)
        self.new_events, self.outgoing, self.kv_ops = [], [], []
        self.custom_status_changed = False
        self.replaying = False
        dropped = self._ingest(list(inp.messages))
        self._inputs.extend(e for e in self.new_events if e.kind in ev.INPUT_KINDS)
        result = self._settle(lambda: self._loop(*self._block()))
        result.dropped_messages = dropped
        return result

    def _raise_latched(self) -> None:
        if self._nondeterminism is not None:
            raise self._nondeterminism
        if self._fatal is not None:
            for gen in reversed(self._stack):
                self._close(gen)
            raise self._fatal

    def _drive(self, handler: Handler, ctx: OrchestrationContext, input_value: Any) -> None:
        try:
            produced = handler(ctx, input_value)
        except Exception as exc:
            self._raise_latched()
            raise _Terminate(ev.ORCHESTRATION_FAILED, {"details": _app_failure(exc)}) from None
        self._raise_latched()
        if not inspect.isgenerator(produced):
            self._complete(produced)
        self._produced = produced
        self._stack = [produced]
        self._loop("send", None)

    def _loop(self, mode: str, payload: Any) -> None:
        """Run the code until it ends (raises _Terminate) or blocks (raises _Blocked); state lives on self, so a
        blocked engine can be resumed in a later turn."""
        stack: list[Generator[Any, Any, Any]] = self._stack
        produced = self._produced
        while True:
            gen = stack[-1]
            try:
                if mode == "send":
                    yielded = gen.send(payload)
                else:
                    yielded = gen.throw(payload if isinstance(payload, BaseException) else _TaskError(payload))
            except StopIteration as stop:
                self._raise_latched()
                stack.pop()
                if not stack:
                    self._complete(stop.value)
                mode, payload = "send", stop.value
                continue
            except (_Terminate, Nondeterminism):
                raise
            except Exception as exc:
                self._raise_latched()
                stack.pop()
                if not stack:
                    self._close(produced)
                    raise _Terminate(ev.ORCHESTRATION_FAILED, {"details": _app_failure(exc)}) from None
                mode, payload = "throw", exc
                continue
            self._raise_latched()
            if isinstance(yielded, ContinueAsNewTask):
                waiting = len(self._unconsumed_queue_messages())
                if waiting > MAX_CARRY_FORWARD:
                    # duroxide keeps the first N and drops the rest with a log line; we never drop silently.
                    mode, payload = (
                        "throw",
                        ValueError(
                            f"continue_as_new would carry {waiting} undelivered queue messages; the limit is "
                            f"{MAX_CARRY_FORWARD}: dequeue some before continuing as new"
                        ),
                    )
                    continue
                self._close(produced)
                self._check_history_consumed()
                self._raise_if_cancel_pending()
                raise _Terminate(
                    ev.ORCHESTRATION_CONTINUED_AS_NEW, {"input": yielded.input, "_version": yielded.version}
                )
            if isinstance(yielded, ActivityTask) and yielded.retry is not None:
                stack.append(retry_loop(yielded))
                mode, payload = "send", None
                continue
            try:
                outcome = self._start(yielded)
            except (TypeError, ValueError) as exc:
                mode, payload = "throw", exc
                continue
            if outcome is not None:
                mode, payload = outcome
                continue
            mode, payload = self._block()

    def _block(self) -> tuple[str, Any]:
        waiter = self._waiter
        assert waiter is not None
        while True:
            if self._cancel_reason is not None:
                raise _Terminate(
                    ev.ORCHESTRATION_FAILED,
                    {"details": error_details(ev.APPLICATION, f"canceled: {self._cancel_reason}", "Cancelled")},
                )
            aborted = waiter.aborted()
            if aborted is not None:
                raise _Terminate(ev.ORCHESTRATION_FAILED, {"details": aborted.details})
            if waiter.done():
                break
            if self._input_pos >= len(self._inputs):
                self._check_history_consumed()
                raise _Blocked()
            event = self._inputs[self._input_pos]
            self._input_pos += 1
            if event.event_id > self.old_count:
                self.replaying = False
            self._apply(event)
        self._waiter = None
        outcome = waiter.outcome()
        if isinstance(waiter, RaceWaiter):
            for loser in waiter.losers():
                self._cancel_future(loser, "dropped_future")
        return outcome

    def _check_history_consumed(self) -> None:
        if self._action_pos < len(self._actions):
            left = self._actions[self._action_pos]
            raise Nondeterminism(
                f"history has {len(self._actions) - self._action_pos} more scheduled event(s) than the "
                f"orchestration produced; next unmatched: {_describe_event(left)}"
            )

    # -- starting tasks ---------------------------------------------------------------------------------------
    def _start(self, task: Any) -> tuple[str, Any] | None:
        """Emit the task's events; return an immediate outcome, or None after setting self._waiter."""
        if isinstance(task, UtcNowTask):
            return ("send", int(loads(self._syscall(ev.SYSCALL_UTC_NOW, "", lambda: dumps(self._now())))))
        if isinstance(task, NewGuidTask):
            return ("send", loads(self._syscall(ev.SYSCALL_NEW_GUID, "", lambda: dumps(self.inp.new_guid()))))
        if isinstance(task, ActivityTask) and task.name.startswith(ev.SYSCALL_PREFIX):
            return ("send", loads(self._syscall(task.name, task.input, lambda: self._read_kv(task.input))))
        if isinstance(task, TryDequeueTask):
            return ("send", self._try_dequeue(task.queue))
        if isinstance(task, DetachedStartTask):
            self._emit(
                ev.ORCHESTRATION_CHAINED,
                {"name": task.name, "instance": task.instance_id, "input": task.input, "version": task.version},
                ("name", "instance", "input"),
                on_new=lambda e: self.outgoing.append(
                    StartOrchestration(task.instance_id, task.name, task.input, task.version)
                ),
            )
            return ("send", None)
        if isinstance(task, AllTask):
            members = self._check_members(task.tasks, "all")
            self._waiter = AllWaiter([self._schedule(t) for t in members], task.unwrap_ok)
            return None
        if isinstance(task, RaceTask):
            members = self._check_members(task.tasks, "race")
            if len(members) != 2:
                # duroxide's own wording stays in parentheses: ported code may match on it (semantics.md)
                raise ValueError(
                    f"race takes exactly 2 tasks, got {len(members)} (select currently supports exactly 2 tasks)"
                )
            self._waiter = RaceWaiter([self._schedule(t) for t in members])
            return None
        if isinstance(task, Task):
            self._check_storable_task(task)
            self._waiter = SingleWaiter(self._schedule(task))
            return None
        raise TypeError(
            f"orchestration yielded {task!r} (type {type(task).__name__}), which is not a task; yield what a "
            "ctx.schedule_*/wait_for_event/all/race call returns"
        )

    def _check_storable_task(self, task: Task) -> None:
        """Checks that need the turn's context (the context checked everything else at the call); raised into the
        code at its `yield`, before anything of the task (or of any member of its all/race) is recorded."""
        if isinstance(task, ActivityTask) and task.tag is not None:
            base = self.inp.activity_queue or DEFAULT_ACTIVITY_QUEUE_ASSUMED
            size = len(f"{base}.{task.tag}".encode())
            if size > MAX_QUEUE_NAME_BYTES:
                raise ValueError(
                    f"activity tag {task.tag[:40]!r}... is too long for its broker queue: "
                    f"'{base}.<tag>' would be {size} bytes; the limit is {MAX_QUEUE_NAME_BYTES} bytes, so a tag "
                    f"may have at most {MAX_QUEUE_NAME_BYTES - len(base.encode()) - 1} bytes here"
                )
        if isinstance(task, TimerTask) and not 0 <= task.delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"timer delay is {task.delay_ms} ms; it must be between 0 and {MAX_DELAY_MS} ms")

    def _check_members(self, tasks: list[Any], what: str) -> list[Task]:
        for t in tasks:
            if isinstance(t, AllTask | RaceTask):
                # duroxide's exact text (semantics.md 2.6), which names the outer call join/select.
                outer = {"all": "join", "race": "select"}.get(what, what)
                raise ValueError(f"nested join/select inside {outer} is not supported")
            if isinstance(t, ActivityTask) and t.retry is not None:
                raise ValueError(f"an activity with a retry policy cannot be a member of {what}")
            if not isinstance(t, SINGLE_TASKS):
                raise TypeError(f"{what}() takes tasks to wait on; got {t!r} (type {type(t).__name__})")
            self._check_storable_task(t)
        return list(tasks)

    def _schedule(self, task: Task) -> Future:
        if isinstance(task, ActivityTask) and task.name.startswith(ev.SYSCALL_PREFIX):
            # A syscall (get_kv_value_from_instance) is answered in the turn, never sent to a worker (none serves
            # it): as a member of all()/race() it is a future that is ready at once, as when it is yielded alone.
            value = loads(self._syscall(task.name, task.input, lambda: self._read_kv(task.input)))
            fut = Future("syscall", 0, task.name)
            fut.resolve(self._next_seq(), value)
            return fut
        if isinstance(task, ActivityTask):
            data: dict[str, Any] = {
                "name": task.name,
                "input": task.input,
                "session_id": task.session_id,
                "tag": task.tag,
            }
            if task.ttl_ms is not None:
                data["ttl_ms"] = task.ttl_ms  # shown in history; not part of the determinism check
            # Flow control, recorded only when set (histories without it replay unchanged): the key is part of the
            # determinism check (it decides which limit counts the work); the priority, like the ttl, is not.
            if task.key is not None:
                data["key"] = task.key
            if task.priority is not None:
                data["priority"] = task.priority
            event = self._emit(
                ev.ACTIVITY_SCHEDULED,
                data,
                ("name", "input", "session_id", "tag", "key"),
                on_new=lambda e: self.outgoing.append(
                    ScheduleActivity(
                        e.event_id,
                        task.name,
                        task.input,
                        task.session_id,
                        task.tag,
                        task.ttl_ms,
                        task.key,
                        task.priority,
                    )
                ),
            )
            return self._register(Future("activity", event.event_id, task.name))
        if isinstance(task, TimerTask):
            fire_at = self._turn_now() + task.delay_ms
            event = self._emit(
                ev.TIMER_CREATED,
                {"fire_at_ms": fire_at},
                (),
                on_new=lambda e: self.outgoing.append(ScheduleTimer(e.event_id, fire_at)),
            )
            return self._register(Future("timer", event.event_id))
        if isinstance(task, WaitEventTask):
            event = self._emit(ev.EXTERNAL_SUBSCRIBED, {"name": task.name}, ("name",))
            fut = Future("wait", event.event_id, task.name)
            self._waits.setdefault(task.name, deque()).append(fut)
            return fut
        if isinstance(task, DequeueTask):
            event = self._emit(ev.QUEUE_SUBSCRIBED, {"name": task.queue}, ("name", "try"))
            fut = Future("dequeue", event.event_id, task.queue)
            buffered = self._queue_buffer.get(task.queue)
            if buffered:
                raw = buffered.popleft()
                fut.resolve(self._next_seq(), loads(raw))
                fut.buffered_raw = raw  # handed back by _cancel_future if this dequeue loses a race
            else:
                self._dequeues.setdefault(task.queue, deque()).append(fut)
            return fut
        assert isinstance(task, SubOrchestrationTask)
        child_id = task.instance_id or self._auto_child_id(self._next_event_id())

        def on_new(e: HistoryEvent) -> None:
            self.outgoing.append(
                StartOrchestration(
                    child_id, task.name, task.input, task.version, self.instance_id, self.execution_id, e.event_id
                )
            )

        event = self._emit(
            ev.SUB_ORCHESTRATION_SCHEDULED,
            {"name": task.name, "instance": child_id, "input": task.input, "version": task.version},
            ("name", "input"),
            on_new=on_new,
        )
        return self._register(Future("sub_orchestration", event.event_id, task.name, event.data["instance"]))

    def _try_dequeue(self, queue: str) -> Any:
        """The next message of `queue` delivered so far, or None, without waiting (duroxide #8).

        "So far" includes messages that arrived in this turn but that the code has not reached yet, so a loop of
        try_dequeue_event drains the queue exactly. Which message was taken is recorded on the QueueSubscribed
        event ({"try": true, "taken": "buffer" | <event id> | null}); a replay reuses that record."""
        if self._action_pos < len(self._actions):
            old = self._actions[self._action_pos]
            if old.kind != ev.QUEUE_SUBSCRIBED or old.data.get("name") != queue or not old.data.get("try"):
                raise Nondeterminism(
                    f"schedule mismatch: action=TryDequeue{{name: {queue!r}}} vs event={_describe_event(old)}"
                )
            self._action_pos += 1
            taken = old.data.get("taken")
        else:
            taken = None
            if self._queue_buffer.get(queue):
                taken = "buffer"
            else:
                for event in self._inputs[self._input_pos :]:
                    if (
                        event.kind == ev.QUEUE_EVENT_DELIVERED
                        and event.data.get("name") == queue
                        and event.event_id not in self._taken_early
                    ):
                        taken = event.event_id
                        break
            self.replaying = False
            self._new_event(ev.QUEUE_SUBSCRIBED, {"name": queue, "try": True, "taken": taken})
        if taken is None:
            return None
        if taken == "buffer":
            return loads(self._queue_buffer[queue].popleft())
        self._taken_early.add(taken)
        return loads(self._event_by_id(taken).data.get("data"))

    def _event_by_id(self, event_id: int) -> HistoryEvent:
        event = self.history[event_id - 1]
        assert event.event_id == event_id
        return event

    def _auto_child_id(self, event_id: int) -> str:
        suffix = f"::sub::{event_id}" if self.execution_id == 1 else f"::sub::{self.execution_id}_{event_id}"
        if len(self.instance_id) + len(suffix) <= MAX_INSTANCE_ID_CHARS:
            return f"{self.instance_id}{suffix}"
        # The parent id is too long to prefix the child's (instance ids are at most 512 characters): keep its start
        # and add a digest of the whole id, so the child id is deterministic, unique to this parent and fits.
        digest = hashlib.sha256(self.instance_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        keep = MAX_INSTANCE_ID_CHARS - len(suffix) - len(digest) - 1
        return f"{self.instance_id[:keep]}~{digest}{suffix}"

    def _register(self, fut: Future) -> Future:
        self._futures[fut.schedule_id] = fut
        return fut

    def _syscall(self, name: str, input_text: str, compute: Callable[[], str]) -> str:
        scheduled = self._emit(ev.ACTIVITY_SCHEDULED, {"name": name, "input": input_text}, ("name", "input"))
        done = self._completions.get(scheduled.event_id)
        if done is None:
            done = self._new_event(ev.ACTIVITY_COMPLETED, {"result": compute()}, scheduled.event_id)
            self._completions[scheduled.event_id] = done
        result: str = done.data["result"]
        return result

    def _read_kv(self, input_text: str) -> str:
        instance_id, key = loads(input_text)
        reader = self.inp.kv_reader
        return dumps(reader(instance_id, key) if reader else None)

    # -- arrivals ---------------------------------------------------------------------------------------------
    def _apply(self, event: HistoryEvent) -> None:
        kind = event.kind
        if kind == ev.ORCHESTRATION_CANCEL_REQUESTED:
            self._cancel_reason = event.data.get("reason") or ""
            return
        if kind in (ev.EXTERNAL_EVENT, ev.QUEUE_EVENT_DELIVERED):
            if event.event_id in self._taken_early:
                return  # already handed out by try_dequeue_event
            name, data = event.data["name"], event.data.get("data")
            waiting = (self._waits if kind == ev.EXTERNAL_EVENT else self._dequeues).get(name)
            while waiting and not waiting[0].open:
                waiting.popleft()
            if waiting:
                waiting.popleft().resolve(self._next_seq(), loads(data))
            elif kind == ev.QUEUE_EVENT_DELIVERED:
                self._queue_buffer.setdefault(name, deque()).append(data)
            # A positional event with no open wait is recorded but never delivered (semantics.md 2.4).
            return
        source = event.source_event_id
        fut = self._futures.get(source) if source is not None else None
        if fut is None:
            raise Nondeterminism(
                f"{_describe_event(event)} completes event {event.source_event_id}, which the orchestration "
                "has not scheduled"
            )
        if not fut.open:
            return  # completion of a cancelled race loser
        if kind in (ev.ACTIVITY_FAILED, ev.SUB_ORCHESTRATION_FAILED):
            fut.fail(self._next_seq(), event.data["details"])
        elif kind == ev.TIMER_FIRED:
            fut.resolve(self._next_seq(), None)
        else:
            fut.resolve(self._next_seq(), loads(event.data.get("result")))

    def _cancel_future(self, fut: Future, reason: str) -> None:
        # A race loser consumes nothing (semantics.md 2.5/2.6), even a dequeue that took a buffered message as it
        # was scheduled (a race of two ready dequeues): the message goes back to the head of its queue, and the
        # loser is cancelled like an open one, with its QueueSubscriptionCancelled breadcrumb.
        if fut.kind == "dequeue" and fut.state == "ok" and fut.buffered_raw is not None:
            self._queue_buffer.setdefault(fut.name or "", deque()).appendleft(fut.buffered_raw)
            fut.buffered_raw = None
            fut.state, fut.value = "pending", None
        if not fut.open:
            return
        fut.state = "cancelled"
        if fut.kind == "activity":
            self._emit(
                ev.ACTIVITY_CANCEL_REQUESTED,
                {"reason": reason},
                ("source",),
                source=fut.schedule_id,
                on_new=lambda e: self.outgoing.append(CancelActivity(fut.schedule_id)),
            )
        elif fut.kind == "timer":
            # A replay produces no outgoing work: CancelTimer goes out only in the turn that decided the cancel
            # (a race replayed from history sent it back then). _finish clears `replaying` before cancelling.
            if not self.replaying:
                self.outgoing.append(CancelTimer(fut.schedule_id))
        elif fut.kind == "wait":
            self._emit(ev.EXTERNAL_SUBSCRIBED_CANCELLED, {"reason": reason}, ("source",), source=fut.schedule_id)
        elif fut.kind == "dequeue":
            self._emit(ev.QUEUE_SUBSCRIPTION_CANCELLED, {"reason": reason}, ("source",), source=fut.schedule_id)
        elif fut.kind == "sub_orchestration":
            child = fut.child_id or ""
            child_reason = (
                "parent canceled" if reason == "parent canceled" else "parent dropped sub-orchestration future"
            )
            self._emit(
                ev.SUB_ORCHESTRATION_CANCEL_REQUESTED,
                {"reason": reason},
                ("source",),
                source=fut.schedule_id,
                on_new=lambda e: self.outgoing.append(CancelInstance(child, child_reason)),
            )

    # -- fire-and-forget state --------------------------------------------------------------------------------
    def record_custom_status(self, status: str | None) -> None:
        if status is not None and len(status.encode()) > MAX_CUSTOM_STATUS_BYTES:
            # semantics.md 2.16: past the limit the instance fails (not an error the code could swallow). The
            # _Terminate raised here is a BaseException, which a bare `except:` still catches; it is latched, so
            # the engine raises it again at the code's next step (yield, return or raise) whatever the code did.
            self._fatal = self._fatal or _Terminate(
                ev.ORCHESTRATION_FAILED,
                {
                    "details": error_details(
                        ev.APPLICATION,
                        f"custom status is {len(status.encode())} bytes; the limit is {MAX_CUSTOM_STATUS_BYTES} bytes",
                        "CustomStatusLimit",
                    )
                },
            )
            raise self._fatal
        event = self._emit(ev.CUSTOM_STATUS_UPDATED, {"status": status}, ())
        if event.event_id > self.old_count:
            self.custom_status_changed = True
        self.custom_status = status

    def record_kv_set(self, key: str, value: str) -> None:
        event = self._emit(
            ev.KEY_VALUE_SET, {"key": key, "value": value, "last_updated_at_ms": self._turn_now()}, ("key", "value")
        )
        stamp = event.data.get("last_updated_at_ms", 0)
        self.kv[key] = (value, stamp)
        if event.event_id > self.old_count:
            self.kv_ops.append(("set", key, value, stamp))

    def record_kv_clear(self, key: str) -> None:
        event = self._emit(ev.KEY_VALUE_CLEARED, {"key": key}, ("key",))
        self.kv.pop(key, None)
        if event.event_id > self.old_count:
            self.kv_ops.append(("clear", key))

    def record_kv_clear_all(self) -> None:
        event = self._emit(ev.KEY_VALUES_CLEARED, {}, ())
        self.kv.clear()
        if event.event_id > self.old_count:
            self.kv_ops.append(("clear_all",))

    # -- events -----------------------------------------------------------------------------------------------
    def _emit(
        self,
        kind: str,
        data: dict[str, Any],
        compare: tuple[str, ...],
        source: int | None = None,
        on_new: Callable[[HistoryEvent], None] | None = None,
    ) -> HistoryEvent:
        """Produce an action event: match it against history, or append it when history has run out."""
        if self._action_pos < len(self._actions):
            old = self._actions[self._action_pos]
            mismatch = old.kind != kind or any(
                (old.source_event_id != source) if f == "source" else (old.data.get(f) != data.get(f)) for f in compare
            )
            if mismatch:
                self._nondeterminism = self._nondeterminism or Nondeterminism(
                    f"schedule mismatch: action={_describe_action(kind, data, compare)} vs event={_describe_event(old)}"
                )
                raise self._nondeterminism
            self._action_pos += 1
            return old
        self.replaying = False
        event = self._new_event(kind, data, source)
        if on_new is not None:
            on_new(event)
        return event

    def _new_event(self, kind: str, data: dict[str, Any], source: int | None = None) -> HistoryEvent:
        event = HistoryEvent(self._next_event_id(), kind, data, source, self.inp.now_ms)
        self.history.append(event)
        self.new_events.append(event)
        if self._inbox is not None:
            self._inbox.index(event)
        return event

    def _next_event_id(self) -> int:
        return len(self.history) + 1

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _turn_now(self) -> int:
        return self.inp.now_ms

    def _now(self) -> int:
        return self.inp.clock() if self.inp.clock else self.inp.now_ms

    # -- ending the turn --------------------------------------------------------------------------------------
    def _raise_if_cancel_pending(self) -> None:
        # Cancel beats a completion in the same turn (semantics.md 2.12), also when the code ends without blocking,
        # so the cancel request was never fed to it (a plain function, or a generator that finishes in the turn
        # that received the cancel): such a turn fails as cancelled; it never completes or continues as new.
        unapplied = self._inputs[self._input_pos :]
        pending = next((e for e in unapplied if e.kind == ev.ORCHESTRATION_CANCEL_REQUESTED), None)
        if pending is not None:
            self._cancel_reason = pending.data.get("reason") or ""
            raise _Terminate(
                ev.ORCHESTRATION_FAILED,
                {"details": error_details(ev.APPLICATION, f"canceled: {self._cancel_reason}", "Cancelled")},
            )

    def _complete(self, value: Any) -> None:
        self._check_history_consumed()
        self._raise_if_cancel_pending()
        try:
            output = dumps(value)
        except TypeError as exc:
            raise _Terminate(
                ev.ORCHESTRATION_FAILED,
                {"details": error_details(ev.APPLICATION, f"orchestration output {exc}", "OrchestrationFailed")},
            ) from None
        raise _Terminate(ev.ORCHESTRATION_COMPLETED, {"output": output})

    @staticmethod
    def _close(gen: Any) -> None:
        if inspect.isgenerator(gen):
            try:
                gen.close()
            except Exception:  # noqa: BLE001 - a finally block that raises must not mask the real outcome
                pass

    def _finish(self, terminal: str | None, data: dict[str, Any], started: HistoryEvent) -> TurnResult:
        result = TurnResult(
            status="Running",
            orchestration_name=self.orchestration_name,
            orchestration_version=self.orchestration_version,
        )
        parent = started.data.get("parent_instance")
        if parent:
            result.parent = {
                "instance_id": parent,
                "execution_id": started.data.get("parent_execution_id"),
                "event_id": started.data.get("parent_id"),
            }
        # The KV limits apply to every turn (semantics.md 2.15), including one that completes or continues as new,
        # so no instance ends with more than the limit. An orchestration that already failed keeps its own error.
        if terminal in (None, ev.ORCHESTRATION_COMPLETED, ev.ORCHESTRATION_CONTINUED_AS_NEW):
            limit_error = self._kv_limit_error()
            if limit_error:
                terminal, data = ev.ORCHESTRATION_FAILED, {"details": limit_error}
        if terminal is not None:
            self._action_pos = len(self._actions)  # the end is new: breadcrumbs below append, never match
            self.replaying = False
            reason = "parent canceled" if self._cancel_reason is not None else "orchestration_terminal"
            for fut in list(self._futures.values()) + [
                f for queue in (*self._waits.values(), *self._dequeues.values()) for f in queue
            ]:
                self._cancel_future(fut, reason)
            version = data.pop("_version", None)
            self._new_event(terminal, data)
            if terminal == ev.ORCHESTRATION_COMPLETED:
                result.status, result.output = "Completed", data["output"]
            elif terminal == ev.ORCHESTRATION_FAILED:
                result.status, result.error = "Failed", data["details"]
            else:
                result.status = "ContinuedAsNew"
                result.continue_as_new = {
                    "name": self.orchestration_name,
                    "version": version,
                    "input": data["input"],
                    "carry_forward_events": self._unconsumed_queue_messages(),
                    "initial_custom_status": self.custom_status,
                    "parent_instance_id": started.data.get("parent_instance"),
                    "parent_execution_id": started.data.get("parent_execution_id"),
                    "parent_event_id": started.data.get("parent_id"),
                }
            if result.parent and terminal != ev.ORCHESTRATION_CONTINUED_AS_NEW:
                p = result.parent
                if terminal == ev.ORCHESTRATION_COMPLETED:
                    note = NotifyParent(
                        p["instance_id"], p["execution_id"], p["event_id"], ev.MSG_SUB_COMPLETED, result=result.output
                    )
                else:
                    note = NotifyParent(
                        p["instance_id"], p["execution_id"], p["event_id"], ev.MSG_SUB_FAILED, details=result.error
                    )
                self.outgoing.append(note)
        # Work scheduled and cancelled within this same turn never needs to exist.
        cancelled = {o.event_id for o in self.outgoing if isinstance(o, CancelActivity | CancelTimer)}
        new_ids = {e.event_id for e in self.new_events}
        result.outgoing = [
            o
            for o in self.outgoing
            if not (isinstance(o, ScheduleActivity | ScheduleTimer) and o.event_id in cancelled)
            and not (isinstance(o, CancelActivity | CancelTimer) and o.event_id in new_ids)
        ]
        result.new_events = self.new_events
        result.custom_status_changed = self.custom_status_changed
        result.custom_status = self.custom_status
        result.kv_ops = self.kv_ops
        result.kv_state = dict(self.kv)
        return result

    def _unconsumed_queue_messages(self) -> list[list[str | None]]:
        carry: list[list[str | None]] = [[name, data] for name, buf in self._queue_buffer.items() for data in buf]
        for event in self._inputs[self._input_pos :]:
            if event.kind == ev.QUEUE_EVENT_DELIVERED and event.event_id not in self._taken_early:
                carry.append([event.data["name"], event.data.get("data")])
        return carry

    def _kv_limit_error(self) -> dict[str, Any] | None:
        if len(self.kv) > MAX_KV_KEYS:
            return error_details(
                ev.APPLICATION, f"KV key count ({len(self.kv)}) exceeds limit ({MAX_KV_KEYS})", "KvLimit"
            )
        for key, (value, _) in self.kv.items():
            size = len(value.encode())
            if size > MAX_KV_VALUE_BYTES:
                return error_details(
                    ev.APPLICATION,
                    f"KV value for key '{key}' ({size} bytes) exceeds limit ({MAX_KV_VALUE_BYTES} bytes)",
                    "KvLimit",
                )
        return None


class _Blocked(BaseException):
    """Internal: the code waits on something that has not arrived; the turn ends Running."""


class _TaskError(Exception):
    """Raised inside orchestration code when an awaited task failed; str() is the failure message."""


def _app_failure(exc: BaseException) -> dict[str, Any]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    # A retry timeout is a task failure like an activity's: uncaught, it reads "timeout: activity timed out"
    # (semantics.md 2.14), without the exception's class name.
    head = str(exc) if isinstance(exc, _TaskError | ActivityTimeout) else f"{type(exc).__name__}: {exc}"
    return error_details(ev.APPLICATION, f"{head}\n{text}", "OrchestrationFailed")


def _describe_action(kind: str, data: dict[str, Any], compare: tuple[str, ...]) -> str:
    fields = ", ".join(
        f"{f}: {data.get(f)!r}" for f in compare if f != "source" and not (f in ("try", "key") and data.get(f) is None)
    )
    return f"{kind}{{{fields}}}"


def _describe_event(event: HistoryEvent) -> str:
    shown = {k: v for k, v in event.data.items() if v is not None and k != "last_updated_at_ms"}
    fields = ", ".join(f"{k}: {v!r}" for k, v in shown.items())
    return f"{event.kind}#{event.event_id}{{{fields}}}"
