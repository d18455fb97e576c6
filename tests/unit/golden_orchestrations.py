"""Orchestrations replayed by the golden-history tests, and the scenarios that recorded their fixtures.

`REGISTRY` is the code the fixtures are replayed against *today*. Changing one of these functions in a way that
changes what it schedules must make tests/unit/test_golden.py fail: that is the point of golden histories.
`SCENARIOS` (used by make_golden.py only) says how each fixture was recorded: which code, which input, and how
the outside world answered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .sim import ActivityError, Sim, drive

# -- the orchestrations -----------------------------------------------------------------------------------------


def order_pipeline(ctx, order):
    """Sequence: three activities, each fed the previous result, plus deterministic time and id."""
    started_at = yield ctx.utc_now()
    ctx.set_custom_status("validating")
    valid = yield ctx.schedule_activity("Validate", order)
    ctx.set_custom_status("reserving")
    reservation = yield ctx.schedule_activity("Reserve", {"sku": valid["sku"], "qty": valid["qty"]})
    ctx.set_custom_status("charging")
    charge = yield ctx.schedule_activity("Charge", {"reservation": reservation, "amount": order["amount"]})
    receipt_id = yield ctx.new_guid()
    ctx.set_kv_value("receipt", receipt_id)
    ctx.set_custom_status("done")
    return {"started_at": started_at, "charge": charge, "receipt": receipt_id}


def fan_out(ctx, items):
    """Fan-out/fan-in: all() over activities, one of which fails; the failure is reported, not raised."""
    ctx.set_custom_status(f"processing {len(items)}")
    results = yield ctx.all([ctx.schedule_activity("Process", item) for item in items])
    ok = [r["ok"] for r in results if "ok" in r]
    errors = [r["err"] for r in results if "err" in r]
    total = yield ctx.schedule_activity("Sum", ok)
    return {"total": total, "errors": errors}


def approval(ctx, request):
    """Race with a timer: the first wait times out (the wait loses), the second is approved (the timer loses)."""
    first = yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(60_000))
    if first["index"] == 1:
        yield ctx.schedule_activity("Escalate", request)
    second = yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(60_000))
    if second["index"] == 1:
        return {"approved": False}
    slow = yield ctx.race(ctx.schedule_activity("Notify", second["value"]), ctx.schedule_timer(1_000))
    return {"approved": True, "by": second["value"], "notified": slow["index"] == 0}


def parent(ctx, n):
    """Sub-orchestrations: an auto-id child, an explicit-id child, a failing child caught, a detached start."""
    yield ctx.start_orchestration("audit", f"audit-{ctx.instance_id}", {"n": n})
    doubled = yield ctx.schedule_sub_orchestration("double", n)
    tripled = yield ctx.schedule_sub_orchestration_with_id("triple", f"{ctx.instance_id}-triple", n)
    try:
        yield ctx.schedule_sub_orchestration("fragile", n)
        fragile = "survived"
    except Exception as exc:  # noqa: BLE001
        fragile = str(exc)
    return {"doubled": doubled, "tripled": tripled, "fragile": fragile}


def batch_loop(ctx, state):
    """Continue-as-new: consume two queue messages per execution, carry the rest (and the status) forward."""
    state = state or {"round": 0, "seen": []}
    seen = list(state["seen"])
    for _ in range(2):
        seen.append((yield ctx.dequeue_event("work")))
    yield ctx.schedule_timer(10)
    ctx.set_custom_status(f"round {state['round']} done")
    ctx.set_kv_value(f"round-{state['round']}", len(seen))
    if state["round"] == 0:
        yield ctx.continue_as_new({"round": 1, "seen": seen})
    return {"seen": seen, "status_before": ctx.get_custom_status(), "kv": ctx.get_kv_all_values()}


def flaky_with_retry(ctx, payload):
    """Retry policy: attempts are separate activities with durable backoff timers."""
    return (yield ctx.schedule_activity_with_retry("Flaky", payload, {"max_attempts": 4, "backoff": "fixed"}))


def payment_v1(ctx, amount):
    """The version that recorded the 'payment_changed' fixture."""
    charge = yield ctx.schedule_activity("Charge", amount)
    receipt = yield ctx.schedule_activity("Receipt", charge)
    return receipt


def payment(ctx, amount):
    """Today's code under the same name: it now calls a different activity, so old histories cannot replay."""
    charge = yield ctx.schedule_activity("ChargeV2", {"amount": amount, "currency": "EUR"})
    receipt = yield ctx.schedule_activity("Receipt", charge)
    return receipt


REGISTRY: dict[str, Callable[..., Any]] = {
    "order_pipeline": order_pipeline,
    "fan_out": fan_out,
    "approval": approval,
    "parent": parent,
    "batch_loop": batch_loop,
    "flaky_with_retry": flaky_with_retry,
    "payment": payment,
}


# -- how each fixture was recorded ------------------------------------------------------------------------------


@dataclass
class Scenario:
    fixture: str
    orchestration: str
    input: Any
    run: Callable[[Sim], list[Sim]]  # drives the sim; returns the executions to record (usually just [sim])
    instance_id: str = "golden"
    record_with: dict[str, Callable[..., Any]] = field(default_factory=dict)  # code that recorded it, if not today's
    expect_extra: dict[str, Any] = field(default_factory=dict)


def _run_order(sim: Sim) -> list[Sim]:
    drive(
        sim,
        {
            "Validate": lambda o: {"sku": o["sku"], "qty": o["qty"], "valid": True},
            "Reserve": lambda r: f"res-{r['sku']}-{r['qty']}",
            "Charge": lambda c: {"charged": c["amount"], "ref": c["reservation"]},
        },
    )
    return [sim]


def _process(item: int) -> int:
    if item == 3:
        raise ActivityError("Activity 'Process' call failed: ValueError: cannot process 3")
    return item * 10


def _run_fan_out(sim: Sim) -> list[Sim]:
    r = sim.turn()
    # complete out of order, in two batches, one failure
    scheduled = [o.event_id for o in r.outgoing]
    for eid in reversed(scheduled[2:]):
        item = int(sim.event(eid).data["input"])
        try:
            sim.complete(eid, _process(item))
        except ActivityError as exc:
            sim.fail(eid, str(exc))
    sim.turn()
    for eid in scheduled[:2]:
        sim.complete(eid, _process(int(sim.event(eid).data["input"])))
    drive(sim, {"Sum": sum})
    return [sim]


def _run_approval(sim: Sim) -> list[Sim]:
    sim.turn()
    sim.fire(sim.timers()[0])  # nobody approved in time
    r = sim.turn()
    sim.complete(r.outgoing[-1].event_id, "escalated")
    sim.turn()
    sim.raise_event("approve", "alice")
    r = sim.turn()
    (notify,) = [o for o in r.outgoing if type(o).__name__ == "ScheduleActivity"]
    sim.complete(notify.event_id, "sent")
    sim.turn()
    return [sim]


def _run_parent(sim: Sim) -> list[Sim]:
    def fragile(_):
        raise ActivityError("RuntimeError: fragile child broke")

    drive(sim, children={"double": lambda n: n * 2, "triple": lambda n: n * 3, "fragile": fragile})
    return [sim]


def _run_batch_loop(sim: Sim) -> list[Sim]:
    sim.enqueue("work", "a").enqueue("work", "b")
    sim.turn()
    sim.enqueue("work", "c").fire(sim.timers()[0]).enqueue("work", "d")
    r = sim.turn()
    assert r.status == "ContinuedAsNew", r.status
    nxt = sim.next_execution()
    nxt.turn()
    nxt.enqueue("work", "e")
    nxt.turn()
    nxt.fire(nxt.timers()[0])
    nxt.turn()
    return [sim, nxt]


def _run_flaky(sim: Sim) -> list[Sim]:
    attempts = {"n": 0}

    def flaky(payload):
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ActivityError(f"Activity 'Flaky' call failed: IOError: attempt {attempts['n']}")
        return {"payload": payload, "attempts": attempts["n"]}

    drive(sim, {"Flaky": flaky})
    return [sim]


def _run_payment_v1(sim: Sim) -> list[Sim]:
    sim.turn()
    sim.complete(2, {"charged": 42})  # the last turn: v1 goes on to schedule Receipt
    sim.turn()
    return [sim]


SCENARIOS = [
    Scenario("sequence", "order_pipeline", {"sku": "A-1", "qty": 2, "amount": 19.5}, _run_order),
    Scenario("fan_out", "fan_out", [1, 2, 3, 4], _run_fan_out),
    Scenario("race_with_timer", "approval", {"doc": "contract"}, _run_approval),
    Scenario("sub_orchestration", "parent", 7, _run_parent, instance_id="golden-parent"),
    Scenario("continue_as_new", "batch_loop", None, _run_batch_loop),
    Scenario("retry", "flaky_with_retry", "data", _run_flaky),
    Scenario(
        "payment_changed",
        "payment",
        42,
        _run_payment_v1,
        record_with={"payment": payment_v1},
        expect_extra={"replays_history": False},
    ),
]


# -- recorded from real embedded runs by tests/integration/capture_golden.py (fixtures real_*.json) -------------
# The real fan-out fixture replays `fan_out` above; this one is only recorded for real.


def timer_then_approval(ctx, request):
    """A durable timer, then an approval wait raced against a long timeout, then an activity with the approver."""
    yield ctx.schedule_timer(request["delay_ms"])
    ctx.set_custom_status("waiting for approval")
    winner = yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(request["timeout_ms"]))
    if winner["index"] == 1:
        return {"approved": False}
    receipt = yield ctx.schedule_activity("Record", {"doc": request["doc"], "by": winner["value"]})
    return {"approved": True, "by": winner["value"], "receipt": receipt}


REGISTRY["timer_then_approval"] = timer_then_approval
