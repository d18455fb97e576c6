"""Durable timers and the recovery sweep in Celery beat, with any scheduler class.

`DurableTimers` is a mixin for any `celery.beat.Scheduler` subclass. Beat keeps running the base scheduler's
periodic tasks exactly as it would without the mixin (same entries, same entry model, ticked at the times the
base scheduler asks for), and in between the mixin works straight on the store, in the beat process:

- it fires due durable timers: sleeps until the earliest one (at most `max_timer_sleep` seconds, so timers that
  turns create meanwhile are seen soon), moves due timers into their instances' inboxes in one transaction and
  pokes them. On PostgreSQL it fires them `timer_lead_ms` ahead: the turn that takes one waits for its time, which
  it reaches already leased and loaded (no turn consumes a timer early). Firing is idempotent (each timer row is
  deleted by exactly one firer), so two beats, or a beat restarted mid-fire, never fire a timer twice into history;
- in the same round it starts the instances of due schedule ticks (Client.create_schedule), each tick once however
  many beats run (README "Schedules");
- every `RuntimeOptions.recovery_interval_ms` it runs the recovery sweep, which republishes work the store says is
  pending and undelivered for longer than `recovery_threshold_ms` (the first sweep after beat starts republishes
  everything pending). No beat entry and no Celery task message is involved: Flower's task list shows none.

A database error is logged and retried at a later tick; it never stops beat, nor the base scheduler's entries.

Ready-made combinations:

    celery -A proj beat -S duroxide_celery.beat:TimerScheduler                  # celery's PersistentScheduler
    celery -A proj worker -B --scheduler duroxide_celery.beat:TimerScheduler    # beat embedded in a worker
    celery -A proj beat -S duroxide_celery.beat.django:DatabaseScheduler        # django-celery-beat
    celery -A proj beat -S duroxide_celery.beat.redbeat:RedBeatScheduler        # celery-redbeat

Any other scheduler: `class MyScheduler(DurableTimers, TheirScheduler): pass` (the mixin first).

For `celery worker`, `-S` means `--statedb`: `worker -B -S duroxide_celery.beat:TimerScheduler` creates a state file
of that name and runs celery's default scheduler, without durable timers. Spell it `--scheduler`, or set the app's
`beat_scheduler` setting.

The runtime is the one `Runtime(provider, options, app=app)` attached to the app that `celery -A` loads.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import beat

from ..tasks.binding import runtime_of
from ..tasks.recovery import DueWork

log = logging.getLogger("duroxide_celery.beat")

__all__ = ["DurableTimers", "TimerScheduler", "warn_without_durable_timers"]


class DurableTimers:
    """Mixin for a `celery.beat.Scheduler` subclass: fires durable timers and runs the recovery sweep in `tick`.

    Use it first among the bases, `class MyScheduler(DurableTimers, TheirScheduler)`, so that its `tick` wraps
    theirs. It touches neither the schedule nor its entries, so it works with any entry model.
    """

    #: Longest sleep between looks at the timer table (seconds).
    max_timer_sleep = 0.1
    #: Timers fire this much ahead of their time (ms), so that the turn that consumes one is under way when it falls
    #: due; the turn itself never consumes it early (DueWork, tasks/turn.py). About the time from the firing
    #: transaction to a loaded turn: more only keeps turn threads waiting.
    timer_lead_ms = 20
    #: After a failed store round, the next one comes this much later (seconds), doubling up to the maximum.
    store_retry_s = 0.5
    store_retry_max_s = 5.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if beat.Scheduler in mro and mro.index(beat.Scheduler) < mro.index(DurableTimers):
            # Their tick would run instead of ours and timers would silently never fire.
            raise TypeError(
                f"{cls.__qualname__}: put DurableTimers before the scheduler class among the bases, "
                f"e.g. class {cls.__name__}(DurableTimers, TheirScheduler)"
            )

    def __init__(self, app: Any, *args: Any, **kwargs: Any):
        runtime = runtime_of(app)
        if runtime is None:
            raise RuntimeError(
                f"{type(self).__name__} needs a duroxide Runtime on this Celery app: create "
                "Runtime(provider, options, app=app) in the module that `celery -A` loads"
            )
        self._duroxide = runtime
        #: When (time.monotonic) the base scheduler asked to be ticked next.
        self._duroxide_base_due = 0.0
        self._duroxide_due_work = DueWork(
            lambda: runtime.store,
            runtime.publisher,
            interval_s=runtime.options.recovery_interval_s,
            threshold_ms=runtime.options.recovery_threshold,
            max_sleep_s=self.max_timer_sleep,
            retry_s=self.store_retry_s,
            retry_max_s=self.store_retry_max_s,
            timer_lead_ms=self.timer_lead_ms,
            logger=log,
        )
        super().__init__(app, *args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now = time.monotonic()
        if now >= self._duroxide_base_due:
            # Ticked only when it asked to be: a scheduler that reads its schedule from a database or Redis on
            # every tick (django-celery-beat, redbeat) is not polled at the timer rate.
            base_wait = super().tick(*args, **kwargs)  # type: ignore[misc]
            now = time.monotonic()
            self._duroxide_base_due = now + max(0.0, base_wait or 0.0)
        wait = self._duroxide_due_work.round(now)
        return max(0.0, min(wait, self._duroxide_base_due - time.monotonic()))

    @property
    def info(self) -> str:
        base = super().info  # type: ignore[misc]
        runtime = self._duroxide
        ours = (
            f"    . durable timers -> {runtime.provider!r}, "
            f"recovery sweep every {runtime.options.recovery_interval_s:g} s in this process"
        )
        return f"{base}\n{ours}" if base else ours


class TimerScheduler(DurableTimers, beat.PersistentScheduler):
    """Celery's default scheduler (the app's `beat_schedule`, kept in the `-s` shelve file) plus durable timers
    and the recovery sweep: `celery -A proj beat -S duroxide_celery.beat:TimerScheduler`."""


def warn_without_durable_timers(sender: Any = None, **_: Any) -> None:
    """A `celery.signals.beat_init` handler: a beat (standalone or `worker -B`) of an app that has a duroxide Runtime,
    whose scheduler lacks DurableTimers, fires no durable timer and runs no recovery sweep. Say so, and how to fix
    it (the usual cause: `celery worker -B -S ...`, where -S is --statedb). tasks/hooks.py connects it for every
    app with a Runtime."""
    app = getattr(sender, "app", None)
    if runtime_of(app) is None:
        return
    scheduler = getattr(sender, "scheduler", None)
    if scheduler is None or isinstance(scheduler, DurableTimers):
        return
    cls = type(scheduler)
    log.warning(
        "beat runs %s.%s, which has no durable timers: no timer fires and no recovery sweep runs in this beat. Use "
        "`celery -A proj beat -S duroxide_celery.beat:TimerScheduler` or `celery -A proj worker -B --scheduler "
        "duroxide_celery.beat:TimerScheduler` (for `celery worker`, -S means --statedb), or combine your scheduler: "
        "class MyScheduler(DurableTimers, %s)",
        cls.__module__,
        cls.__qualname__,
        cls.__name__,
    )
