"""Order-processing saga on the embedded runtime (SQLite file, in-process Celery worker, no servers).

Two orders run side by side:
  * order-1001: reserve every line item in parallel (fan-out), wait out a durable cooling-off timer, wait for
    a manager's approval event (the demo raises it), charge the card, ship.
  * order-1002: same steps, but the card is declined, so the saga compensates: it releases every reservation
    it made, in reverse order, and ends with a refund-free cancellation.
Progress is printed as it happens (custom status), and a summary of each history at the end.

Run: python examples/order_saga.py [--db PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter

from duroxide_celery import Client, Runtime, SqliteProvider

PRICES = {"keyboard": 49.0, "mouse": 19.5, "monitor": 229.0, "cable": 7.25}
_print_lock = threading.Lock()


def say(text: str) -> None:
    """Print one whole line: activities run on several worker threads, and their lines must not interleave."""
    with _print_lock:
        print(text, flush=True)


def build_runtime(provider: SqliteProvider) -> Runtime:
    runtime = Runtime(provider)

    @runtime.register_activity("ReserveItem")
    def reserve_item(ctx, item):
        say(f"    [activity] reserve {item['qty']} x {item['sku']} for {ctx.instance_id}")
        return {"sku": item["sku"], "reservation": f"R-{ctx.instance_id}-{item['sku']}"}

    @runtime.register_activity("ReleaseItem")
    def release_item(ctx, reservation):
        say(f"    [activity] compensate: release {reservation['reservation']}")
        return reservation["sku"]

    @runtime.register_activity("ChargeCard")
    def charge_card(ctx, payment):
        if payment["card"].endswith("0000"):
            raise RuntimeError(f"card {payment['card']} declined")
        say(f"    [activity] charged {payment['amount']:.2f} to card {payment['card']}")
        return {"charge_id": f"CH-{ctx.instance_id}"}

    @runtime.register_activity("ShipOrder")
    def ship_order(ctx, order_id):
        say(f"    [activity] shipped {order_id}")
        return f"TRACK-{order_id}"

    @runtime.register_orchestration("OrderSaga")
    def order_saga(ctx, order):
        ctx.set_custom_status("reserving items")
        reservations = yield ctx.all([ctx.schedule_activity("ReserveItem", item) for item in order["items"]])
        reserved = [r["ok"] for r in reservations if "ok" in r]
        total = sum(PRICES[i["sku"]] * i["qty"] for i in order["items"])

        ctx.set_custom_status("cooling-off period")
        yield ctx.schedule_timer(order["cooling_off_ms"])

        ctx.set_custom_status("awaiting approval")
        decision = yield ctx.race(ctx.wait_for_event("approval"), ctx.schedule_timer(30_000))
        approved = decision["index"] == 0 and decision["value"]["approved"]

        try:
            if not approved:
                raise RuntimeError("not approved in time")
            ctx.set_custom_status("charging card")
            charge = yield ctx.schedule_activity("ChargeCard", {"card": order["card"], "amount": total})
        except Exception as exc:  # compensate: undo every reservation, newest first
            ctx.set_custom_status("compensating")
            for reservation in reversed(reserved):
                yield ctx.schedule_activity("ReleaseItem", reservation)
            ctx.set_custom_status("cancelled")
            return {"order": order["id"], "status": "cancelled", "reason": str(exc), "released": len(reserved)}

        ctx.set_custom_status("shipping")
        tracking = yield ctx.schedule_activity("ShipOrder", order["id"])
        ctx.set_custom_status("done")
        return {
            "order": order["id"],
            "status": "shipped",
            "total": total,
            "charge": charge["charge_id"],
            "tracking": tracking,
        }

    return runtime


ORDERS = [
    {
        "id": "order-1001",
        "card": "4242-4242-4242-4242",
        "cooling_off_ms": 300,
        "items": [{"sku": "keyboard", "qty": 1}, {"sku": "mouse", "qty": 2}, {"sku": "cable", "qty": 3}],
    },
    {
        "id": "order-1002",
        "card": "4000-0000-0000-0000",
        "cooling_off_ms": 300,
        "items": [{"sku": "monitor", "qty": 2}, {"sku": "cable", "qty": 1}],
    },
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to keep (default: a temporary one, removed at exit)")
    args = parser.parse_args()
    if args.db is not None:
        return run(args.db)
    with tempfile.TemporaryDirectory(prefix="duroxide-demo-") as scratch:
        return run(os.path.join(scratch, "orders.db"))


def run(db: str) -> int:
    say(f"store: SQLite file {db} (embedded runtime: in-process Celery worker, no servers)\n")
    provider = SqliteProvider.open(db)
    runtime = build_runtime(provider)
    client = Client(provider)
    runtime.start()
    try:
        for order in ORDERS:
            client.start_orchestration(order["id"], "OrderSaga", order)
            say(f"started {order['id']}")
        seen = {o["id"]: (0, None) for o in ORDERS}
        approved: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = {oid: client.get_status(oid) for oid in seen}
            for oid, st in statuses.items():
                if st.custom_status_version > seen[oid][0]:
                    say(f"  {oid}: {st.custom_status}")
                    seen[oid] = (st.custom_status_version, st.custom_status)
                if st.custom_status == "awaiting approval" and oid not in approved:
                    say(f"  {oid}: manager approves (raise_event 'approval')")
                    client.raise_event(oid, "approval", {"approved": True, "by": "demo-manager"})
                    approved.add(oid)
            if all(st.status in ("Completed", "Failed") for st in statuses.values()):
                break
            time.sleep(0.02)

        say("\nresults:")
        ok = True
        for order in ORDERS:
            result = client.wait_for_orchestration(order["id"], 30_000)
            ok = ok and result.status == "Completed"
            say(f"  {order['id']}: {result.status} {result.output if result.output else result.error}")

        say("\nhistory summary:")
        for order in ORDERS:
            events = client.read_execution_history(order["id"], 1)
            kinds = Counter(e.kind for e in events)
            info = client.get_instance_info(order["id"])
            took = info.updated_at - info.created_at
            say(
                f"  {order['id']}: {len(events)} events in {took} ms: "
                + ", ".join(f"{kind} x{n}" for kind, n in kinds.items())
            )
        return 0 if ok else 1
    finally:
        runtime.shutdown()
        provider.dispose()  # close the database before a temporary directory goes


if __name__ == "__main__":
    sys.exit(main())
