"""A host Celery app for the beat tests (test_beat.py): an existing app with its own task and `beat_schedule`, to
which the duroxide Runtime was added.

    celery -A tests.production.beat_hostapp beat -S duroxide_celery.beat:TimerScheduler
    celery -A tests.production.beat_hostapp worker -Q <prefix>.host,<prefix>.orchestrator,<prefix>.activities

Engine settings come from the environment variables examples/shop reads (see app_env.py). The host app's own:
BEAT_HOST_MARKS, a file where each run of its `host.tick` task appends one line naming who scheduled it;
BEAT_HOST_TICK_S, the period of its `beat_schedule` entry (default 1 s). Its default queue is `<prefix>.host`, so
tests sharing a broker do not share it. With DJANGO_SETTINGS_MODULE set (django-celery-beat), Django is set up
first, as a Django project's celery module does.
"""

from __future__ import annotations

import os

if os.environ.get("DJANGO_SETTINGS_MODULE"):
    import django

    django.setup()

from celery.signals import beat_init  # noqa: E402

from duroxide_celery.beat import warn_without_durable_timers  # noqa: E402
from tests.production.app_env import production_runtime  # noqa: E402

app, runtime = production_runtime("beat_hostapp")
# A beat without durable timers says so (same dispatch_uid as the Runtime's, should it connect the check itself).
beat_init.connect(warn_without_durable_timers, weak=False, dispatch_uid="duroxide-beat-check")
prefix = runtime.names.prefix

# The host app's own settings, which adding the Runtime must leave alone.
app.conf.task_default_queue = f"{prefix}.host"
app.conf.beat_schedule = {
    "host-tick": {
        "task": "host.tick",
        "schedule": float(os.environ.get("BEAT_HOST_TICK_S", "1")),
        "args": ("beat_schedule",),
    }
}
app.conf.redbeat_key_prefix = f"{prefix}:redbeat"


@app.task(name="host.tick")
def host_tick(source: str) -> str:
    """The app's periodic task: one line per run in the marks file."""
    with open(os.environ["BEAT_HOST_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(source + "\n")
    return source


@runtime.register_activity("Echo")
def echo(ctx, value):
    return value


@runtime.register_orchestration("Nap")
def nap(ctx, ms):
    """Wait on a durable timer, then run one activity."""
    yield ctx.schedule_timer(ms)
    return (yield ctx.schedule_activity("Echo", {"slept_ms": ms}))
