"""A Celery app for tests/production/test_hardening_workers.py (issue 11: lease minimums, undeliverable activities).

Settings come from the environment variables examples/shop reads (see app_env.py), plus HARDENING_WORKER_LOCK_MS
(RuntimeOptions.worker_lock_timeout_ms) and HARDENING_RUNS_FILE (each run of "Slow" appends a line to it, so a
test can count the executions across worker processes).
"""

from __future__ import annotations

import os
import threading

from tests.production.app_env import env_ms, production_runtime

app, runtime = production_runtime("hardeningapp", worker_lock_timeout_ms=env_ms("HARDENING_WORKER_LOCK_MS"))


@runtime.register_activity("Echo")
def echo(ctx, value):
    return value


@runtime.register_activity("Slow")
def slow(ctx, seconds):
    """Runs `seconds` (longer than its lease: only renewals keep it), recording each execution."""
    with open(os.environ["HARDENING_RUNS_FILE"], "a") as runs:
        runs.write(f"{ctx.instance_id} {ctx.worker_id}\n")
    threading.Event().wait(seconds)
    return seconds


@runtime.register_orchestration("Plain")
def plain(ctx, value):
    return (yield ctx.schedule_activity("Echo", value))


@runtime.register_orchestration("Tagged")
def tagged(ctx, tag):
    """One step under `tag`; a failure to deliver it is caught and reported."""
    try:
        return {"ok": (yield ctx.schedule_activity("Echo", "tagged").with_tag(tag))}
    except Exception as exc:  # noqa: BLE001 - the undeliverable activity's failure
        return {"caught": str(exc)}


@runtime.register_orchestration("SlowOnce")
def slow_once(ctx, seconds):
    return (yield ctx.schedule_activity("Slow", seconds))
