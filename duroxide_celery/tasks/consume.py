"""Which engine queues a worker's consumer consumes, written once for `celery worker` processes and the embedded
runtime's in-process workers.

- Activity queues follow the worker's tag filter: `<prefix>.activities` if it accepts untagged work,
  `<prefix>.activities.<tag>` per tag it names; with TagFilter.ANY, every tag in use, including tags first used
  after the worker started (TagFollower).
- A consumer of activity queues also consumes its worker's session queue, `<prefix>.sessions.<worker_id>`, where
  the activities of the sessions it owns are published.
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..providers.store import Store
from ..tagfilter import ParsedFilter
from .queues import QueueNames, queue

log = logging.getLogger(__name__)

__all__ = [
    "TagFollower",
    "activity_queues",
    "consume",
    "consumed_queues",
    "delete_generated_session_queue",
    "served_tags",
]

#: How often a worker with the `any` filter looks for tags first used after it started, and how often its consumer
#: picks up what that found.
FOLLOW_INTERVAL_S = 2.0
DRAIN_INTERVAL_S = 0.5


def served_tags(tag_filter: ParsedFilter, store: Store) -> set[str]:
    """The tags a filter names; with TagFilter.ANY, every tag in use now (read from the store)."""
    return set(tag_filter.tags) if tag_filter.tags is not None else set(store.known_tags())


def activity_queues(names: QueueNames, tag_filter: ParsedFilter, tags: Iterable[str]) -> list[str]:
    """The activity queues of a filter serving `tags`: the untagged queue first when it accepts untagged work."""
    found = [names.activities] if tag_filter.untagged else []
    found.extend(names.activity_queue(t) for t in sorted(tags))
    return found


def consumed_queues(c: Any) -> set[str]:
    """The queues consumer `c` consumes, or is about to: an embedded worker's own list (OwnQueues), else its task
    consumer's."""
    own = getattr(getattr(c, "controller", None), "duroxide_queues", None)
    if own is not None:
        return set(own)
    task_consumer = getattr(c, "task_consumer", None)
    return {q.name for q in task_consumer.queues} if task_consumer is not None else set()


def consume(c: Any, name: str, *, now: bool) -> None:
    """Consume `name`, also after any consumer restart. From a bootstep's start (`now=False`) the queue joins the
    others when the consumer's loop starts consuming, once it has set its message callback (consuming earlier, a
    message already waiting would reach a consumer without one); from the running loop (`now=True`) it starts at
    once. Call it from the consumer's own thread: kombu objects are not thread-safe."""
    own = getattr(getattr(c, "controller", None), "duroxide_queues", None)
    if own is not None:
        if name not in own:
            own.append(name)  # the embedded worker's own selection: the app-wide one is shared by two workers
    else:
        c.app.amqp.queues.select_add(queue(name))  # the selection outlives the task consumer
    task_consumer = getattr(c, "task_consumer", None)
    if task_consumer is None or name in {q.name for q in task_consumer.queues}:
        return
    if now:
        c.add_task_queue(name, exchange=name, exchange_type="direct", routing_key=name)
    else:
        task_consumer.add_queue(queue(name))


def delete_generated_session_queue(c: Any, name: str) -> None:
    """At a clean worker shutdown, delete the session queue of a generated worker id (GENERATED_ID_MARK): no process
    will ever consume it again. Safe: what was routed there is still pending in the store, which hands it to another
    worker; its x-expires deletes it anyway where the broker honours that (not kombu < 5.7's Redis transport), this
    only does it at once. Best effort, on its own short-lived connection (the consumer's may be closing)."""
    try:
        with c.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)  # a broker that is down must not hold up the shutdown
            bound = queue(name).bind(conn.default_channel)
            bound.declare()  # kombu's virtual transports (Redis) delete only the bindings their channel has seen
            bound.delete()
        log.info("deleted session queue %s of this worker (generated id)", name)
    except Exception:  # noqa: BLE001 - its x-expires removes it later
        log.warning("could not delete session queue %s at shutdown", name, exc_info=True)


class TagFollower:
    """Has a consumer with TagFilter.ANY also consume the queues of tags first used after it started: a thread
    reads the store's tags (never the consumer's thread, which must not block on the database), and the consumer's
    timer hands what it found to the consumer's own thread."""

    def __init__(self, store: Callable[[], Store], names: QueueNames, interval_s: float = FOLLOW_INTERVAL_S):
        self._store = store
        self._names = names
        self._interval_s = interval_s
        self._found: queue_module.SimpleQueue[str] = queue_module.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tref: Any = None

    def start(self, c: Any) -> None:
        """Follow new tags for consumer `c` (idempotent: a restarted consumer keeps the running thread)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            seen = consumed_queues(c)
            self._thread = threading.Thread(
                target=self._follow, args=(seen, self._stop), name="duroxide-follow-tags", daemon=True
            )
            self._thread.start()
        if self._tref is None:
            self._tref = c.timer.call_repeatedly(DRAIN_INTERVAL_S, self._drain, (c,))

    def stop_draining(self) -> None:
        """The consumer stops (it may restart): its timer entry goes; the follower thread goes on."""
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def shutdown(self) -> None:
        self.stop_draining()
        self._stop.set()

    def _follow(self, seen: set[str], stop: threading.Event) -> None:
        while not stop.wait(self._interval_s):
            try:
                tags = self._store().known_tags()
            except Exception:  # noqa: BLE001 - a database blip: try again next round
                log.warning("could not read activity tags from the store", exc_info=True)
                continue
            for tag in sorted(tags):
                name = self._names.activity_queue(tag)
                if name not in seen:
                    seen.add(name)
                    self._found.put(name)

    def _drain(self, c: Any) -> None:
        while True:
            try:
                name = self._found.get_nowait()
            except queue_module.Empty:
                return
            if c.hub is not None:  # the timer runs in the event loop: this is the consumer's thread
                _safe_consume(c, name)
            else:  # a timer thread: the consumer's loop runs pending operations between messages
                c.call_soon(_safe_consume, c, name)


def _safe_consume(c: Any, name: str) -> None:
    try:
        consume(c, name, now=True)
    except Exception:  # noqa: BLE001 - selected already: a restarted consumer picks it up
        log.exception("could not start consuming %s", name)
