"""A team's existing Celery app, with duroxide-celery added by one line (issue 10): its own tasks on the default
queue and on a routed queue, a result backend, a beat schedule, and a global 3 s task time limit on a prefork pool.
Nothing about it is written for duroxide; `Runtime(provider, options, app=app)` must leave all of it as it was.

Settings from the environment (tests/production/conftest.py's Cluster): SHOP_BROKER_URL, SHOP_DATABASE_URL,
SHOP_DATABASE_SCHEMA, SHOP_QUEUE_PREFIX, SHOP_RECOVERY_MS, SHOP_RECOVERY_INTERVAL_MS, and HOST_REDIS_URL (result
backend and the heartbeat counter).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from duroxide_celery import PostgresProvider, Runtime, RuntimeOptions
from tests.production.app_env import env_ms

REDIS_URL = os.environ.get("HOST_REDIS_URL", "redis://127.0.0.1:6379/0")
HEARTBEATS = "hostapp:heartbeats"

app = Celery("hostapp", broker=os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    result_backend=REDIS_URL,
    task_time_limit=3,  # the app's own limit for its own tasks
    task_queues=[Queue("celery"), Queue("host-routed")],
    task_routes={"host.mul": {"queue": "host-routed"}},
    beat_schedule={"host-heartbeat": {"task": "host.heartbeat", "schedule": 0.5}},
    worker_send_task_events=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="host.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="host.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="host.heartbeat")
def heartbeat() -> int:
    return int(redis.Redis.from_url(REDIS_URL).incr(HEARTBEATS))


# -- the one addition: durable workflows on the same app -----------------------------------------------------------
schema = os.environ.get("SHOP_DATABASE_SCHEMA")
database_url = os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
provider = (
    PostgresProvider.connect_with_schema(database_url, schema) if schema else PostgresProvider.connect(database_url)
)
runtime = Runtime(
    provider,
    RuntimeOptions(
        queue_prefix=os.environ.get("SHOP_QUEUE_PREFIX") or None,
        recovery_threshold_ms=env_ms("SHOP_RECOVERY_MS"),
        recovery_interval_ms=env_ms("SHOP_RECOVERY_INTERVAL_MS"),
    ),
    app=app,
)


@runtime.register_activity("Slow")
def slow(ctx: Any, seconds: float) -> str:
    time.sleep(seconds)  # longer than the app's task_time_limit: the workflow's activity is not the app's task
    return f"slept {seconds}"


@runtime.register_activity("Charge")
def charge(ctx: Any, amount: int) -> str:
    raise RuntimeError(f"card declined for {amount}")


@runtime.register_activity("Refund")
def refund(ctx: Any, amount: int) -> str:
    return f"refunded {amount}"


@runtime.register_orchestration("SlowStep")
def slow_step(ctx: Any, seconds: float) -> Any:
    return (yield ctx.schedule_activity("Slow", seconds))


@runtime.register_orchestration("ChargeOrRefund")
def charge_or_refund(ctx: Any, amount: int) -> Any:
    try:
        return (yield ctx.schedule_activity("Charge", amount))
    except Exception as exc:  # noqa: BLE001 - the compensation path under test
        return {"compensated": (yield ctx.schedule_activity("Refund", amount)), "error": str(exc)}


@runtime.register_orchestration("Nap")
def nap(ctx: Any, ms: int) -> Any:
    yield ctx.schedule_timer(ms)
    return "rested"


@runtime.register_orchestration("Doomed")
def doomed(ctx: Any, amount: int) -> Any:
    return (yield ctx.schedule_activity("Charge", amount))  # the failure is not caught: the orchestration fails
