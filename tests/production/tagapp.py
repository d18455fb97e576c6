"""A Celery app for the tag tests (test_worker_tags.py): a pipeline whose steps run on differently tagged workers.

    celery -A tests.production.tagapp worker --duroxide-tag-filter gpu --duroxide-node-id gpu-1

Settings come from the environment variables examples/shop reads (SHOP_BROKER_URL, SHOP_DATABASE_URL,
SHOP_DATABASE_SCHEMA, SHOP_QUEUE_PREFIX, SHOP_RECOVERY_MS, SHOP_RECOVERY_INTERVAL_MS, SHOP_ORCHESTRATOR_LOCK_MS),
so tests/production/conftest.py's Cluster configures it as it does the shop. The runtime sets no tag filter or
node id of its own: every worker's comes from its command line.
"""

from __future__ import annotations

import os

from celery import Celery

from duroxide_celery import PostgresProvider, Runtime, RuntimeOptions

BROKER_URL = os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE_SCHEMA = os.environ.get("SHOP_DATABASE_SCHEMA")

app = Celery("tagapp", broker=BROKER_URL)
app.conf.update(broker_connection_retry_on_startup=True)
if BROKER_URL.startswith("amqp"):
    app.conf.broker_transport_options = {"confirm_publish": True}

provider = (
    PostgresProvider.connect_with_schema(DATABASE_URL, DATABASE_SCHEMA)
    if DATABASE_SCHEMA
    else PostgresProvider.connect(DATABASE_URL)
)


def _ms(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


runtime = Runtime(
    provider,
    RuntimeOptions(
        queue_prefix=os.environ.get("SHOP_QUEUE_PREFIX") or None,
        recovery_threshold_ms=_ms("SHOP_RECOVERY_MS"),
        recovery_interval_ms=_ms("SHOP_RECOVERY_INTERVAL_MS"),
        orchestrator_lock_timeout_ms=_ms("SHOP_ORCHESTRATOR_LOCK_MS"),
    ),
    app=app,
)


@runtime.register_activity("Where")
def where(ctx, step):
    """Which worker node ran this step, and under which tag."""
    return {"step": step, "node": ctx.worker_id, "tag": ctx.tag()}


@runtime.register_orchestration("Pipeline")
def pipeline(ctx, _input):
    """Untagged preparation, then gpu training and cpu reporting side by side, then an untagged wrap-up."""
    prepared = yield ctx.schedule_activity("Where", "prepare")
    trained, reported = yield ctx.all_typed(
        [
            ctx.schedule_activity("Where", "train").with_tag("gpu"),
            ctx.schedule_activity("Where", "report").with_tag("cpu"),
        ]
    )
    finished = yield ctx.schedule_activity("Where", "finish")
    return [prepared, trained, reported, finished]


@runtime.register_orchestration("TrainWithFallback")
def train_with_fallback(ctx, timeout_ms):
    """Race the gpu step against a timer (an unserved tag waits forever); on timeout, train on cpu instead."""
    first = yield ctx.race(ctx.schedule_activity("Where", "train").with_tag("gpu"), ctx.schedule_timer(timeout_ms))
    if first["index"] == 0:
        return {"path": "gpu", "result": first["value"]}
    fallback = yield ctx.schedule_activity("Where", "train-slowly").with_tag("cpu")
    return {"path": "fallback", "result": fallback}


@runtime.register_orchestration("OneTagged")
def one_tagged(ctx, tag):
    """One step under a tag chosen by the caller (a tag no worker has seen before)."""
    return (yield ctx.schedule_activity("Where", "anything").with_tag(tag))
