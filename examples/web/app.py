"""A small Flask app that starts orders, approves them, and shows status and history.

    flask --app examples.web.app run --host 127.0.0.1 --port 5000

Uses the shop's Celery app and store (examples.shop): the Client writes to PostgreSQL and wakes the workers
through the broker.
"""

from __future__ import annotations

import json
import uuid
from html import escape

from flask import Flask, abort, redirect, request, url_for

from duroxide_celery import Client
from examples.shop import app as celery_app
from examples.shop import provider

client = Client(provider, app=celery_app)


def create_app() -> Flask:
    web = Flask(__name__)

    @web.get("/")
    def index() -> str:
        rows = "".join(
            f'<li><a href="{url_for("order", instance_id=i)}">{escape(i)}</a> '
            f"{escape(client.get_status(i).status)}</li>"
            for i in client.list_all_instances()[-50:]
        )
        return (
            "<h1>Shop</h1>"
            f'<form method="post" action="{url_for("start_order")}">'
            '<input name="items" value="keyboard,mouse"> <input name="card" value="4242-4242">'
            "<button>Start order</button></form>"
            f"<ul>{rows}</ul>"
        )

    @web.post("/orders")
    def start_order():
        order_id = f"order-{uuid.uuid4().hex[:8]}"
        items = [{"sku": s.strip(), "qty": 1} for s in request.form.get("items", "").split(",") if s.strip()]
        order = {"id": order_id, "items": items, "card": request.form.get("card", "4242")}
        client.start_orchestration(order_id, "OrderSaga", order)
        return redirect(url_for("order", instance_id=order_id))

    @web.post("/orders/<instance_id>/approve")
    def approve(instance_id: str):
        if client.get_instance_info(instance_id) is None:
            abort(404)
        client.raise_event(instance_id, "approval", {"approved": request.form.get("approved", "yes") == "yes"})
        return redirect(url_for("order", instance_id=instance_id))

    @web.get("/orders/<instance_id>")
    def order(instance_id: str) -> str:
        info = client.get_instance_info(instance_id)
        if info is None:
            abort(404)
        status = client.get_status(instance_id)
        events = client.read_execution_history(instance_id, info.current_execution_id)
        history = "".join(
            f"<tr><td>{e.event_id}</td><td>{escape(e.kind)}</td><td>{escape((e.data or '')[:120])}</td></tr>"
            for e in events
        )
        return (
            f"<h1>{escape(instance_id)}</h1><p>status: {escape(status.status)}; "
            f"step: {escape(str(status.custom_status))}</p>"
            f"<pre>{escape(json.dumps(status.output) if status.output is not None else status.error or '')}</pre>"
            f'<form method="post" action="{url_for("approve", instance_id=instance_id)}">'
            '<button name="approved" value="yes">Approve</button> <button name="approved" value="no">Reject</button>'
            f"</form><table>{history}</table>"
        )

    @web.get("/api/orders/<instance_id>")
    def order_json(instance_id: str):
        status = client.get_status(instance_id)
        if status.status == "NotFound":
            abort(404)
        return {
            "status": status.status,
            "custom_status": status.custom_status,
            "output": status.output,
            "error": status.error,
        }

    return web


app = create_app()
