"""Example shop on production infrastructure: your Celery app, Redis or RabbitMQ, PostgreSQL.

    celery -A examples.shop worker -Q duroxide.orchestrator           # turns only
    celery -A examples.shop worker -Q duroxide.activities             # activities only (run several)
    celery -A examples.shop beat -S duroxide_celery.beat:TimerScheduler
    celery -A examples.shop flower

Settings come from the environment: SHOP_BROKER_URL (default redis://127.0.0.1:6379/0; amqp://guest:guest@
127.0.0.1:5672// for RabbitMQ) and SHOP_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
Optional: SHOP_DATABASE_SCHEMA (keep the tables in that schema), SHOP_QUEUE_PREFIX (queue names
`<prefix>.orchestrator`, `<prefix>.activities`; workers' `-Q` must match), SHOP_RECOVERY_MS (recovery sweep
threshold), SHOP_RECOVERY_INTERVAL_MS (how often beat schedules the sweep), SHOP_WORKER_LOCK_MS (activity lease)
and SHOP_ORCHESTRATOR_LOCK_MS (instance lease). tests/production sets them small so healing is quick.
"""

from __future__ import annotations

import os

from celery import Celery

from duroxide_celery import PostgresProvider, Runtime, RuntimeOptions

from .workflows import register

BROKER_URL = os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE_SCHEMA = os.environ.get("SHOP_DATABASE_SCHEMA")

app = Celery("shop", broker=BROKER_URL)
app.conf.update(broker_connection_retry_on_startup=True, worker_send_task_events=True, task_send_sent_event=True)
if BROKER_URL.startswith("amqp"):
    app.conf.broker_transport_options = {"confirm_publish": True}

provider = (
    PostgresProvider.connect_with_schema(DATABASE_URL, DATABASE_SCHEMA)
    if DATABASE_SCHEMA
    else PostgresProvider.connect(DATABASE_URL)
)


def _ms(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


QUEUE_PREFIX = os.environ.get("SHOP_QUEUE_PREFIX") or None
options = RuntimeOptions(
    queue_prefix=QUEUE_PREFIX,
    recovery_threshold_ms=_ms("SHOP_RECOVERY_MS", 5000),
    recovery_interval_ms=_ms("SHOP_RECOVERY_INTERVAL_MS"),
    worker_lock_timeout_ms=_ms("SHOP_WORKER_LOCK_MS"),
    orchestrator_lock_timeout_ms=_ms("SHOP_ORCHESTRATOR_LOCK_MS"),
)
runtime = Runtime(provider, options, app=app)
register(runtime)
