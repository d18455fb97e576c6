"""Timer firing and the recovery sweep: the store-driven halves of delivery. `DueWork` is the one scheduler round
that beat (duroxide_celery.beat) and the embedded runtime's scheduler thread both run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from ..providers.schedules import for_store
from ..providers.store import Store, now_ms
from .publish import Publisher

log = logging.getLogger(__name__)


#: Timers moved into inboxes per transaction.
TIMER_BATCH = 500


def fire_timers(
    store: Store, publisher: Publisher, *, timers: bool = True, deadlines: bool = True, timer_lead_ms: int = 0
) -> int:
    """Fire every timer due within `timer_lead_ms` (idempotently), fail the activities nobody claimed within their
    ttl, and poke the instances; returns how many instances were poked."""
    total = 0
    while timers:
        targets, fired = store.fire_due_timers(TIMER_BATCH, timer_lead_ms)  # (instance id, orchestration name)
        publisher.poke(targets)
        total += len(targets)
        if fired < TIMER_BATCH:
            break  # nothing else was due when this batch was taken: the next round looks again
    while deadlines:
        expired, admitted = store.expire_unclaimed()
        if not expired:
            break
        log.warning("%d activities were not picked up within their ttl and failed", len(expired))
        publisher.poke(expired)
        publisher.activities(admitted)  # held work let in by the slots the expired rows held
        total += len(expired)
    return total


def fire_what_is_due(store: Store, publisher: Publisher, timer_lead_ms: int = 0) -> int | None:
    """One scheduler round (beat's tick, the embedded scheduler): fire what the store says is due (timers
    `timer_lead_ms` ahead of their time), admit the work a rate limit held until now, then return when the next
    round is due (epoch ms; None if nothing waits): the next timer's time less the lead, or the next claim
    deadline, rate admission or schedule tick. Three round trips when something is due, one when nothing is (plus
    the schedules' due-index read, once a second)."""
    timer, deadline, admission = store.next_due()
    now = now_ms()
    timers_due = timer is not None and timer <= now + timer_lead_ms
    deadlines_due = deadline is not None and deadline <= now
    admission_due = admission is not None and admission <= now
    if timers_due or deadlines_due:
        fire_timers(store, publisher, timers=timers_due, deadlines=deadlines_due, timer_lead_ms=timer_lead_ms)
    if admission_due:
        publisher.activities(store.admit_due())
    if timers_due or deadlines_due or admission_due:
        timer, deadline, admission = store.next_due()
    schedule = fire_due_schedules(store, publisher)
    timer = None if timer is None else timer - timer_lead_ms
    return min((due for due in (timer, deadline, admission, schedule) if due is not None), default=None)


def fire_due_schedules(store: Store, publisher: Publisher, now: int | None = None) -> int | None:
    """Start the instances of the schedule ticks due by `now` (epoch ms; default the clock), each tick exactly once
    however many loops run, and wake them after each commit; returns when the next tick falls due, or None."""
    return for_store(store).fire_due(publisher.poke, now)


def sweep(store: Store, publisher: Publisher, older_than_ms: int) -> dict[str, int]:
    """Poke instances whose inbox holds old messages and republish activities nobody holds. Duplicates are
    harmless: every handler is idempotent against the store."""
    # Held starts whose limit has room (a slot freed by a path that does not admit) are woken with the rest.
    instances = store.admit_waiting_starts() + store.stale_instances(older_than_ms)
    failure: Exception | None = None
    try:
        publisher.poke(instances, force=True)
    except Exception as exc:  # noqa: BLE001 - the activities below are still due; raised after them
        log.warning("recovery sweep could not republish %d instance pokes: %s", len(instances), exc)
        failure = exc
    # Held work whose limit has room (a slot freed by a prune or a delete, a limit raised or removed) is admitted
    # here; it is published with the rest. Held work itself is never republished: it waits in the store.
    activities = store.admit_waiting() + store.stale_work_items(older_than_ms)
    # Rows the broker refuses one by one (e.g. a queue name too long for AMQP) are isolated and failed by the
    # publisher (Publisher.on_unpublishable): one bad row never stops the sweep for the other instances.
    publisher.activities(activities)
    if failure is not None:
        raise failure
    if instances or activities:
        log.info("recovery sweep republished %d instance pokes and %d activities", len(instances), len(activities))
    return {"instances": len(instances), "activities": len(activities)}


def wake_backed_off(store: Store, publisher: Publisher, orchestration_names: Iterable[str]) -> None:
    """A worker that brings handlers (a rolling deploy) retries the instances that backed off for lack of them now,
    instead of after the rest of their backoff."""
    names = list(orchestration_names)
    if names:
        woken = store.wake_backed_off(names)
        if woken:
            publisher.poke(woken, force=True)


class DueWork:
    """One scheduler's rounds over the store: the recovery sweep every `interval_s` (the first one, with threshold 0,
    republishes everything a previous process left pending), then due timers and claim deadlines. A failed round
    is retried after a delay that doubles from `retry_s` up to `retry_max_s`, logged with its traceback the first
    time and in one line after that; it never stops the caller's loop.

    `timer_lead_ms` fires timers that much ahead of their time, so that the turn consuming one has leased and loaded
    its instance when it falls due, and waits out the rest (tasks/turn.py: no turn consumes a timer early). It
    applies only where a turn can wait without holding a transaction (`Store.turns_may_wait`, PostgreSQL); on
    SQLite a turn that meets an early timer gives its lease back and comes back later, which only adds lateness."""

    def __init__(
        self,
        store: Callable[[], Store],
        publisher: Publisher,
        *,
        interval_s: float,
        threshold_ms: int,
        max_sleep_s: float,
        retry_s: float,
        retry_max_s: float,
        timer_lead_ms: int = 0,
        logger: logging.Logger = log,
    ):
        self._store = store  # a callable: the store is built in the process (and thread) that runs the rounds
        self._publisher = publisher
        self._interval_s = interval_s
        self._threshold_ms = threshold_ms
        self._max_sleep_s = max_sleep_s
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._timer_lead_ms = timer_lead_ms
        self._log = logger
        self._sweep_threshold_ms = 0
        self._next_sweep = 0.0
        self._retry_at = 0.0
        self._failures = 0

    def round(self, now: float | None = None) -> float:
        """Sweep if due, fire what is due; returns how long (seconds) the caller may sleep before the next round."""
        now = time.monotonic() if now is None else now
        if now < self._retry_at:
            return self._retry_at - now
        try:
            store = self._store()
            if now >= self._next_sweep:
                sweep(store, self._publisher, self._sweep_threshold_ms)
                self._sweep_threshold_ms = self._threshold_ms
                self._next_sweep = now + self._interval_s
            # One cheap read while idle; the firing transaction only when something is due.
            lead = self._timer_lead_ms if store.turns_may_wait else 0
            due = fire_what_is_due(store, self._publisher, lead)
        except Exception as exc:  # noqa: BLE001 - a database or broker blip must not stop the scheduler
            return self._failed(now, exc)
        if self._failures:
            self._log.warning("durable timers / recovery sweep work again after %d failures", self._failures)
            self._failures = 0
        if due is None:
            return self._max_sleep_s
        # From the unrounded clock: now_ms() rounds down, so a sleep computed from it would end up to 1 ms before
        # `due`, and that round would find nothing due and only cost another read.
        return min(self._max_sleep_s, max(0.0, due / 1000 - time.time()))

    def _failed(self, now: float, exc: Exception) -> float:
        self._failures += 1
        delay = min(self._retry_s * 2 ** (self._failures - 1), self._retry_max_s)
        self._retry_at = now + delay
        if self._failures == 1:
            self._log.exception("durable timers / recovery sweep failed; retrying in %.1f s", delay)
        else:
            self._log.warning(
                "durable timers / recovery sweep failed again (%d in a row): %s; retrying in %.1f s",
                self._failures,
                exc,
                delay,
            )
        return delay
