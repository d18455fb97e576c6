"""A Celery app for tests/production/test_lease_owners.py: an activity that holds its lease until the test says
finish (or until it learns that its lease was taken over), and an orchestration that runs it.

Settings come from the environment variables examples/shop reads (see tests/production/app_env.py). The activity
reports through Redis, under keys named after the queue prefix and the instance: how many times it ran, and
whether its first run saw `ctx.is_cancelled()`.
"""

from __future__ import annotations

import os
import time

import redis

from tests.production.app_env import production_runtime

app, runtime = production_runtime("leaseapp")

#: Bound on how long the first run holds its lease (a test that fails must not hang its worker forever).
HOLD_LIMIT_S = 60


def key(instance_id: str, what: str) -> str:
    return f"{os.environ.get('SHOP_QUEUE_PREFIX', 'duroxide')}:{what}:{instance_id}"


@runtime.register_activity("Hold")
def hold(ctx, _):
    """First run: hold the lease until the `finish` key appears or the lease is taken over, then return "stale".
    Any later run returns "fresh" at once."""
    r = redis.Redis.from_url(os.environ["SHOP_BROKER_URL"])
    if r.incr(key(ctx.instance_id, "runs")) > 1:
        return "fresh"
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not ctx.is_cancelled() and not r.exists(key(ctx.instance_id, "finish")) and time.monotonic() < deadline:
        time.sleep(0.02)
    r.set(key(ctx.instance_id, "saw-cancel"), "yes" if ctx.is_cancelled() else "no")
    return "stale"


@runtime.register_orchestration("HoldOne")
def hold_one(ctx, _):
    return (yield ctx.schedule_activity("Hold", None))
