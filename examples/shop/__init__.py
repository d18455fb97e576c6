"""Example shop on production infrastructure: your Celery app, Redis or RabbitMQ, PostgreSQL.

    celery -A examples.shop worker -Q duroxide.orchestrator           # turns only
    celery -A examples.shop worker -Q duroxide.activities             # activities only (run several)
    celery -A examples.shop beat -S duroxide_celery.beat:TimerScheduler
    celery -A examples.shop flower

Settings come from the environment: SHOP_BROKER_URL (default redis://127.0.0.1:6379/0; amqp://guest:guest@
127.0.0.1:5672// for RabbitMQ) and SHOP_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
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
runtime = Runtime(
    provider, RuntimeOptions(recovery_threshold_ms=int(os.environ.get("SHOP_RECOVERY_MS", "5000"))), app=app
)
register(runtime)
