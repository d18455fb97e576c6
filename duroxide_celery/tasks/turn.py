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
import traceback
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import OrchestrationFailed
from ..providers.store import LeaseLost, PendingActivity, now_ms
from ..providers.turn_shapes import TurnTransaction
from ..replay import events as ev
from ..replay.commands import (
    CancelActivity,
    CancelInstance,
    CancelTimer,
    NotifyParent,
    ScheduleActivity,
    ScheduleTimer,
    StartOrchestration,
    TurnInput,
    TurnResult,
)
from ..replay.engine import ReplayEngine
from ..replay.events import REPLAY_VERSION, HistoryEvent, error_details
from ..replay.poison import poisoned_turn
from ..types import TERMINAL_STATUSES
from .engine_cache import LruCache
from .failures import clip, describe, lease_owner, raised_by_user_code, when, worker_log

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

#: How many inbox drains one task performs before handing the instance back to the queue (fairness).
MAX_DRAINS_PER_TASK = 20


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


class TurnExecutor:
    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.engines: LruCache[ReplayEngine] = LruCache(max_bytes=runtime.options.engine_cache_bytes)
        self.fault = FaultAfterCommit.from_env()
        self._task = _TaskState()  # one per pool thread: tasks of a thread pool share this executor

    def run(self, instance_id: str) -> None:
        """The turns of one task. When one of them failed the orchestration, raise OrchestrationFailed once all
        is committed and published, so that Celery marks the task FAILURE; the turn task acks failures, so this
        never runs the turn again (and a later delivery would find nothing to do)."""
        self._task.failed = None
        if self.rt.publisher.pending is not None:
            self.rt.publisher.pending.taken(instance_id)
        for _ in range(MAX_DRAINS_PER_TASK):
            if not self._turn(instance_id):
                break
        else:
            self.rt.publisher.poke([instance_id])
        failed, self._task.failed = self._task.failed, None
        if failed is not None:
            raise failed

    def _turn(self, instance_id: str) -> bool:
        """One turn; True when the inbox may hold more work for this instance. Its transactions (one, or a lease
        then a fenced commit) are the store's business: `Store.begin_turn`."""
        rt = self.rt
        owner = lease_owner(rt.worker_id)  # this turn's own: a turn that lost its lease fails every owner check
        turn = rt.store.begin_turn(instance_id, owner, rt.options.orchestrator_lock_ms)
        name: str | None = None  # the orchestration's, once leased: the retry poke then reads orch:<Name>#<id>
        try:
            with turn:
                lease = turn.lease
                if lease is None:
                    return False  # no message (a duplicate or late poke), or the lease holder re-reads the inbox
                name = lease.orchestration_name
                history, messages, kv_snapshot = self._load(turn, lease)
                turn.replay_starts()
                if messages:
                    outcome = self._decide(turn, lease, history, messages, kv_snapshot)
                    if outcome is None:
                        return False  # poisoned or backed off, and written
                    result, msg_ids = outcome
                else:
                    result, msg_ids = None, []
                if result is None or result.status == "Idle":
                    return turn.release(reset_attempts=True, consumed_ids=msg_ids)
                plan = turn.commit(lambda conn, more: self._write(conn, lease, result, msg_ids, check_inbox=more))
            self._after_commit(lease, history, result, plan)
            return plan["more"]
        except LeaseLost:
            log.warning("lease on %s lost during its turn; another worker redoes it", instance_id)
            return False
        except InjectedCrash:
            return False  # a simulated crash: no retry poke either; only the recovery sweep may heal this
        except Exception as exc:
            log.exception("turn of %s failed; it will be retried", instance_id, extra={"instance_id": instance_id})
            try:
                turn.record_failed_attempt(clip(f"turn attempt failed: {describe(exc)}"))
            finally:
                rt.publisher.poke([(instance_id, name)], countdown=1.0)
            return False
        except BaseException as exc:
            # The worker process is being stopped (orchestration code's own BaseExceptions are recorded failures,
            # see _decide): count the attempt and give the lease back, then let the stop proceed.
            try:
                turn.record_failed_attempt(clip(f"turn attempt failed: {describe(exc)}"))
            except Exception:  # noqa: BLE001 - best effort on the way out; the lease lapses anyway
                pass
            raise

    def _load(self, turn: TurnTransaction, lease: Any) -> tuple[list[HistoryEvent], list[Any], dict[str, Any]]:
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
        lease: Any,
        history: list[HistoryEvent],
        messages: list[Any],
        kv_snapshot: dict[str, Any],
    ) -> tuple[TurnResult, list[int]] | None:
        """Run the replay; None when the turn ended here (poisoned, or backed off for a missing handler)."""
        rt = self.rt
        msg_ids = [m[0] for m in messages]
        bodies = [m[1] for m in messages]
        if lease.attempt_count > rt.options.max_attempts_value:
            self._poison(turn, lease, history, bodies, msg_ids)
            return None
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
            activity_queue=rt.names.activities,  # tags are checked against this runtime's real queue names
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
            engine = ReplayEngine(inp, rt.resolve_orchestration)
            replay = engine.run
        try:
            result = replay()
        except Exception:
            raise  # the engine's own failure (not user code's: the engine records those): the turn is retried
        except BaseException as exc:
            if not raised_by_user_code(exc):
                raise
            # SystemExit, KeyboardInterrupt, GeneratorExit raised by the orchestration's code: deterministic, so
            # another attempt would raise it again. Fail the orchestration with it now, once.
            self._end_as_failed(turn, lease, history, bodies, msg_ids, _base_exception_failure(exc))
            return None
        result.replay_engine = engine
        if result.status == "Unregistered":
            self._backoff(turn, lease, result)
            return None
        return result, msg_ids

    def _backoff(self, turn: TurnTransaction, lease: Any, result: TurnResult) -> None:
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
            self.rt.options.max_attempts_value,
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
        self.rt.publisher.poke([(lease.instance_id, name)], countdown=delay / 1000 + 0.05)

    def _poison(
        self,
        turn: TurnTransaction,
        lease: Any,
        history: list[HistoryEvent],
        bodies: list[dict[str, Any]],
        msg_ids: list[int],
    ) -> None:
        """Fail an instance whose turns keep failing (or whose handler never appeared), with a clear reason."""
        rt = self.rt
        name, version = self._identity(lease, history, bodies)
        registered = rt.resolve_orchestration(name, version) is not None
        if not registered:
            reason = f": orchestration '{name}' (version {version or 'latest'}) is not registered"
        elif lease.waiting_reason:
            reason = f"; last attempt: {lease.waiting_reason}"  # what the failed attempts raised
        else:
            reason = ""
        message = (
            f"poison: orchestration {lease.instance_id} exceeded {lease.attempt_count} attempts "
            f"(max {rt.options.max_attempts_value}){reason}"
        )
        self._end_as_failed(turn, lease, history, bodies, msg_ids, error_details(ev.POISON, message, "Poison"))
        # Only now that it committed (a poison decision that fails to commit is retried, and not counted).
        log.error(message, extra={"instance_id": lease.instance_id, "orchestration_name": name})

    @staticmethod
    def _identity(lease: Any, history: list[HistoryEvent], bodies: list[dict[str, Any]]) -> tuple[str, str | None]:
        start = next((b for b in bodies if b["kind"] in (ev.MSG_START, ev.MSG_CONTINUE_AS_NEW)), None)
        name = history[0].data["name"] if history else (start or {}).get("name", lease.orchestration_name)
        version = history[0].data.get("version") if history else (start or {}).get("version")
        return name, version

    def _end_as_failed(
        self,
        turn: TurnTransaction,
        lease: Any,
        history: list[HistoryEvent],
        bodies: list[dict[str, Any]],
        msg_ids: list[int],
        details: dict[str, Any],
    ) -> None:
        """Fail the orchestration with `details`, decided without its code (poison, or its code raised a
        BaseException): consume the messages, add OrchestrationStarted if it never started, tell its parent."""
        name, version = self._identity(lease, history, bodies)
        result = poisoned_turn(history, bodies, name, version, details, now_ms())
        plan = turn.commit(lambda conn, _more: self._write(conn, lease, result, msg_ids))
        self._after_commit(lease, history, result, plan)

    def _write(
        self, conn: Any, lease: Any, result: TurnResult, msg_ids: list[int], check_inbox: bool = False
    ) -> dict[str, Any]:
        """Write everything the turn decided, in the caller's transaction; returns what to publish after it, and
        (`check_inbox`) whether more messages wait, read after the fence has row-locked the instance."""
        rt = self.rt
        store = rt.store
        instance_id, exec_id, owner = lease.instance_id, lease.execution_id, lease.owner
        now = now_ms()
        activities = [o for o in result.outgoing if isinstance(o, ScheduleActivity)]
        new_timers = [o for o in result.outgoing if isinstance(o, ScheduleTimer)]
        pokes: list[tuple[str, str | None]] = []
        started_fresh = bool(result.new_events) and result.new_events[0].kind == ev.ORCHESTRATION_STARTED
        exec_values, inst_values = self._state_changes(result, exec_id, started_fresh, now)
        # First: the fence (LeaseLost unless the lease is still ours) and the instance row lock until commit.
        store.finish_instance(conn, instance_id, owner, **inst_values)
        store.append_history(conn, instance_id, exec_id, result.new_events)
        more = store.delete_inbox(conn, msg_ids, more_of=instance_id if check_inbox else None)
        orch = (result.orchestration_name or "", result.orchestration_version or "")
        store.add_work_items(conn, instance_id, exec_id, orch, activities, now, rt.options.default_activity_ttl_ms)
        # Activities of a session some worker holds go straight to that worker's session queue.
        owners = store.session_owners(conn, (a.session_id for a in activities if a.session_id))
        store.delete_work_items(
            conn, instance_id, exec_id, [o.event_id for o in result.outgoing if isinstance(o, CancelActivity)]
        )
        store.add_timers(conn, instance_id, exec_id, new_timers)
        store.delete_timers(
            conn, instance_id, exec_id, [o.event_id for o in result.outgoing if isinstance(o, CancelTimer)]
        )
        for out in result.outgoing:
            if isinstance(out, StartOrchestration):
                parent = (instance_id, exec_id, out.parent_event_id) if out.parent_instance_id else None
                if store.create_instance(conn, out.instance_id, out.name, out.input, out.version, parent, now):
                    pokes.append((out.instance_id, out.name))
                elif parent is not None:
                    # An explicit child id that is already taken fails the parent's call at once, instead of
                    # hanging it (duroxide #40).
                    store.enqueue(
                        conn,
                        instance_id,
                        ev.MSG_SUB_FAILED,
                        {
                            "execution_id": exec_id,
                            "event_id": out.parent_event_id,
                            "details": error_details(
                                ev.APPLICATION,
                                f"sub-orchestration instance id '{out.instance_id}' already exists",
                                "SubOrchestrationFailed",
                            ),
                        },
                        now,
                    )
                    pokes.append((instance_id, None))  # we queued a message to ourselves: wake us for it
            elif isinstance(out, CancelInstance):
                status = store.instance_status(conn, out.instance_id)
                if status is not None and status not in TERMINAL_STATUSES:
                    store.enqueue(conn, out.instance_id, ev.MSG_CANCEL, {"reason": out.reason}, now)
                    pokes.append((out.instance_id, None))
            elif isinstance(out, NotifyParent):
                store.enqueue(
                    conn,
                    out.parent_instance_id,
                    out.kind,
                    {
                        "execution_id": out.parent_execution_id,
                        "event_id": out.parent_event_id,
                        "result": out.result,
                        "details": out.details,
                    },
                    now,
                )
                # The parent's name makes this poke read `orch:<Parent>#<id>` in Flower (one primary-key read).
                pokes.append((out.parent_instance_id, store.orchestration_name(conn, out.parent_instance_id)))
        store.apply_kv(conn, instance_id, result.kv_ops)
        if result.custom_status_changed:
            store.bump_custom_status(conn, instance_id, result.custom_status)
        if result.status == "ContinuedAsNew":
            can = result.continue_as_new or {}
            store.new_execution(conn, instance_id, exec_id + 1, result.kv_state, now)
            store.enqueue(conn, instance_id, ev.MSG_CONTINUE_AS_NEW, can, now)
            pokes.append((instance_id, result.orchestration_name))  # start the next execution now, not at a sweep
        store.update_execution(conn, instance_id, exec_id, **exec_values)
        return {
            "activities": activities,
            "session_owners": owners,
            "timers": new_timers,
            "pokes": pokes,
            "started": started_fresh,
            "more": more,
        }

    @staticmethod
    def _state_changes(
        result: TurnResult, exec_id: int, started_fresh: bool, now: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The execution row's and the instance row's new column values after this turn."""
        exec_values: dict[str, Any] = {}
        inst_values: dict[str, Any] = {}
        if started_fresh:
            exec_values.update(orchestration_version=result.orchestration_version, replay_version=REPLAY_VERSION)
            inst_values["orchestration_version"] = result.orchestration_version
        error_text = result.error["message"] if result.error else None
        if result.status in TERMINAL_STATUSES:
            exec_values.update(status=result.status, output=result.output, error=error_text, completed_at=now)
            inst_values.update(status=result.status, output=result.output, error=error_text)
        elif result.status == "ContinuedAsNew":
            can = result.continue_as_new or {}
            exec_values.update(status="ContinuedAsNew", output=can.get("input"), completed_at=now)
            inst_values.update(current_execution_id=exec_id + 1, status="Running", output=None, error=None)
        return exec_values, inst_values

    def _after_commit(self, lease: Any, history: list[HistoryEvent], result: TurnResult, plan: dict[str, Any]) -> None:
        """Keep the engine of a still-running instance (its history is now the committed one), then publish
        (transactional outbox: a crash before or during publishing is healed by the recovery sweep)."""
        rt = self.rt
        instance_id, exec_id = lease.instance_id, lease.execution_id
        key = (instance_id, exec_id)
        engine = getattr(result, "replay_engine", None)
        if result.status == "Running" and engine is not None and engine.resumable:
            self.engines.put(key, engine)
        else:
            self.engines.drop(key)
        rt.metrics.record_turn(result, plan["started"])
        if self.fault is not None and self.fault.hit():
            log.warning("fault injected after the commit of a turn of %s: its publishes are dropped", instance_id)
            raise InjectedCrash(instance_id)
        owners = plan["session_owners"]
        rt.publisher.activities(
            PendingActivity(instance_id, exec_id, a.event_id, a.name, a.session_id, a.tag, owners.get(a.session_id))
            for a in plan["activities"]
        )
        rt.publisher.poke(plan["pokes"])
        if plan["timers"]:
            rt.publisher.timers_created(min(t.fire_at_ms for t in plan["timers"]))
        if result.status == "Failed":
            self._report_failure(lease, result)

    def _report_failure(self, lease: Any, result: TurnResult) -> None:
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
