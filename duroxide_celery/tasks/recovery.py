"""Timer firing and the recovery sweep: the store-driven halves of delivery, shared by beat and the embedded
scheduler thread."""

from __future__ import annotations

import logging

from ..providers.store import Store
from .publish import Publisher

log = logging.getLogger("duroxide_celery.runtime")


def fire_timers(store: Store, publisher: Publisher) -> int:
    """Fire every due timer (idempotently), fail the activities nobody claimed within their ttl, and poke the
    instances; returns how many instances were poked."""
    total = 0
    while True:
        targets = store.fire_due_timers()  # (instance id, orchestration name)
        if not targets:
            break
        publisher.poke(targets)
        total += len(targets)
    while True:
        expired = store.expire_unclaimed()
        if not expired:
            return total
        log.warning("%d activities were not picked up within their ttl and failed", len(expired))
        publisher.poke(expired)
        total += len(expired)


def sweep(store: Store, publisher: Publisher, older_than_ms: int) -> dict[str, int]:
    """Poke instances whose inbox holds old messages and republish activities nobody holds. Duplicates are
    harmless: every handler is idempotent against the store."""
    instances = store.stale_instances(older_than_ms)
    publisher.poke(instances, force=True)
    activities = store.stale_work_items(older_than_ms)
    publisher.activities(activities)
    if instances or activities:
        log.info("recovery sweep republished %d instance pokes and %d activities", len(instances), len(activities))
    return {"instances": len(instances), "activities": len(activities)}
