"""A Celery app for tests/production/test_rewind_production.py: an order whose shipping step fails until the fix
is deployed. Which code a worker runs is chosen by its environment (REWIND_FIXED=1: the fixed Ship), as a new
release would be; settings come from tests/production/app_env.py."""

from __future__ import annotations

import os

from tests.production.app_env import production_runtime

app, runtime = production_runtime("rewindapp")


@runtime.register_activity("Reserve")
def reserve(ctx, order):
    return f"reservation-{order}"


@runtime.register_activity("Ship")
def ship(ctx, reservation):
    if os.environ.get("REWIND_FIXED") != "1":
        raise ConnectionError("carrier API rejected the request")
    return f"shipped {reservation}"


@runtime.register_orchestration("ShipOrder")
def ship_order(ctx, order):
    reservation = yield ctx.schedule_activity("Reserve", order)
    return (yield ctx.schedule_activity("Ship", reservation))
