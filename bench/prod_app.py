"""Celery app module for the production benchmark (bench/production.py starts the processes; see bench/README.md).

Two apps live here:

- `app`: duroxide_celery in production mode, `Runtime(provider, options, app=app)` with the workloads' orchestrations
  and activities (bench/workloads.py's `Single`, `FanOut`, `Sequence` and `AddOne`, plus `Timer` for W4).

      celery -A bench.prod_app worker -Q duroxide.orchestrator -P threads -c 4 -n orch@%h
      celery -A bench.prod_app worker -Q duroxide.activities -P threads -c 8 -n act@%h
      celery -A bench.prod_app beat -S duroxide_celery.beat:TimerScheduler

- `canvas`: the plain Celery peer (not durable) with a Redis result backend and Celery's default settings; its tasks
  are reached by name from bench/production.py.

      celery -A bench.prod_app:canvas worker -Q bench.canvas -P threads -c 8 -n canvas@%h

Settings come from the environment: BENCH_BROKER_URL (default redis://127.0.0.1:6379/9), BENCH_RESULT_BACKEND
(redis://127.0.0.1:6379/10, the canvas app only), BENCH_DATABASE_URL (postgresql://postgres@127.0.0.1:5432/test)
and BENCH_DATABASE_SCHEMA (keep duroxide's tables in that schema; production.py uses a fresh one per run);
BENCH_DUROXIDE_LOG_LEVEL (level of the `duroxide_celery` loggers, default INFO).

Measurement hook (bench/production.py sets it): BENCH_STATS_DIR: count this process's SQL statements, commits and
rollbacks and keep them in `$BENCH_STATS_DIR/<pid>.json` (bench/measure.py).
"""

from __future__ import annotations

import logging
import os
import time

from celery import Celery

from bench.measure import install_from_env
from bench.workloads import register
from duroxide_celery import PostgresProvider, Runtime, RuntimeOptions

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/9")
RESULT_BACKEND = os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/10")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DATABASE_SCHEMA = os.environ.get("BENCH_DATABASE_SCHEMA")

# duroxide_celery logs rare events at INFO (recovery sweep republishing, dropped outcomes, history reloads) while the
# workers run at -l WARNING; bench/production.py reports those lines.
logging.getLogger("duroxide_celery").setLevel(os.environ.get("BENCH_DUROXIDE_LOG_LEVEL", "INFO"))

install_from_env()


# -- duroxide_celery -----------------------------------------------------------------------------------------------
app = Celery("bench-duroxide", broker=BROKER_URL, set_as_current=False)
app.conf.update(broker_connection_retry_on_startup=True)

provider = (
    PostgresProvider.connect_with_schema(DATABASE_URL, DATABASE_SCHEMA)
    if DATABASE_SCHEMA
    else PostgresProvider.connect(DATABASE_URL)
)
runtime = Runtime(provider, RuntimeOptions(), app=app)
register(runtime)  # Single, FanOut, Sequence, Timer (W4) and AddOne


# -- plain Celery canvas peer --------------------------------------------------------------------------------------
CANVAS_QUEUE = "bench.canvas"
canvas = Celery("bench-canvas", broker=BROKER_URL, backend=RESULT_BACKEND, set_as_current=False)
canvas.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=CANVAS_QUEUE,
    broker_connection_retry_on_startup=True,
)


@canvas.task(name="bench.canvas.add_one")
def canvas_add_one(x):
    return x + 1


@canvas.task(name="bench.canvas.total")
def canvas_total(values):
    return sum(values)


@canvas.task(name="bench.canvas.started_at")
def canvas_started_at(tag):
    """W4: the wall-clock time (ms since the epoch) at which the worker started this countdown task."""
    return {"tag": tag, "started_ms": time.time() * 1000}
