"""Discovered by duroxide_celery.contrib.django (each app's workflows.py); no import from proj needed."""

from duroxide_celery.contrib.django import activity, orchestration

from .models import Order


@activity("ReserveStock")
def reserve_stock(ctx, order_id):
    order = Order.objects.get(pk=order_id)  # the row the view wrote: the start waited for its commit
    order.status = "reserved"
    order.save(update_fields=["status"])
    return {"item": order.item, "quantity": order.quantity}


@orchestration("PlaceOrder")
def place_order(ctx, order_id):
    reserved = yield ctx.schedule_activity("ReserveStock", order_id)
    return {"order": order_id, **reserved}


@orchestration("AwaitApproval")
def await_approval(ctx, order_id):
    """Waits for an "Approve" event (raised from a view, the admin or `manage.py duroxide raise-event`)."""
    ctx.set_custom_status("waiting for approval")
    ctx.set_kv_value("order", order_id)
    approval = yield ctx.wait_for_event("Approve")
    ctx.set_custom_status("approved")
    return {"order": order_id, "approval": approval}


@orchestration("Inbox")
def inbox(ctx, count):
    """Takes one message from its "items" queue per execution (continue-as-new) until one is "stop"."""
    ctx.set_kv_value("log", "x" * 300 + f" after {count} messages")  # a long value: the admin shows it truncated
    item = yield ctx.dequeue_event("items")
    if item == "stop":
        return count
    yield ctx.continue_as_new(count + 1)


@orchestration("InboxParent")
def inbox_parent(ctx, child_id):
    """Runs an Inbox as its sub-orchestration (the admin shows the tree)."""
    return (yield ctx.schedule_sub_orchestration_with_id("Inbox", child_id, 0))


@orchestration("Echo")
def echo(ctx, value):
    return value
