"""Celery beat scheduler that drives durable timers and the recovery sweep.

Run: `celery -A proj beat -S duroxide_celery.beat:TimerScheduler` (or a worker with `-B -S ...`). It keeps beat's
own periodic tasks working, and between them fires due timers straight from the store: it sleeps until the
earliest timer (at most `max_timer_sleep` seconds, so timers created meanwhile are seen soon), moves due timers
into their instances' inboxes in one transaction and pokes them. Firing is idempotent (each timer row is deleted
by exactly one firer), so two beats, or a beat restarted mid-fire, never fire a timer twice into history.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import beat

from ..providers.store import now_ms
from ..tasks.queues import RECOVERY_TASK
from ..tasks.recovery import fire_what_is_due

log = logging.getLogger("duroxide_celery.runtime")

__all__ = ["TimerScheduler"]


class TimerScheduler(beat.Scheduler):
    #: Longest sleep between looks at the timer table (seconds).
    max_timer_sleep = 0.1

    def __init__(self, app: Any, *args: Any, **kwargs: Any):
        self._runtime = getattr(app, "duroxide_runtime", None)
        if self._runtime is None:
            raise RuntimeError(
                "TimerScheduler needs a duroxide Runtime on this Celery app: create "
                "Runtime(provider, options, app=app) in the module that `celery -A` loads"
            )
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        interval = self._runtime.options.recovery_interval_s
        self.merge_inplace(
            {"duroxide-recovery-sweep": {"task": RECOVERY_TASK, "schedule": interval, "options": {"expires": interval}}}
        )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        wait = super().tick(*args, **kwargs)
        runtime = self._runtime
        try:
            # One cheap read while idle; the firing transaction only when something is due.
            due = fire_what_is_due(runtime.store, runtime.publisher)
        except Exception:  # noqa: BLE001 - a database blip must not stop beat; the next tick retries
            log.exception("firing durable timers failed")
            return min(wait, 1.0)
        wait = min(wait, self.max_timer_sleep)
        if due is not None:
            wait = min(wait, max(0.0, (due - now_ms()) / 1000))
        return wait
