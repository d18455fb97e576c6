"""The activity task: claim the work row (lease), run the function, record the outcome at most once, poke.

A duplicate delivery finds the row leased or gone and does nothing; a lost lease (worker death, cancellation)
means the outcome is dropped, because the row no longer belongs to this worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..activity_context import ActivityContext
from ..errors import ActivityFailed
from ..observability.otel import ActivitySpan
from ..options import RuntimeOptions
from ..providers import Provider
from ..providers.store import (
    ClaimedWorkItem,
    PendingActivity,
    RecordedOutcome,
    SessionBusy,
    SessionPolicy,
    now_ms,
)
from ..replay import events as ev
from ..replay.events import dumps, error_details, loads
from .executor_parts import ExecutorParts, PartsExecutor, StoreSource
from .failures import clip, describe, lease_owner, raised_by_user_code, when, worker_log
from .identity import WorkerIdentity
from .turn import unregistered_backoff_ms

log = logging.getLogger(__name__)

Key = tuple[str, int, int]
#: A running activity execution: its row and its own lease owner (two executions of one row may overlap in one
#: process when a lease lapsed and another thread took the row over).
Held = tuple[Key, str]

#: How often running activities learn that their work item was cancelled or taken (seconds).
CANCEL_CHECK_S = 0.5
#: A session activity refused by a worker at its session cap is offered again after this long (seconds).
SESSION_CAP_RETRY_S = 0.5


class LeaseRenewer:
    """Renews the leases of running activities so they can run for hours; a renewal that fails (row deleted by a
    cancel, or taken after expiry) flips the activity's `is_cancelled()`."""

    def __init__(self, *, store: StoreSource, settings: RuntimeOptions, identity: WorkerIdentity):
        self.store = store
        self.settings = settings
        self.identity = identity
        self._running: dict[Held, ActivityContext] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.stopped = False
        self._cancelled_at: dict[Held, float] = {}
        self._overdue: set[Held] = set()
        #: Whether this worker may hold sessions (set on a session claim; cleared when renewal finds none left).
        self.holds_sessions = False
        self._session_claims = 0  # counts claims, so a renewal that raced a claim does not clear the flag

    def session_claimed(self) -> None:
        """Start the heartbeat of this worker's sessions (they must be renewed even while idle)."""
        with self._lock:
            self.holds_sessions = True
            self._session_claims += 1
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="duroxide-lease-renewer", daemon=True)
            self._thread.start()

    def track(self, held: Held, ctx: ActivityContext) -> None:
        with self._lock:
            self._running[held] = ctx
            self._ensure_thread()

    def untrack(self, held: Held) -> None:
        with self._lock:
            self._running.pop(held, None)

    def stop(self) -> None:
        self.stopped = True
        self._wake.set()

    def _loop(self) -> None:
        renew_every = self.settings.worker_renewal_interval_s
        session_every = self.settings.session_renewal_interval_s
        next_renewal = time.monotonic() + renew_every
        next_session_renewal = time.monotonic() + session_every
        while not self.stopped:
            # Between renewals, a cheap ownership check every CANCEL_CHECK_S tells a race loser or a cancelled
            # instance's activity that its work is gone within a second, not a renewal interval.
            self._wake.wait(min(CANCEL_CHECK_S, renew_every, session_every))
            if self.stopped:
                return
            with self._lock:
                running = dict(self._running)
            if self.holds_sessions and time.monotonic() >= next_session_renewal:
                next_session_renewal = time.monotonic() + session_every
                self._renew_sessions(running)
            if not running:
                next_renewal = time.monotonic() + renew_every
                continue
            store = self.store()
            try:
                if time.monotonic() >= next_renewal:
                    lost = store.renew_work_items(list(running), self.settings.worker_lock_ms)
                    next_renewal = time.monotonic() + renew_every
                else:
                    lost = set(running) - store.owned_work_items(list(running))
            except Exception:  # noqa: BLE001 - a database blip: try again next round
                log.exception("activity lease renewal failed")
                continue
            now = time.monotonic()
            for key in lost:
                running[key]._cancel()
                self._cancelled_at.setdefault(key, now)
            self._report_overdue(running, now)

    def _renew_sessions(self, running: dict[Held, ActivityContext]) -> None:
        opts = self.settings
        busy = [ctx.session_id for ctx in running.values() if ctx.session_id]
        with self._lock:
            claims_before = self._session_claims
        try:
            held = self.store().renew_sessions(
                self.identity.worker_id, opts.session_lock_ms, opts.session_idle_ms, busy
            )
        except Exception:  # noqa: BLE001 - a database blip: try again next round
            log.exception("session renewal failed")
            return
        if not held:
            with self._lock:
                if self._session_claims == claims_before:  # no claim since the renewal read the store
                    self.holds_sessions = False

    def _report_overdue(self, running: dict[Held, ActivityContext], now: float) -> None:
        """Python cannot stop a thread: an activity that ignores is_cancelled() past the grace period is named in
        a warning (its result will be dropped when it returns), so an operator can see the stuck work."""
        grace = self.settings.cancellation_grace_s
        for key, since in list(self._cancelled_at.items()):
            if key not in running:
                del self._cancelled_at[key]
            elif now - since > grace and key not in self._overdue:
                self._overdue.add(key)
                log.warning(
                    "activity %s of %s is still running %.0f s after it was cancelled; its result will be dropped",
                    running[key].activity_name,
                    key[0][0],
                    now - since,
                    extra={"instance_id": key[0][0], "activity_name": running[key].activity_name},
                )


class _Later(threading.local):
    #: The failure of an activity that this task's inline turns ran (tasks/inline.py), raised at the task's end.
    failed: ActivityFailed | None = None


class ActivityExecutor(PartsExecutor):
    """Runs the activities of one worker process, every collaborator passed explicitly. `identity` is read at each
    use: a worker bootstep may change it after install, before the worker consumes (Runtime.configure_worker)."""

    def __init__(self, parts: ExecutorParts, *, provider: Provider):
        super().__init__(parts)
        #: What an activity's `ctx.get_client()` opens (the store's location, not this process's Store).
        self.provider = provider
        self.renewer = self._new_renewer()
        #: Runs the next turns of an instance whose activity completed here, instead of a poke, and returns the
        #: failure of an activity they ran inline (install.py wires the TurnExecutor's; None: always poke).
        self.next_turn: Callable[[str], ActivityFailed | None] | None = None
        self._later = _Later()  # per pool thread

    def _new_renewer(self) -> LeaseRenewer:
        return LeaseRenewer(store=self.store, settings=self.settings, identity=self.identity)

    def restart_renewer(self) -> None:
        """A runtime started again after shutdown() stopped the lease renewer for good gets a fresh one."""
        if self.renewer.stopped:
            self.renewer = self._new_renewer()

    def run(self, key: Key) -> None:
        """One activity task, traced (observability/otel.py: its span begins once the row is claimed). An activity
        that the turns run after it ran inline and that failed ends this task as FAILURE, unless its own did."""
        self._later.failed = None
        with self.tracing.activity_attempt(self.store(), self.identity.worker_id) as span:
            self._claimed_run(key, span)
        failed, self._later.failed = self._later.failed, None
        if failed is not None:
            raise failed

    def run_claimed(self, item: ClaimedWorkItem) -> bool:
        """Run an activity row that a turn of this worker claimed in its commit (tasks/inline.py); True once its
        outcome is recorded: the caller runs the instance's next turn itself (no poke). A failure is recorded and
        logged as from a task, then raised (ActivityFailed) for the caller's task to end as FAILURE."""
        with self.tracing.activity_attempt(self.store(), self.identity.worker_id) as span:
            span.claimed(item)
            fn = self.registry.activities.get(item.name)
            if fn is None:  # unregistered since the turn looked: given back, as for a delivered row
                self._unregistered(item)
                return False
            return self._execute(item, fn, wake=False)

    def _claimed_run(self, key: Key, span: ActivitySpan) -> None:
        """Claim the activity row, run its function, record the outcome (at most once), wake the orchestration."""
        options = self.settings
        node = self.identity.worker_id
        # This execution's own lease owner; its session (if any) is the worker node's.
        owner = lease_owner(node)
        policy = SessionPolicy(options.session_lock_ms, options.max_sessions)
        item = self.store().claim_work_item(key, owner, options.worker_lock_ms, policy, node=node)
        if item is None:
            return  # already done, cancelled, expired, or running on a live worker
        if isinstance(item, SessionBusy):
            self._reroute(key, item)
            return
        span.claimed(item)
        if item.session_id is not None:
            self.renewer.session_claimed()
        if item.attempt_count > options.max_attempts_value:
            message = (
                f"poison: activity {item.name}#{item.event_id} exceeded {item.attempt_count} attempts "
                f"(max {options.max_attempts_value})"
            )
            details = error_details(ev.POISON, message, "Poison")
            self.metrics.record_activity(False, {"details": details}, item.name, item.attempt_count)
            self._fail(item, details, f"Poison: {message}")
            return
        fn = self.registry.activities.get(item.name)
        if fn is None:
            self._unregistered(item)
            return
        self._execute(item, fn)

    def _unregistered(self, item: ClaimedWorkItem) -> None:
        """No function for this activity on this worker (a rolling deploy?): give the row back for a while and say
        why, or, past the attempt bound, fail it as a configuration error."""
        max_attempts = self.settings.max_attempts_value
        if item.attempt_count >= max_attempts:
            message = (
                f"activity '{item.name}' is not registered on any worker that took it ({item.attempt_count} attempts)"
            )
            details = error_details(ev.CONFIGURATION, message, "Unregistered")
            self.metrics.record_activity(False, {"details": details}, item.name, item.attempt_count)
            self._fail(item, details, f"Unregistered: {message}")
            return
        delay = unregistered_backoff_ms(item.attempt_count)
        retry_at = when(now_ms() + delay)
        worker_log.warning(
            "instance %s (execution %d) waits: activity %r is not registered on this worker; retrying at %s "
            "(attempt %d of %d)",
            item.instance_id,
            item.execution_id,
            item.name,
            retry_at,
            item.attempt_count,
            max_attempts,
            extra={"instance_id": item.instance_id, "execution_id": item.execution_id, "activity_name": item.name},
        )
        reason = f"activity '{item.name}' is not registered on any worker that took it; retrying at {retry_at}"
        key = (item.instance_id, item.execution_id, item.event_id)
        self.store().abandon_work_item(key, item.owner, now_ms() + delay, waiting_reason=reason)
        node = self.identity.worker_id if item.session_id else None  # its session is ours now
        again = PendingActivity(*key, item.name, item.session_id, item.tag, node)
        self.publisher.activities([again], countdown=delay / 1000 + 0.05)

    def _execute(self, item: ClaimedWorkItem, fn: Callable[..., Any], *, wake: bool = True) -> bool:
        """Run the function with its context, its lease renewed meanwhile; record what it returned or raised, and
        (`wake`) wake the orchestration. True when the outcome was recorded."""
        ctx = ActivityContext(
            instance_id=item.instance_id,
            execution_id=item.execution_id,
            orchestration_name=item.orchestration_name or "",
            orchestration_version=item.orchestration_version or "",
            activity_name=item.name,
            worker_id=self.identity.worker_id,
            session_id=item.session_id,
            _tag=item.tag,
            _provider=self.provider,
        )
        held = ((item.instance_id, item.execution_id, item.event_id), item.owner)
        self.renewer.track(held, ctx)
        error = ""
        try:
            value = fn(ctx, loads(item.input))
            try:
                kind, payload = ev.MSG_ACTIVITY_COMPLETED, {"result": dumps(value)}
            except Exception as exc:  # noqa: BLE001 - any value that does not serialize fails the activity
                bad = TypeError(f"activity returned a value that is not JSON-serializable ({describe(exc)})")
                error = f"TypeError: {bad}"
                kind, payload = ev.MSG_ACTIVITY_FAILED, {"details": _failure(item.name, bad)}
        except BaseException as exc:
            # The activity's own failure, delivered to the orchestration as catchable, once: an Exception, or a
            # SystemExit/KeyboardInterrupt/GeneratorExit its code raised (re-running it would repeat its side
            # effects, then poison it). A stop of the worker process itself propagates: the row is run again.
            if not isinstance(exc, Exception) and not raised_by_user_code(exc):
                raise
            error = describe(exc)
            kind, payload = ev.MSG_ACTIVITY_FAILED, {"details": _failure(item.name, exc)}
        finally:
            self.renewer.untrack(held)
        self.metrics.record_activity(kind == ev.MSG_ACTIVITY_COMPLETED, payload, item.name, item.attempt_count)
        if kind == ev.MSG_ACTIVITY_FAILED:
            return self._fail(item, payload["details"], error, wake=wake)  # type: ignore[arg-type]
        return self._complete(item, payload["result"], wake=wake)  # type: ignore[arg-type]

    def _reroute(self, key: Key, busy: SessionBusy) -> None:
        """A session activity this worker may not run: hand it to the session's owner, or (at our session cap)
        back to the claim path after a short pause, for a worker with room."""
        item = busy.activity
        if item is None:
            return
        name, session_id = item.name, item.session_id
        if busy.owner is not None:
            log.debug("activity %s#%s belongs to session %s of %s: rerouted", name, key[2], session_id, busy.owner)
            self.publisher.activities([item])
        else:
            log.info(
                "at max_sessions_per_runtime (%d): session %s goes back to the queue",
                self.settings.max_sessions,
                session_id,
            )
            self.publisher.activities([item], countdown=SESSION_CAP_RETRY_S)

    def _complete(self, item: ClaimedWorkItem, result: str, *, wake: bool = True) -> bool:
        """Record the activity's result (JSON text) and wake the orchestration (`wake`); True when recorded."""
        key = (item.instance_id, item.execution_id, item.event_id)
        node = self.identity.worker_id
        recorded = self.store().complete_work_item(key, item.owner, result, item.session_id, node=node)
        return self._woken(item, recorded, wake)

    def _woken(self, item: ClaimedWorkItem, recorded: RecordedOutcome | None, wake: bool = True) -> bool:
        """After recording an outcome: publish the held work the freed slot let in (flow control) and wake the
        orchestration (`wake`); False (and a note) when the outcome was dropped."""
        if recorded is not None:
            if recorded.admitted:
                self.publisher.activities(recorded.admitted)
            if wake:
                self._wake(item, recorded)
            return True
        log.info(
            "outcome of activity %s#%s dropped: its work item was cancelled or taken over",
            item.name,
            item.event_id,
            extra={"instance_id": item.instance_id, "activity_name": item.name},
        )
        return False

    def _wake(self, item: ClaimedWorkItem, recorded: RecordedOutcome) -> None:
        """Run the instance's next turn here when this worker serves orchestrations and the instance has no other
        activity in flight (tasks/inline.py), else poke; neither when a turn holding the lease will take the outcome
        (RecordedOutcome.wake): the completions of a fan-out coalesce into a few turns, not a turn or poke each."""
        if not recorded.wake:
            return  # a turn holds the lease and drains again after its commit: it takes this outcome
        inline = self.inline
        if (
            self.next_turn is not None
            and inline is not None
            and not recorded.others_pending
            and inline.runs_next_turn(item.orchestration_name, item.orchestration_version)
        ):
            self._later.failed = self.next_turn(item.instance_id) or self._later.failed
        else:
            self.publisher.poke([(item.instance_id, item.orchestration_name)])

    def _fail(self, item: ClaimedWorkItem, details: dict[str, object], error: str, *, wake: bool = True) -> bool:
        """Record a failed activity and wake its orchestration, as for any outcome; then log it and raise
        ActivityFailed, so that Celery marks the task FAILURE (acked at start: never redelivered). A failure
        dropped with its work item (cancelled, or taken over after a lapsed lease) is nobody's news: no raise.
        `error` reads `<error type>: <text>`; only its first line, clipped, reaches logs and task events."""
        key = (item.instance_id, item.execution_id, item.event_id)
        node = self.identity.worker_id
        recorded = self.store().fail_work_item(key, item.owner, details, item.session_id, node=node)
        if not self._woken(item, recorded, wake):
            return False
        error_type = error.split(":", 1)[0]
        error = clip(error)
        worker_log.warning(
            "activity %r of instance %s (execution %d, event %d) failed: %s",
            item.name,
            item.instance_id,
            item.execution_id,
            item.event_id,
            error,
            extra={
                "instance_id": item.instance_id,
                "execution_id": item.execution_id,
                "activity_name": item.name,
                "orchestration_name": item.orchestration_name,
                "error_type": error_type,
            },
        )
        raise ActivityFailed(
            f"{error} (activity '{item.name}' of instance {item.instance_id}, execution {item.execution_id}, event "
            f"{item.event_id}; recorded: its orchestration handles the failure, and runs the activity again only "
            "if its retry policy says so)"
        )


def _failure(name: str, exc: BaseException) -> dict[str, object]:
    return error_details(ev.APPLICATION, f"Activity '{name}' call failed: {describe(exc)}", "ActivityFailed")
