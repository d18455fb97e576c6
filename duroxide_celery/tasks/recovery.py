"""Timer firing and the recovery sweep: the store-driven halves of delivery, shared by beat and the embedded
scheduler thread."""

from __future__ import annotations

import logging

from ..providers.store import Store, now_ms
from .publish import Publisher

log = logging.getLogger(__name__)


#: Timers moved into inboxes per transaction.
TIMER_BATCH = 500


def fire_timers(store: Store, publisher: Publisher, *, timers: bool = True, deadlines: bool = True) -> int:
    """Fire every due timer (idempotently), fail the activities nobody claimed within their ttl, and poke the
    instances; returns how many instances were poked."""
    total = 0
    while timers:
        targets, fired = store.fire_due_timers(TIMER_BATCH)  # (instance id, orchestration name)
        publisher.poke(targets)
        total += len(targets)
        if fired < TIMER_BATCH:
            break  # nothing else was due when this batch was taken: the next round looks again
    while deadlines:
        expired = store.expire_unclaimed()
        if not expired:
            break
        log.warning("%d activities were not picked up within their ttl and failed", len(expired))
        publisher.poke(expired)
        total += len(expired)
    return total


def fire_what_is_due(store: Store, publisher: Publisher) -> int | None:
    """One scheduler round (beat's tick, the embedded scheduler): fire what the store says is due, then return
    when the next timer or claim deadline falls due (epoch ms; None if there is none). Three round trips when
    something is due, one when nothing is."""
    timer, deadline = store.next_due()
    now = now_ms()
    timers_due = timer is not None and timer <= now
    deadlines_due = deadline is not None and deadline <= now
    if timers_due or deadlines_due:
        fire_timers(store, publisher, timers=timers_due, deadlines=deadlines_due)
        timer, deadline = store.next_due()
    return min((due for due in (timer, deadline) if due is not None), default=None)


def sweep(store: Store, publisher: Publisher, older_than_ms: int) -> dict[str, int]:
    """Poke instances whose inbox holds old messages and republish activities nobody holds. Duplicates are
    harmless: every handler is idempotent against the store."""
    instances = store.stale_instances(older_than_ms)
    failure: Exception | None = None
    try:
        publisher.poke(instances, force=True)
    except Exception as exc:  # noqa: BLE001 - the activities below are still due; raised after them
        log.warning("recovery sweep could not republish %d instance pokes: %s", len(instances), exc)
        failure = exc
    activities = store.stale_work_items(older_than_ms)
    # Rows the broker refuses one by one (e.g. a queue name too long for AMQP) are isolated and failed by the
    # publisher (Publisher.on_unpublishable): one bad row never stops the sweep for the other instances.
    publisher.activities(activities)
    if failure is not None:
        raise failure
    if instances or activities:
        log.info("recovery sweep republished %d instance pokes and %d activities", len(instances), len(activities))
    return {"instances": len(instances), "activities": len(activities)}
