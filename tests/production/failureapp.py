"""A Celery app for tests/production/test_failure_visibility.py: an activity that always fails, one orchestration
that handles its failure and one that lets it fail.

Settings come from the environment variables examples/shop reads (see tests/production/app_env.py). Each run of
the failing activity increments a Redis counter named after the queue prefix and the instance, so the test can
count executions across worker processes.
"""

from __future__ import annotations

import os

import redis

from tests.production.app_env import production_runtime

app, runtime = production_runtime("failureapp")


def run_counter_key(instance_id: str) -> str:
    return f"{os.environ.get('SHOP_QUEUE_PREFIX', 'duroxide')}:charge-runs:{instance_id}"


@runtime.register_activity("Charge")
def charge(ctx, card):
    """Count the run, then fail as a declined card would."""
    redis.Redis.from_url(os.environ["SHOP_BROKER_URL"]).incr(run_counter_key(ctx.instance_id))
    raise ValueError(f"card declined (attempt at {ctx.activity_name})")


@runtime.register_orchestration("ChargeOrRefund")
def charge_or_refund(ctx, card):
    """Handles the failure: the orchestration completes."""
    try:
        return (yield ctx.schedule_activity("Charge", card))
    except Exception as exc:  # noqa: BLE001 - the activity's failure is the orchestration's to handle
        return {"refunded": True, "why": str(exc)}


@runtime.register_orchestration("ChargeOrFail")
def charge_or_fail(ctx, card):
    """Lets the failure end the orchestration as Failed."""
    return (yield ctx.schedule_activity("Charge", card))
