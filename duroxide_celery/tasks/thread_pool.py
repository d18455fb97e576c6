"""Celery's thread pool, with each task run under its own app; and a consumer that keeps to its worker's queues.

Celery finds the app of a task through a thread-local `current_app`; pool threads would fall back to the
process default app, so two embedded runtimes (two apps) in one process would run each other's tasks wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.concurrency import thread
from celery.worker.consumer import Consumer

from .queues import queue


class AppBoundThreadPool(thread.TaskPool):
    #: Celery's Pool step copies this into a process-wide flag. The embedded worker shares the user's process, so
    #: it must not make the user's own `AsyncResult.get()` refuse with "Never call result.get() within a task".
    task_join_will_block = False

    def on_apply(
        self, target: Callable[..., Any], args: Any = None, kwargs: Any = None, *rest: Any, **opts: Any
    ) -> Any:
        app = self.app

        def run_under_app(*a: Any, **kw: Any) -> Any:
            app.set_current()
            return target(*a, **kw)

        return super().on_apply(run_under_app, args, kwargs, *rest, **opts)


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
    """Celery's worker consumer plus the OwnQueues step."""

    class Blueprint(Consumer.Blueprint):
        default_steps = [*Consumer.Blueprint.default_steps, f"{__name__}:OwnQueues"]
