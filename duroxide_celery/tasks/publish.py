"""Publishing after commit: pokes (wake-up hints naming an instance) and activity tasks.

Messages carry ids only; the store holds the state. Each message names its step for Flower (`shadow`) and shows
ids, never payloads, in `argsrepr`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery

from ..providers.store import PendingActivity
from .queues import ACTIVITY_TASK, TURN_TASK, QueueNames, queue

log = logging.getLogger("duroxide_celery.runtime")


class Publisher:
    def __init__(self, app: Celery, names: QueueNames):
        self.app = app
        self.names = names
        #: Called with the earliest new fire time after a turn creates timers (the embedded timer thread listens).
        self.on_timer: Callable[[int], None] | None = None
        #: Test hook: raise here to simulate a crash between a turn's commit and its publish.
        self.before_publish: Callable[[], None] | None = None

    def poke(self, targets: Iterable[str | tuple[str, str | None]], countdown: float | None = None) -> None:
        """Wake the turn task of each instance; a target is an id or (id, orchestration name) for Flower."""
        named: dict[str, str | None] = {}
        for target in targets:
            instance_id, name = (target, None) if isinstance(target, str) else target
            named[instance_id] = name or named.get(instance_id)
        if not named:
            return
        self._hook()
        orchestrator_queue = queue(self.names.orchestrator)
        with self.app.producer_or_acquire() as producer:
            for instance_id, name in named.items():
                self.app.send_task(
                    TURN_TASK,
                    args=[instance_id],
                    queue=orchestrator_queue,
                    producer=producer,
                    countdown=countdown,
                    shadow=f"orch:{name or ''}#{instance_id}",
                    argsrepr=repr([instance_id]),
                )

    def activities(self, items: Iterable[PendingActivity], countdown: float | None = None) -> None:
        items = list(items)
        if not items:
            return
        self._hook()
        with self.app.producer_or_acquire() as producer:
            for item in items:
                args: list[Any] = [item.instance_id, item.execution_id, item.event_id]
                self.app.send_task(
                    ACTIVITY_TASK,
                    args=args,
                    queue=queue(self.names.activity_queue(item.tag)),
                    producer=producer,
                    countdown=countdown,
                    shadow=f"act:{item.name}#{item.instance_id}",
                    argsrepr=repr(args),
                )

    def timers_created(self, earliest_fire_at: int) -> None:
        if self.on_timer is not None:
            self.on_timer(earliest_fire_at)

    def _hook(self) -> None:
        if self.before_publish is not None:
            self.before_publish()
