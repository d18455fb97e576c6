"""Prepare the django-celery-beat database for test_beat.py: migrate, then add one periodic task from the "admin"
(`host.tick` with argument "periodic_task", every second).

    DJANGO_SETTINGS_MODULE=tests.production.beat_django_settings BEAT_DJANGO_DB=/tmp/x.sqlite3 \
        python -m tests.production.beat_django_setup
"""

from __future__ import annotations

import json

import django
from django.core.management import call_command


def main() -> None:
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.update_or_create(
        name="db-tick", defaults={"task": "host.tick", "interval": every_second, "args": json.dumps(["periodic_task"])}
    )
    print("django-celery-beat database ready")


if __name__ == "__main__":
    main()
