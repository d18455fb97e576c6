"""Publishing after commit: pokes (wake-up hints naming an instance) and activity tasks.

Messages carry ids only; the store holds the state. Each message names its step for Flower (`shadow`) and shows
ids, never payloads, in `argsrepr`. The publishers of the runtimes running in this process are listed per store
(`live_publisher`), so a Client on the same database wakes their workers without being handed an app.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.app.routes import Router
from kombu.exceptions import OperationalError

from ..providers.store import PendingActivity
from .queues import ACTIVITY_TASK, NO_TIME_LIMIT_S, TURN_TASK, QueueNames, queue

log = logging.getLogger(__name__)

#: AMQP's limit on queue, exchange and routing-key names (a short string: one length byte).
AMQP_NAME_LIMIT = 255


@dataclass
class Unpublishable:
    """An activity row no message can carry, and why (the runtime records it as a catchable failure)."""

    item: PendingActivity
    queue: str
    reason: str


def _broker_down(exc: BaseException, producer: Any) -> bool:
    """A failure of the broker connection (every message would fail alike), not of one message."""
    if isinstance(exc, OperationalError | OSError):
        return True
    connection = getattr(producer, "connection", None)
    errors = tuple(getattr(connection, "connection_errors", ())) + tuple(getattr(connection, "channel_errors", ()))
    return bool(errors) and isinstance(exc, errors)


def _reason(exc: Exception, queue_name: str) -> str:
    size = len(queue_name.encode())
    if size > AMQP_NAME_LIMIT:
        return (
            f"its queue name {queue_name[:40]!r}... is {size} bytes, over the broker's {AMQP_NAME_LIMIT}-byte limit "
            "for queue names (shorten the activity tag)"
        )
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


class PendingPokes:
    """In-process record of pokes published and not yet picked up, per queue namespace.

    Only for the embedded runtime, where every consumer of its (in-memory) queues is in this process: a poke for
    an instance that already has one waiting in the queue is redundant, because the waiting one reads the inbox
    after our commit. The turn task calls `taken()` before it reads the inbox. This turns the 1000 completions of
    a 1000-way fan-out into a few dozen turns instead of hundreds.
    """

    _by_namespace: dict[str, set[str]] = {}
    _lock = threading.Lock()

    def __init__(self, namespace: str):
        with self._lock:
            self._pending = self._by_namespace.setdefault(namespace, set())

    def claim_publish(self, instance_id: str) -> bool:
        """True if the caller must publish (no poke is waiting for this instance)."""
        with self._lock:
            if instance_id in self._pending:
                return False
            self._pending.add(instance_id)
            return True

    def reset(self) -> None:
        """Forget pokes that a stopped worker may have lost (the start-up sweep republishes their work)."""
        with self._lock:
            self._pending.clear()

    def taken(self, instance_id: str) -> None:
        with self._lock:
            self._pending.discard(instance_id)


class Publisher:
    """Sends the engine's messages on the app's broker connection, to the engine's queues, with the engine's own
    options: the app's `task_routes`, `task_default_queue`, serializer and time limits never apply to them."""

    def __init__(self, app: Celery, names: QueueNames, coalesce: bool = False):
        self.app = app
        self.names = names
        # A router without routes: the explicit queue of each message is final (DESIGN invariant 8).
        self._router = Router(app=app)
        #: Set for the embedded runtime only (see PendingPokes).
        self.pending = PendingPokes(names.prefix) if coalesce else None
        #: Called with the earliest new fire time after a turn creates timers (the embedded timer thread listens).
        self.on_timer: Callable[[int], None] | None = None
        #: Test hook: raise here to simulate a crash between a turn's commit and its publish.
        self.before_publish: Callable[[], None] | None = None
        #: Called once before the first message (a runtime under `task_always_eager` starts its worker then).
        self.on_first_send: Callable[[], None] | None = None
        #: Called with the activities a publish refused for themselves (not for a broker outage), after the others
        #: went out; the runtime records them as failures, so they are not republished forever.
        self.on_unpublishable: Callable[[list[Unpublishable]], None] | None = None

    def poke(
        self, targets: Iterable[str | tuple[str, str | None]], countdown: float | None = None, force: bool = False
    ) -> None:
        """Wake the turn task of each instance; a target is an id or (id, orchestration name) for Flower."""
        named: dict[str, str | None] = {}
        for target in targets:
            instance_id, name = (target, None) if isinstance(target, str) else target
            named[instance_id] = name or named.get(instance_id)
        if self.pending is not None and countdown is None and not force:
            named = {i: n for i, n in named.items() if self.pending.claim_publish(i)}
        if not named:
            return
        self._hook()
        orchestrator_queue = queue(self.names.orchestrator)
        with self._producer(len(named)) as producer:
            for instance_id, name in named.items():
                try:
                    self._send(
                        TURN_TASK,
                        [instance_id],
                        orchestrator_queue,
                        producer,
                        countdown,
                        shadow=f"orch:{name or ''}#{instance_id}",
                    )
                except Exception as exc:
                    if _broker_down(exc, producer):
                        raise
                    # One bad message must not hold back the others; the recovery sweep pokes it again.
                    if self.pending is not None:
                        self.pending.taken(instance_id)
                    log.warning(
                        "could not publish a wake-up of instance %s: %s",
                        instance_id,
                        _reason(exc, orchestrator_queue.name),
                        extra={"instance_id": instance_id},
                    )

    def activities(self, items: Iterable[PendingActivity], countdown: float | None = None) -> None:
        items = list(items)
        if not items:
            return
        self._hook()
        refused: list[Unpublishable] = []
        with self._producer(len(items)) as producer:
            for item in items:
                name = self.names.session_queue(item.node) if item.node else self.names.activity_queue(item.tag)
                try:
                    self._send(
                        ACTIVITY_TASK,
                        [item.instance_id, item.execution_id, item.event_id],
                        queue(name),
                        producer,
                        countdown,
                        shadow=f"act:{item.name}#{item.instance_id}",
                    )
                except Exception as exc:
                    if _broker_down(exc, producer):
                        raise
                    # This row's message cannot be sent (e.g. its queue name is too long for AMQP): the rest of the
                    # batch (a fan-out, or the recovery sweep's other instances) still goes out.
                    reason = _reason(exc, name)
                    log.warning(
                        "activity %s#%d of instance %s cannot be published: %s",
                        item.name,
                        item.event_id,
                        item.instance_id,
                        reason,
                        extra={"instance_id": item.instance_id, "activity_name": item.name},
                    )
                    refused.append(Unpublishable(item, name, reason))
        if refused and self.on_unpublishable is not None:
            self.on_unpublishable(refused)

    def _send(
        self, name: str, args: list[Any], target: Any, producer: Any, countdown: float | None, shadow: str
    ) -> None:
        """One engine message: ids only (argsrepr shows them, never payloads), a step name for Flower."""
        self.app.send_task(
            name,
            args=args,
            queue=target,
            router=self._router,
            producer=producer,
            countdown=countdown,
            shadow=shadow,
            argsrepr=repr(args),
            serializer="json",
            ignore_result=True,  # no result-backend subscription per message (a Redis backend would SUBSCRIBE)
            add_to_parent=False,
            time_limit=NO_TIME_LIMIT_S,
            soft_time_limit=NO_TIME_LIMIT_S,
        )

    def timers_created(self, earliest_fire_at: int) -> None:
        if self.on_timer is not None:
            self.on_timer(earliest_fire_at)

    @contextmanager
    def _producer(self, messages: int) -> Iterator[Any]:
        """A pooled producer whose `messages` publishes go out together: on Redis (kombu >= 5.7's `Producer.batch`)
        a fan-out of a thousand activities is one pipelined round trip, not a thousand. A single message, or a
        transport without batches, publishes at once (a batch of one only adds its setup)."""
        with self.app.producer_or_acquire() as producer:
            batch = getattr(producer, "batch", None) if messages > 1 else None
            with batch() if batch is not None else nullcontext():
                yield producer

    def _hook(self) -> None:
        if self.on_first_send is not None:
            starter, self.on_first_send = self.on_first_send, None
            starter()
        if self.before_publish is not None:
            self.before_publish()


class LivePublishers:
    """The publishers of this process's started runtimes, by store token (Provider.token): a Client given only a
    provider wakes the workers of a Runtime on the same database in this process (the embedded runtime, or a web
    process that imported its Celery app) instead of leaving its work to the recovery sweep."""

    def __init__(self) -> None:
        self._by_token: dict[str, list[Publisher]] = {}
        self._lock = threading.Lock()

    def attach(self, token: str, publisher: Publisher) -> None:
        with self._lock:
            live = self._by_token.setdefault(token, [])
            if publisher not in live:
                live.append(publisher)

    def detach(self, token: str, publisher: Publisher) -> None:
        with self._lock:
            live = self._by_token.get(token, [])
            if publisher in live:
                live.remove(publisher)
            if not live:
                self._by_token.pop(token, None)

    def get(self, token: str) -> Publisher | None:
        """The first live publisher for the store `token`, or None."""
        with self._lock:
            live = self._by_token.get(token)
            return live[0] if live else None


#: This process's live publishers (one table: any provider object on the same database finds them).
live_publishers = LivePublishers()
