"""celery-redbeat's `RedBeatScheduler` (schedule kept in Redis, one active beat at a time through a Redis lock)
plus durable timers and the recovery sweep:

    celery -A proj beat -S duroxide_celery.beat.redbeat:RedBeatScheduler

Needs `pip install celery-redbeat` and its settings (`redbeat_redis_url`, by default the broker's URL). Only the
beat that holds redbeat's lock ticks, so standby beats fire no timers (firing is idempotent anyway).
"""

from __future__ import annotations

from . import DurableTimers
from ._optional import import_scheduler_module

__all__ = ["RedBeatScheduler"]

_base = import_scheduler_module("redbeat.schedulers", "celery-redbeat", ("redbeat",), "duroxide_celery.beat.redbeat")


class RedBeatScheduler(DurableTimers, _base.RedBeatScheduler):
    """redbeat.schedulers.RedBeatScheduler plus durable timers and the recovery sweep."""
