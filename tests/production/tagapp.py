"""A Celery app for the tag tests (test_worker_tags.py): a pipeline whose steps run on differently tagged workers.

    celery -A tests.production.tagapp worker --duroxide-tag-filter gpu --duroxide-node-id gpu-1

Settings come from the environment variables examples/shop reads (SHOP_BROKER_URL, SHOP_DATABASE_URL,
SHOP_DATABASE_SCHEMA, SHOP_QUEUE_PREFIX, SHOP_RECOVERY_MS, SHOP_RECOVERY_INTERVAL_MS, SHOP_ORCHESTRATOR_LOCK_MS),
so tests/production/conftest.py's Cluster configures it as it does the shop. The runtime sets no tag filter or
node id of its own: every worker's comes from its command line.
"""

from __future__ import annotations

from tests.production.app_env import production_runtime

app, runtime = production_runtime("tagapp")


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


@runtime.register_orchestration("TrainWithTtl")
def train_with_ttl(ctx, ttl_ms):
    """The gpu step with a claim deadline: when no worker picks it up in time it fails (catchably) and the
    orchestration trains on cpu instead."""
    try:
        trained = yield ctx.schedule_activity("Where", "train", ttl_ms=ttl_ms).with_tag("gpu")
        return {"path": "gpu", "result": trained}
    except Exception as exc:  # noqa: BLE001 - the "not picked up" failure
        fallback = yield ctx.schedule_activity("Where", "train-slowly").with_tag("cpu")
        return {"path": "fallback", "why": str(exc), "result": fallback}


@runtime.register_orchestration("OneTagged")
def one_tagged(ctx, tag):
    """One step under a tag chosen by the caller (a tag no worker has seen before)."""
    return (yield ctx.schedule_activity("Where", "anything").with_tag(tag))
