"""The embedded runtime's Celery thread pool, with each task run under its own app and one turn per instance at a
time; and a consumer that keeps to its worker's queues.

Celery finds the app of a task through a thread-local `current_app`; pool threads would fall back to the
process default app, so two embedded runtimes (two apps) in one process would run each other's tasks wrongly.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.concurrency import thread
from celery.worker.consumer import Consumer

from .queues import TURN_TASK, queue

log = logging.getLogger(__name__)

#: How long a turn waits for the running turn of its instance before it runs anyway (and, finding the instance
#: leased, leaves it to the holder): a turn stuck in orchestration code must not pile up waiting threads.
TURN_WAIT_S = 1.0


def _turn_instance(args: Any) -> str | None:
    """The instance id of a turn task's message (Celery hands the pool the task name and the raw JSON body)."""
    try:
        if args[0] != TURN_TASK:
            return None
        body = args[3]
        decoded = json.loads(body) if isinstance(body, str | bytes | bytearray | memoryview) else body
        instance_id = decoded[0][0]
        return instance_id if isinstance(instance_id, str) else None
    except Exception:  # noqa: BLE001 - an unexpected shape: run it unserialized, as Celery would
        return None


class AppBoundThreadPool(thread.TaskPool):
    #: Celery's Pool step copies this into a process-wide flag. The embedded worker shares the user's process, so
    #: it must not make the user's own `AsyncResult.get()` refuse with "Never call result.get() within a task".
    task_join_will_block = False

    def on_apply(
        self, target: Callable[..., Any], args: Any = None, kwargs: Any = None, *rest: Any, **opts: Any
    ) -> Any:
        app = self.app
        instance_id = _turn_instance(args)

        def run_under_app(*a: Any, **kw: Any) -> Any:
            app.set_current()
            try:
                return run(*a, **kw)
            finally:
                _close_django_connections()

        def run(*a: Any, **kw: Any) -> Any:
            if instance_id is None:
                return target(*a, **kw)
            # Turns of one instance run one after the other: a second poke taken while a turn of its instance runs
            # waits for it, instead of contending for the instance lease on another thread and then running a turn
            # of one message. While it waits its poke still counts as pending (PendingPokes), so the completions
            # arriving meanwhile add no pokes and the next turn takes them all at once. Only one turn waits per
            # instance, for at most TURN_WAIT_S; any other runs at once, as without this.
            lock = self._instance_lock(instance_id)
            held = lock.acquire()
            try:
                return target(*a, **kw)
            finally:
                lock.done(held)

        return super().on_apply(run_under_app, args, kwargs, *rest, **opts)

    def _instance_lock(self, instance_id: str) -> _InstanceLock:
        guard = self.__dict__.setdefault("_locks_guard", threading.Lock())
        with guard:
            locks: dict[str, _InstanceLock] = self.__dict__.setdefault("_instance_locks", {})
            lock = locks.get(instance_id)
            if lock is None:
                lock = locks[instance_id] = _InstanceLock(instance_id, locks, guard)
            lock.users += 1
            return lock


def _close_django_connections() -> None:
    """After each task of the in-process worker, close this thread's Django connections that are past their
    CONN_MAX_AGE, as Celery's Django fixup does for worker tasks (the private app carries no fixups): otherwise an
    activity's connection stays open, and the test runner cannot drop the test database."""
    db = sys.modules.get("django.db")
    if db is None:
        return
    try:
        from django.conf import settings

        if settings.configured:
            db.close_old_connections()
    except Exception:  # noqa: BLE001 - closing is a courtesy; the task's outcome is already recorded
        log.debug("could not close Django connections", exc_info=True)


class _InstanceLock:
    """A lock per instance with turns running or waiting; forgotten when the last of them is done."""

    def __init__(self, instance_id: str, table: dict[str, _InstanceLock], guard: threading.Lock):
        self.instance_id = instance_id
        self.users = 0
        self._lock = threading.Lock()
        self._table = table
        self._guard = guard

    def acquire(self) -> bool:
        """Wait for the instance's running turn (unless another turn already waits); True if now held."""
        with self._guard:
            may_wait = self.users <= 2  # the running turn and this one
        return self._lock.acquire(timeout=TURN_WAIT_S) if may_wait else self._lock.acquire(blocking=False)

    def done(self, held: bool) -> None:
        if held:
            self._lock.release()
        with self._guard:
            self.users -= 1
            if self.users == 0:
                self._table.pop(self.instance_id, None)


class OwnQueues(bootsteps.StartStopStep):
    """Makes a consumer take exactly its worker's `duroxide_queues`.

    Celery keeps the queues a worker consumes in an app-wide selection (`app.amqp.queues`), read when a consumer
    starts: two workers of one app in one process (the embedded runtime's turn worker and activity worker, each
    with its own thread pool) would both consume whichever selection was made last. This step runs after the
    task consumer is built and before it starts consuming, and swaps in the worker's own queues."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        wanted = getattr(getattr(c, "controller", None), "duroxide_queues", None)
        consumer = getattr(c, "task_consumer", None)
        if wanted is None or consumer is None:
            return
        for q in consumer.queues:
            if q.name not in wanted:
                consumer.cancel_by_queue(q.name)
        present = {q.name for q in consumer.queues}
        for name in wanted:
            if name not in present:
                consumer.add_queue(queue(name))


class OwnQueuesConsumer(Consumer):
    """Celery's worker consumer plus the OwnQueues step and the engine's consumer step (tasks/hooks.py: session
    queue, new tags), which `celery worker` consumers of the user's app run too."""

    class Blueprint(Consumer.Blueprint):
        default_steps = [
            *Consumer.Blueprint.default_steps,
            f"{__name__}:OwnQueues",
            "duroxide_celery.tasks.hooks:EngineQueues",
        ]
