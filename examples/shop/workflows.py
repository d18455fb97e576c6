"""The shop's orchestrations and activities (plain duroxide code; nothing here knows about Celery)."""

from __future__ import annotations

import time
from typing import Any

PRICES = {"keyboard": 49.0, "mouse": 19.5, "monitor": 229.0, "cable": 7.25}


def register(runtime: Any) -> None:
    @runtime.register_activity("ReserveItem")
    def reserve_item(ctx, item):
        return {"sku": item["sku"], "reservation": f"R-{ctx.instance_id}-{item['sku']}"}

    @runtime.register_activity("ReleaseItem")
    def release_item(ctx, reservation):
        return reservation["sku"]

    @runtime.register_activity("ChargeCard")
    def charge_card(ctx, payment):
        if str(payment["card"]).endswith("0000"):
            raise RuntimeError(f"card {payment['card']} declined")
        return {"charge_id": f"CH-{ctx.instance_id}"}

    @runtime.register_activity("ShipOrder")
    def ship_order(ctx, order_id):
        return f"TRACK-{order_id}"

    @runtime.register_activity("SlowStep")
    def slow_step(ctx, seconds):
        """Sleeps in small steps, so a cancelled or lost activity notices (cooperative cancellation)."""
        deadline = time.monotonic() + float(seconds)
        while time.monotonic() < deadline:
            if ctx.is_cancelled():
                return "cancelled"
            time.sleep(0.05)
        return f"slept {seconds}"

    @runtime.register_activity("CheckHealth")
    def check_health(ctx, target):
        return {"target": target, "status": "ok"}

    @runtime.register_orchestration("OrderSaga")
    def order_saga(ctx, order):
        """Reserve all items, wait for approval (with a timeout), charge, ship; compensate on failure."""
        ctx.set_custom_status("reserving items")
        results = yield ctx.all([ctx.schedule_activity("ReserveItem", item) for item in order["items"]])
        reserved = [r["ok"] for r in results if "ok" in r]
        total = sum(PRICES.get(i["sku"], 1.0) * i.get("qty", 1) for i in order["items"])
        ctx.set_custom_status("awaiting approval")
        decision = yield ctx.race(ctx.wait_for_event("approval"), ctx.schedule_timer(order.get("approval_ms", 60_000)))
        approved = decision["index"] == 0 and bool((decision["value"] or {}).get("approved"))
        try:
            if not approved:
                raise RuntimeError("not approved in time" if decision["index"] == 1 else "rejected")
            ctx.set_custom_status("charging")
            charge = yield ctx.schedule_activity("ChargeCard", {"card": order.get("card", "4242"), "amount": total})
        except Exception as exc:
            ctx.set_custom_status("compensating")
            for reservation in reversed(reserved):
                yield ctx.schedule_activity("ReleaseItem", reservation)
            return {"order": order["id"], "status": "cancelled", "reason": str(exc)}
        tracking = yield ctx.schedule_activity("ShipOrder", order["id"])
        ctx.set_custom_status("shipped")
        return {"order": order["id"], "status": "shipped", "charge": charge["charge_id"], "tracking": tracking}

    @runtime.register_orchestration("ApprovalWithTimeout")
    def approval_with_timeout(ctx, request):
        """Wait for a human decision; escalate after the timeout."""
        decision = yield ctx.race(ctx.wait_for_event("decision"), ctx.schedule_timer(request.get("timeout_ms", 5000)))
        if decision["index"] == 0:
            return {"decided": True, "value": decision["value"]}
        return {"decided": False, "escalated_to": request.get("escalate_to", "manager")}

    @runtime.register_orchestration("Monitor")
    def monitor(ctx, state):
        """A long-running monitor: check, wait, continue as new, so history never grows unbounded."""
        checks = state.get("checks", 0)
        health = yield ctx.schedule_activity("CheckHealth", state["target"])
        ctx.set_custom_status(f"check #{checks + 1}: {health['status']}")
        if checks + 1 >= state.get("rounds", 3):
            return {"target": state["target"], "checks": checks + 1}
        yield ctx.schedule_timer(state.get("interval_ms", 1000))
        yield ctx.continue_as_new({**state, "checks": checks + 1})

    @runtime.register_orchestration("SlowJob")
    def slow_job(ctx, seconds):
        """One long activity (a worker may die under it: the lease lapses and another worker redoes it)."""
        result = yield ctx.schedule_activity("SlowStep", seconds)
        return {"job": ctx.instance_id, "result": result}

    @runtime.register_orchestration("Pipeline")
    def pipeline(ctx, n):
        """Mixed shape for load tests: activity, timer, sub-orchestration, optional event."""
        first = yield ctx.schedule_activity("CheckHealth", f"item-{n}")
        yield ctx.schedule_timer(200)
        child = yield ctx.schedule_sub_orchestration("ApprovalWithTimeout", {"timeout_ms": 100})
        return {"n": n, "first": first["status"], "child": child["decided"]}
