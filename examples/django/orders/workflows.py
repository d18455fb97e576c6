"""The order saga: reserve stock, wait for a person's approval (or time out), charge the card; if the charge fails
or nobody approves in time, put the stock back. Discovered by duroxide_celery.contrib.django (workflows.py)."""

from django.conf import settings
from django.db import transaction
from django.db.models import F

from duroxide_celery.contrib.django import activity, orchestration

from .models import Order, Product


@activity("ReserveStock")
def reserve_stock(ctx, order_id):
    with transaction.atomic():
        order = Order.objects.get(pk=order_id)
        taken = Product.objects.filter(sku=order.sku, stock__gte=order.quantity).update(
            stock=F("stock") - order.quantity
        )
        if not taken:
            raise ValueError(f"not enough {order.sku} in stock")
        Order.objects.filter(pk=order_id).update(status="reserved")
    return {"sku": order.sku, "quantity": order.quantity}


@activity("ReleaseStock")
def release_stock(ctx, reservation):
    Product.objects.filter(sku=reservation["sku"]).update(stock=F("stock") + reservation["quantity"])
    return "released"


@activity("ChargeCard")
def charge_card(ctx, order_id):
    order = Order.objects.get(pk=order_id)
    if order.card.startswith("4000"):
        raise RuntimeError("card declined")
    return f"charged {order.quantity} x {order.sku}"


@activity("SetStatus")
def set_status(ctx, change):
    Order.objects.filter(pk=change["order"]).update(status=change["status"])
    return change["status"]


@orchestration("PlaceOrder")
def place_order(ctx, order_id):
    ctx.set_custom_status("reserving stock")
    reservation = yield ctx.schedule_activity("ReserveStock", order_id)

    ctx.set_custom_status("awaiting approval")
    approval = ctx.wait_for_event("Approval")
    timeout = ctx.schedule_timer(settings.APPROVAL_TIMEOUT_MS)  # a durable timer: survives restarts and deploys
    winner = yield ctx.race(approval, timeout)
    if winner["index"] == 1 or not winner["value"].get("approved"):
        yield ctx.schedule_activity("ReleaseStock", reservation)
        yield ctx.schedule_activity("SetStatus", {"order": order_id, "status": "cancelled"})
        return {
            "order": order_id,
            "status": "cancelled",
            "reason": "not approved in time" if winner["index"] else "rejected",
        }

    ctx.set_custom_status("charging")
    try:
        receipt = yield ctx.schedule_activity("ChargeCard", order_id)
    except Exception as exc:  # compensation: give the stock back
        yield ctx.schedule_activity("ReleaseStock", reservation)
        yield ctx.schedule_activity("SetStatus", {"order": order_id, "status": "payment failed"})
        return {"order": order_id, "status": "payment failed", "reason": str(exc)}
    yield ctx.schedule_activity("SetStatus", {"order": order_id, "status": "paid"})
    return {"order": order_id, "status": "paid", "receipt": receipt}
