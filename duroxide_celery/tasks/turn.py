"""The orchestrator turn: lease the instance, replay, commit everything in one transaction, then publish.

Alternatives considered for delivery: carrying state in the Celery message (lost with the broker) or polling the
store from every worker (what duroxide does; latency bound by the poll interval). Here the broker carries only a
poke, the store is the truth, and a lease holder re-checks its inbox after releasing, so no poke is ever lost
to a busy instance.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from ..errors import ActivityFailed, OrchestrationFailed
from ..observability.otel import TurnSpan
from ..providers.dto import ClaimedWorkItem, InlineClaim, InstanceLease, LeaseLost, PublishPlan, TurnChanges, TurnLoad
from ..providers.endings import endings
from ..providers.store import now_ms
from ..providers.turn_shapes import TurnTransaction
from ..replay import events as ev
from ..replay.commands import TurnInput, TurnResult
from ..replay.engine import ReplayEngine
from ..replay.events import HistoryEvent, error_details
from ..replay.poison import poisoned_turn
from ..replay.timer_due import Message, split_due
from ..types import TERMINAL_STATUSES
from .engine_cache import LruCache
from .executor_parts import ExecutorParts, PartsExecutor
from .failures import clip, describe, lease_owner, raised_by_user_code, when, worker_log
from .queues import QueueNames
from .turn_changes import started_fresh, turn_changes

log = logging.getLogger(__name__)

#: How many inbox drains one task performs before handing the instance back to the queue (fairness).
MAX_DRAINS_PER_TASK = 20

#: A turn whose messages are all timers read ahead of their time (beat fires them ahead) waits for the earliest when
#: it falls due within this many ms and the turn holds no transaction; else it gives the lease back and comes back.
EARLY_WAIT_MAX_MS = 50
#: Longest countdown of the poke that brings such a turn back (a timer further away is re-checked after it): Redis
#: redelivers long ETA messages, so none is sent (DESIGN 3).
EARLY_POKE_MAX_MS = 1000


class InjectedCrash(Exception):
    """Raised by the fault-injection hook below: the turn committed, and this process 'dies' before publishing."""


class FaultAfterCommit:
    """Test hook, inert unless DUROXIDE_FAULT_AFTER_COMMIT is set: it makes committed turns skip their publishes
    (pokes, activity tasks), as if the process crashed between commit and publish (DESIGN invariant 3), so tests
    can check that the recovery sweep heals it. The value is a probability when it has a '.' (e.g. `0.5`: about
    half of the turns; `1.0`: every turn), else a count (e.g. `3`: the first 3 turns of each worker process)."""

    def __init__(self, spec: str):
        self.probability = float(spec) if "." in spec else None
        self.remaining = 0 if "." in spec else int(spec)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> FaultAfterCommit | None:
        spec = os.environ.get("DUROXIDE_FAULT_AFTER_COMMIT", "").strip()
        return cls(spec) if spec else None

    def hit(self) -> bool:
        if self.probability is not None:
            return random.random() < self.probability
        with self._lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True


def unregistered_backoff_ms(attempt: int) -> int:
    """min(1 s * 2^min(attempt-1, 6), 60 s): rolling deploys get time for a worker with the handler to appear."""
    return min(1000 * 2 ** min(max(attempt, 1) - 1, 6), 60_000)


class _TaskState(threading.local):
    #: The failure of the orchestration that a turn of this task committed and published, raised at its end.
    failed: OrchestrationFailed | None = None
    #: Whether this task's turns may claim an activity to run inline, and whether they run in the turn pool.
    may_inline: bool = False
    in_turn_pool: bool = True
    #: The activity row the last turn's commit claimed for this task to run next (tasks/inline.py).
    claimed: ClaimedWorkItem | None = None
    #: The failure of an activity this task ran inline (recorded), raised at its end like an activity task's.
    activity_failed: ActivityFailed | None = None


#: What a leased turn leaves to do once its transaction has ended (publish what it committed); returns whether
#: the inbox may hold more work for the instance.
AfterCommit = Callable[[], bool]


class TurnExecutor(PartsExecutor):
    """Runs the turns of one worker process, every collaborator passed explicitly. `identity` is read at each use:
    a worker bootstep may change it after install, before the worker consumes (Runtime.configure_worker)."""

    def __init__(self, parts: ExecutorParts, *, queues: QueueNames):
        super().__init__(parts)
        self.queues = queues
        self.engines: LruCache[ReplayEngine] = LruCache(max_bytes=self.settings.engine_cache_bytes)
        self.fault = FaultAfterCommit.from_env()
        self._task = _TaskState()  # one per pool thread: tasks of a thread pool share this executor
        #: Runs an activity row a turn's commit claimed for this worker; True once its outcome is recorded (install.py
        #: wires the ActivityExecutor's; None: no inline activities).
        self.run_claimed: Callable[[ClaimedWorkItem], bool] | None = None

    def run(self, instance_id: str, *, ack: Callable[[], None] | None = None, after_activity: bool = False) -> None:
        """The turns of one task. When one of them failed the orchestration, raise OrchestrationFailed once all
        is committed and published, so that Celery marks the task FAILURE; the turn task acks failures, so this
        never runs the turn again (and a later delivery would find nothing to do).
        A turn may claim the activity it schedules and run it here (tasks/inline.py), then the turn that follows:
        from a turn task only once `ack` (the early ack of its delivery) is available, from an activity task
        (`after_activity`, acked when it started) always."""
        task = self._task
        task.failed, task.claimed, task.activity_failed = None, None, None
        task.may_inline = self.run_claimed is not None and (after_activity or ack is not None)
        task.in_turn_pool = not after_activity
        if self.publisher.pending is not None:
            self.publisher.pending.taken(instance_id)
        for _ in range(MAX_DRAINS_PER_TASK):
            more = self._turn(instance_id)
            claimed, task.claimed = task.claimed, None
            if claimed is not None and self.run_claimed is not None:
                if ack is not None:
                    ack, early = None, ack
                    early()  # the turn committed: its delivery is done with before a long activity runs
                try:
                    more = self.run_claimed(claimed) or more  # its outcome waits in the inbox: the next turn takes it
                except ActivityFailed as exc:
                    task.activity_failed, more = exc, True  # recorded: the orchestration's next turn handles it
            if not more:
                break
        else:
            self.publisher.poke([instance_id])
        failed, task.failed = task.failed, None
        activity_failed, task.activity_failed = task.activity_failed, None
        if failed is not None:
            raise failed
        if activity_failed is not None:
            raise activity_failed

    def run_after_activity(self, instance_id: str) -> ActivityFailed | None:
        """The next turns of an instance whose activity this worker just completed, instead of a poke; returns the
        failure of an activity they ran inline, for the activity task to raise once its own work is done. (Such
        turns leave an orchestration failure to a turn task: see _leave_failure_to_turn_task.)"""
        try:
            self.run(instance_id, after_activity=True)
        except ActivityFailed as exc:
            return exc
        except OrchestrationFailed:
            pass  # poison found by a turn run here: logged with its ids and shown failed in the store
        return None

    def _turn(self, instance_id: str) -> bool:
        """One turn, traced (observability/otel.py: its span begins once the turn holds the lease)."""
        with self.tracing.turn(instance_id, self.identity.worker_id) as span:
            return self._traced_turn(instance_id, span)

    def _traced_turn(self, instance_id: str, span: TurnSpan) -> bool:
        """One turn; True when the inbox may hold more work for this instance. Its transactions (one, or a lease
        then a fenced commit) are the store's business: `Store.begin_turn`."""
        # This turn's own lease owner: a turn that lost its lease fails every owner-guarded write.
        owner = lease_owner(self.identity.worker_id)
        turn = self.store().begin_turn(
            instance_id, owner, self.settings.orchestrator_lock_ms, self._cached_prefix(instance_id)
        )
        name: str | None = None  # the orchestration's, once leased: the retry poke then reads orch:<Name>#<id>
        try:
            with turn:
                if turn.lease is None:
                    return False  # no message (a duplicate or late poke), or the lease holder re-reads the inbox
                name = turn.lease.orchestration_name
                span.leased(turn.lease, turn)
                after_commit = self._leased_turn(turn, turn.lease)
            return after_commit()
        except LeaseLost:
            log.warning("lease on %s lost during its turn; another worker redoes it", instance_id)
            return False
        except InjectedCrash:
            return False  # a simulated crash: no retry poke either; only the recovery sweep may heal this
        except Exception as exc:
            log.exception("turn of %s failed; it will be retried", instance_id, extra={"instance_id": instance_id})
            span.failed(exc)
            try:
                turn.record_failed_attempt(clip(f"turn attempt failed: {describe(exc)}"))
            finally:
                self.publisher.poke([(instance_id, name)], countdown=1.0)
            return False
        except BaseException as exc:
            # The worker process is being stopped (orchestration code's own BaseExceptions are recorded failures,
            # see _decide): count the attempt and give the lease back, then let the stop proceed.
            try:
                turn.record_failed_attempt(clip(f"turn attempt failed: {describe(exc)}"))
            except Exception:  # noqa: BLE001 - best effort on the way out; the lease lapses anyway
                pass
            raise

    def _cached_prefix(self, instance_id: str) -> tuple[int, int] | None:
        """(execution id, event id) from which `_load` will read the history: its cached engine's last event."""
        cached = self.engines.of_instance(instance_id)
        return (cached[0], max(len(cached[1].history) - 1, 0)) if cached is not None else None

    def _leased_turn(self, turn: TurnTransaction, lease: InstanceLease) -> AfterCommit:
        """Load, replay and commit a leased turn; returns what to do once its transaction has ended."""
        history, messages, kv_snapshot = self._load(turn, lease)
        turn.replay_starts()
        if not messages:
            more = turn.release(reset_attempts=True)
            return lambda: more
        timely = self._due_messages(turn, lease, messages)
        if not isinstance(timely, tuple):
            return timely  # every message is a timer ahead of its time: the lease is given back
        messages, early_left = timely  # early ones stay in the inbox: this task takes another turn for them
        decided = self._decide(turn, lease, history, messages, kv_snapshot)
        if not isinstance(decided, TurnResult):
            return decided  # poisoned, failed without its code, or backed off: committed already
        if decided.status == "Failed" and not self._task.in_turn_pool:
            return self._leave_failure_to_turn_task(turn, lease)
        msg_ids = [m[0] for m in messages]
        if decided.status == "Idle":
            more = turn.release(reset_attempts=True, consumed_ids=msg_ids) or early_left
            return lambda: more
        changes = turn_changes(lease, decided, msg_ids, now_ms(), self.settings.default_activity_ttl_ms)
        self._claim_inline(changes)
        if changes.child_starts:  # their spans join this turn's trace, under this turn's span
            changes.child_trace_context = self.tracing.current_context()
        plan = turn.commit(changes)
        plan.more = plan.more or early_left  # SQLite's turn reports none: no message could arrive while it ran
        return partial(self._after_commit, lease, decided, plan)

    def _due_messages(
        self, turn: TurnTransaction, lease: InstanceLease, messages: list[Message]
    ) -> tuple[list[Message], bool] | AfterCommit:
        """The messages this turn processes, and whether early ones stay in the inbox: a TimerFired read before its
        time (by this worker's clock) is never consumed, so history never records a timer firing early. When every
        message is early, wait for the earliest if it is near and the turn holds no transaction; else give the
        lease back and return the poke that brings a turn back when it falls due."""
        while True:
            now = now_ms()
            split = split_due(messages, now)
            if not split.early:
                return messages, False
            if split.due:
                return split.due, True
            wait_ms = max(1, (split.next_due_ms or now) - now)
            if not turn.may_wait or wait_ms > EARLY_WAIT_MAX_MS:
                log.debug("%s: every message is a timer due in %d ms or later: back then", lease.instance_id, wait_ms)
                return self._come_back_later(turn, lease, [m[0] for m in split.early], wait_ms)
            log.debug("%s: every message is a timer due in %d ms or later: waiting for it", lease.instance_id, wait_ms)
            # Outside any transaction (may_wait): only the lease is held meanwhile, and a message that arrives is
            # read after the commit. SQLite's turn would hold the only write transaction: it comes back instead.
            time.sleep(wait_ms / 1000)

    def _come_back_later(
        self, turn: TurnTransaction, lease: InstanceLease, early_ids: list[int], wait_ms: int
    ) -> AfterCommit:
        """Every message is a timer ahead of its time: give the lease back, consuming nothing (no turn ran, so
        no attempt counts), and poke the instance for when the earliest falls due."""
        more = turn.release(reset_attempts=True)

        def later() -> bool:
            # A message that arrived while the lease was held had its poke refused: this task takes it now.
            if more and self.store().has_inbox_besides(lease.instance_id, early_ids):
                return True
            countdown = min(wait_ms, EARLY_POKE_MAX_MS) / 1000
            self.publisher.poke([(lease.instance_id, lease.orchestration_name)], countdown=countdown)
            return False

        return later

    def _leave_failure_to_turn_task(self, turn: TurnTransaction, lease: InstanceLease) -> AfterCommit:
        """A turn run inline after an activity that would fail its orchestration is not committed: a turn task
        redoes it (replay is deterministic), so the failure ends a turn task as FAILURE, where Flower shows it."""
        turn.release(reset_attempts=True)
        self.engines.drop((lease.instance_id, lease.execution_id))  # its engine ran past the stored history

        def poke() -> bool:
            self.publisher.poke([(lease.instance_id, lease.orchestration_name)])
            return False

        return poke

    def _claim_inline(self, changes: TurnChanges) -> None:
        """Have the commit claim the turn's activity for this task to run next, when the policy allows it."""
        if not self._task.may_inline or self.inline is None:
            return
        event_id = self.inline.activity_to_claim(changes.activities, in_turn_pool=self._task.in_turn_pool)
        if event_id is not None:
            owner = lease_owner(self.identity.worker_id)  # the activity execution's own lease holder
            changes.inline_claim = InlineClaim(event_id, owner, self.settings.worker_lock_ms)

    def _load(self, turn: TurnTransaction, lease: InstanceLease) -> TurnLoad:
        """The execution's history, inbox and KV snapshot. A worker that ran this instance's last turn keeps its
        engine, whose history is the committed prefix: only the events stored after it are read. That prefix's
        tip is read back too, since an instance deleted and started again under the same id (Client.
        delete_instance) reuses the cache key with a different history, which the tip then fails to match."""
        key = (lease.instance_id, lease.execution_id)
        engine = self.engines.peek(key)
        cached = engine.history if engine is not None else []
        history, messages, kv_snapshot = turn.load(lease.execution_id, after_event_id=max(len(cached) - 1, 0))
        if not cached or not messages:
            return history, messages, kv_snapshot
        if history and _same_event(history[0], cached[-1]):
            # Nothing stored after the prefix (the common case): hand back the engine's own list, no copy.
            return (cached if len(history) == 1 else cached + history[1:]), messages, kv_snapshot
        log.info("cached history of %s does not match the store (deleted and re-created): reloading", key)
        self.engines.drop(key)
        return turn.load(lease.execution_id)

    def _decide(
        self,
        turn: TurnTransaction,
        lease: InstanceLease,
        history: list[HistoryEvent],
        messages: list[tuple[int, dict[str, Any]]],
        kv_snapshot: dict[str, tuple[str, int]],
    ) -> TurnResult | AfterCommit:
        """Run the replay; when the turn ended without a result to commit (poisoned, or backed off for a missing
        handler), what it committed instead is done, and its after-commit step is returned."""
        bodies = [m[1] for m in messages]
        if lease.attempt_count > self.settings.max_attempts_value:
            return self._poison(turn, lease, history, messages)
        inp = TurnInput(
            instance_id=lease.instance_id,
            execution_id=lease.execution_id,
            history=history,
            messages=bodies,
            now_ms=now_ms(),
            new_guid=lambda: str(uuid.uuid4()),
            clock=now_ms,
            kv_snapshot=kv_snapshot,
            kv_reader=turn.read_kv,
            activity_queue=self.queues.activities,  # tags are checked against this runtime's real queue names
        )
        engine = self.engines.take((lease.instance_id, lease.execution_id))
        if (
            engine is not None
            and engine.resumable
            and len(engine.history) == len(history)
            and (not history or _same_event(engine.history[-1], history[-1]))
        ):
            replay = partial(engine.resume, inp)  # hot instance: no replay, only the new messages
        else:
            engine = ReplayEngine(inp, self.registry.resolve_orchestration)
            replay = engine.run
        stored = len(history)  # a resumed engine appends this turn's events to `history` itself (the same list)
        try:
            result = replay()
        except Exception:
            raise  # the engine's own failure (not user code's: the engine records those): the turn is retried
        except BaseException as exc:
            if not raised_by_user_code(exc):
                raise
            # SystemExit, KeyboardInterrupt, GeneratorExit raised by the orchestration's code: deterministic, so
            # another attempt would raise it again. Fail the orchestration with it now, once, after the stored
            # history only (the events the interrupted turn appended in memory are not stored: ids stay dense).
            return self._end_as_failed(turn, lease, history[:stored], messages, _base_exception_failure(exc))
        result.replay_engine = engine
        if result.status == "Unregistered":
            return self._backoff(turn, lease, result)
        return result

    def _backoff(self, turn: TurnTransaction, lease: InstanceLease, result: TurnResult) -> AfterCommit:
        """No worker that took this turn has the orchestration (a rolling deploy?): wait, say why, and retry."""
        name, version = result.unregistered or (lease.orchestration_name, None)
        delay = unregistered_backoff_ms(lease.attempt_count)
        retry_at = now_ms() + delay
        worker_log.warning(
            "instance %s (execution %d) waits: orchestration %r (version %s) is not registered on this worker; "
            "retrying at %s (attempt %d of %d)",
            lease.instance_id,
            lease.execution_id,
            name,
            version or "latest",
            when(retry_at),
            lease.attempt_count,
            self.settings.max_attempts_value,
            extra={
                "instance_id": lease.instance_id,
                "execution_id": lease.execution_id,
                "orchestration_name": name,
                "orchestration_version": version,
            },
        )
        reason = (
            f"orchestration '{name}' {version or '(latest version)'} is not registered on any worker that took "
            f"this turn; retrying at {when(retry_at)}"
        )
        turn.release(reset_attempts=False, next_attempt_at=retry_at, waiting_reason=reason)

        def retry_later() -> bool:
            self.publisher.poke([(lease.instance_id, name)], countdown=delay / 1000 + 0.05)
            return False

        return retry_later

    def _poison(
        self,
        turn: TurnTransaction,
        lease: InstanceLease,
        history: list[HistoryEvent],
        messages: list[tuple[int, dict[str, Any]]],
    ) -> AfterCommit:
        """Fail an instance whose turns keep failing (or whose handler never appeared), with a clear reason."""
        name, version = _identity(lease, history, [m[1] for m in messages])
        registered = self.registry.resolve_orchestration(name, version) is not None
        if not registered:
            reason = f": orchestration '{name}' (version {version or 'latest'}) is not registered"
        elif lease.waiting_reason:
            reason = f"; last attempt: {lease.waiting_reason}"  # what the failed attempts raised
        else:
            reason = ""
        message = (
            f"poison: orchestration {lease.instance_id} exceeded {lease.attempt_count} attempts "
            f"(max {self.settings.max_attempts_value}){reason}"
        )
        publish = self._end_as_failed(turn, lease, history, messages, error_details(ev.POISON, message, "Poison"))

        def report() -> bool:
            # Only now that it committed (a poison decision that fails to commit is retried, and not counted).
            log.error(message, extra={"instance_id": lease.instance_id, "orchestration_name": name})
            return publish()

        return report

    def _end_as_failed(
        self,
        turn: TurnTransaction,
        lease: InstanceLease,
        history: list[HistoryEvent],
        messages: list[tuple[int, dict[str, Any]]],
        details: dict[str, Any],
    ) -> AfterCommit:
        """Fail the orchestration with `details`, decided without its code (poison, or its code raised a
        BaseException): consume the messages, add OrchestrationStarted if it never started, tell its parent."""
        bodies = [m[1] for m in messages]
        name, version = _identity(lease, history, bodies)
        result = poisoned_turn(history, bodies, name, version, details, now_ms())
        changes = turn_changes(lease, result, [m[0] for m in messages], now_ms(), None)
        plan = turn.commit(changes)
        return partial(self._after_commit, lease, result, plan)

    def _after_commit(self, lease: InstanceLease, result: TurnResult, plan: PublishPlan) -> bool:
        """Keep the engine of a still-running instance (its history is now the committed one), then publish
        (transactional outbox: a crash before or during publishing is healed by the recovery sweep). Returns
        whether more messages wait."""
        instance_id, exec_id = lease.instance_id, lease.execution_id
        key = (instance_id, exec_id)
        engine = result.replay_engine
        if result.status == "Running" and engine is not None and engine.resumable:
            self.engines.put(key, engine)
        else:
            self.engines.drop(key)
        self.metrics.record_turn(result, started_fresh(result))
        self.tracing.turn_committed(result)
        if self.fault is not None and self.fault.hit():
            log.warning("fault injected after the commit of a turn of %s: its publishes are dropped", instance_id)
            raise InjectedCrash(instance_id)
        self.publisher.activities(plan.activities)
        self.publisher.poke(plan.pokes)
        if plan.first_timer_at is not None:
            self.publisher.timers_created(plan.first_timer_at)
        if result.status in TERMINAL_STATUSES:
            endings.ended(instance_id)  # this process's waits return now, not at their next poll
        if result.status == "Failed":
            self._report_failure(lease, result)
        self._task.claimed = plan.inline  # run() runs it once this turn is over
        return plan.more

    def _report_failure(self, lease: InstanceLease, result: TurnResult) -> None:
        """Log an orchestration this turn failed, and have its task raise OrchestrationFailed at the end. A
        cancellation was asked for: it is logged (INFO), not raised."""
        details = result.error or {}
        kind = str(details.get("kind") or details.get("category") or "Failed")
        error = clip(str(details.get("message", "")))
        name = result.orchestration_name or lease.orchestration_name
        fields = {"instance_id": lease.instance_id, "execution_id": lease.execution_id, "orchestration_name": name}
        if kind == "Cancelled":
            log.info("instance %s (%s) was cancelled: %s", lease.instance_id, name, error, extra=fields)
            return
        worker_log.warning(
            "orchestration %r of instance %s (execution %d) failed [%s]: %s",
            name,
            lease.instance_id,
            lease.execution_id,
            kind,
            error,
            extra={**fields, "error_type": kind},
        )
        self._task.failed = OrchestrationFailed(
            f"orchestration '{name}' of instance {lease.instance_id} (execution {lease.execution_id}) failed "
            f"[{kind}]: {error}"
        )


def _identity(
    lease: InstanceLease, history: list[HistoryEvent], bodies: list[dict[str, Any]]
) -> tuple[str, str | None]:
    """The orchestration's name and version: from its history, else from its start message, else the lease's."""
    start = next((b for b in bodies if b["kind"] in (ev.MSG_START, ev.MSG_CONTINUE_AS_NEW)), None)
    name = history[0].data["name"] if history else (start or {}).get("name", lease.orchestration_name)
    version = history[0].data.get("version") if history else (start or {}).get("version")
    return name, version


def _base_exception_failure(exc: BaseException) -> dict[str, Any]:
    """The failure of an orchestration whose code raised a BaseException: what the engine records for an Exception
    (`<type>: <message>`, then the traceback), catchable by a parent like any other failure."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    except Exception:  # noqa: BLE001 - a broken __str__ can break the traceback's formatting too
        text = ""
    message = describe(exc) + (f"\n{text}" if text else "")
    return error_details(ev.APPLICATION, message, "OrchestrationFailed")


def _same_event(a: HistoryEvent, b: HistoryEvent) -> bool:
    """Whether two events are the same stored event (ids repeat across a delete and re-create; times do not)."""
    return (a.event_id, a.kind, a.timestamp_ms) == (b.event_id, b.kind, b.timestamp_ms)
