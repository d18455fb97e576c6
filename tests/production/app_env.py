"""The settings the production test apps (tagapp, sessionapp) read from the environment, as examples/shop does:
SHOP_BROKER_URL, SHOP_DATABASE_URL, SHOP_DATABASE_SCHEMA, SHOP_QUEUE_PREFIX, SHOP_RECOVERY_MS,
SHOP_RECOVERY_INTERVAL_MS and SHOP_ORCHESTRATOR_LOCK_MS (tests/production/conftest.py's Cluster sets them)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from duroxide_celery import PostgresProvider, Runtime, RuntimeOptions


def env_ms(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def production_runtime(app_name: str, **options: Any) -> tuple[Celery, Runtime]:
    """A Celery app on SHOP_BROKER_URL and its production-mode Runtime on SHOP_DATABASE_URL; `options` are
    extra RuntimeOptions keywords."""
    broker_url = os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0")
    database_url = os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    schema = os.environ.get("SHOP_DATABASE_SCHEMA")
    app = Celery(app_name, broker=broker_url)
    app.conf.update(broker_connection_retry_on_startup=True)
    if broker_url.startswith("amqp"):
        app.conf.broker_transport_options = {"confirm_publish": True}
    provider = (
        PostgresProvider.connect_with_schema(database_url, schema) if schema else PostgresProvider.connect(database_url)
    )
    runtime_options = RuntimeOptions(
        queue_prefix=os.environ.get("SHOP_QUEUE_PREFIX") or None,
        recovery_threshold_ms=env_ms("SHOP_RECOVERY_MS"),
        recovery_interval_ms=env_ms("SHOP_RECOVERY_INTERVAL_MS"),
        orchestrator_lock_timeout_ms=env_ms("SHOP_ORCHESTRATOR_LOCK_MS"),
        **options,
    )
    return app, Runtime(provider, runtime_options, app=app)
