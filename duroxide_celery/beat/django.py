"""django-celery-beat's `DatabaseScheduler` (periodic tasks kept in the Django database, edited in the admin) plus
durable timers and the recovery sweep:

    celery -A proj beat -S duroxide_celery.beat.django:DatabaseScheduler

Needs `pip install django-celery-beat` and `django_celery_beat` in INSTALLED_APPS (migrated), as that scheduler
does on its own. The app's `beat_schedule` entries are stored as periodic tasks, as django-celery-beat does.
"""

from __future__ import annotations

from . import DurableTimers
from ._optional import import_scheduler_module

__all__ = ["DatabaseScheduler"]

_base = import_scheduler_module(
    "django_celery_beat.schedulers",
    "django-celery-beat",
    ("django_celery_beat", "django"),
    "duroxide_celery.beat.django",
)


class DatabaseScheduler(DurableTimers, _base.DatabaseScheduler):
    """django_celery_beat.schedulers.DatabaseScheduler plus durable timers and the recovery sweep."""
