"""The embedded runtime's moving parts: a private Celery app over an in-process memory transport, two in-process
workers (turns, activities) and a scheduler thread that fires timers and runs the recovery sweep.

They run the same tasks, consumer bootstep (tasks/hooks.py EngineQueues: session queue, new tags) and scheduler
round (tasks/recovery.py DueWork) as `celery worker` and `celery beat` processes: the same code paths as
production, without a broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from ..options import RuntimeOptions
from ..providers.store import Store
from .consume import activity_queues, served_tags
from .identity import WorkerIdentity
from .publish import Publisher
from .queues import QueueNames, embedded_settings
from .recovery import DueWork
from .thread_pool import AppBoundThreadPool, OwnQueuesConsumer

log = logging.getLogger(__name__)

__all__ = ["EmbeddedWorker", "embedded_app"]

#: Longest sleep of the scheduler thread between looks at the store (a turn that creates a timer wakes it).
_SCHEDULER_MAX_SLEEP_S = 0.25
#: After a failed scheduler round the next comes this much later, doubling up to the maximum (seconds).
_SCHEDULER_RETRY_S = 0.25
_SCHEDULER_RETRY_MAX_S = 2.0


def embedded_app(token: str, names: QueueNames) -> Celery:
    """The embedded runtime's private Celery app (never the user's): JSON, the engine's queues, memory transport."""
    # No fixups: Celery's Django fixup would close this process's Django connections when the in-process worker
    # starts (a TestCase's own connection among them).
    app = Celery(f"duroxide-embedded-{token}", broker="memory://localhost//", set_as_current=False, fixups=[])
    app.conf.update(embedded_settings(names))
    app.conf.update(
        broker_transport="duroxide_celery.tasks.memory_transport:Transport",
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


class EmbeddedWorker:
    """The in-process workers and scheduler of one embedded Runtime; start() after stop() starts them afresh.

    One worker consumes the orchestrator queue with orchestration_concurrency threads, the other the activity
    queues with worker_concurrency threads, so activities can never take every thread and starve turns (timers,
    timeouts and new instances would then wait for the slowest activity)."""

    def __init__(
        self,
        app: Celery,
        names: QueueNames,
        identity: WorkerIdentity,
        options: RuntimeOptions,
        store: Callable[[], Store],
        publisher: Publisher,
    ):
        self._app = app
        self._names = names
        self._identity = identity
        self._options = options
        self._store = store
        self._publisher = publisher
        self._workers: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._wake = threading.Event()

    def start(self) -> None:
        # A scheduler thread left over from before (stuck past stop()) keeps its own stop flag.
        self._stop, self._wake = threading.Event(), threading.Event()
        self._workers, self._threads = [], []
        consumed: list[str] = []
        if self._options.orchestration_threads > 0:
            consumed.append(self._names.orchestrator)
        if self._options.activity_threads > 0:
            tag_filter = self._identity.tag_filter
            consumed += activity_queues(self._names, tag_filter, served_tags(tag_filter, self._store()))
        # Two pools (activities never take the turns' threads): an activity's next turn may run inline in the
        # activity pool, never an activity in the turn pool (tasks/inline.py).
        self._identity.consumed, self._identity.shared_pool = frozenset(consumed), False
        if self._options.orchestration_threads > 0:
            self._start_worker("turns", [self._names.orchestrator], self._options.orchestration_threads)
        if self._options.activity_threads > 0:
            queues = [q for q in consumed if q != self._names.orchestrator]
            queues.append(self._names.session_queue(self._identity.worker_id))  # the sessions it owns
            self._start_worker("activities", queues, self._options.activity_threads)
        wake = self._wake
        self._publisher.on_timer = lambda _fire_at: wake.set()
        due_work = DueWork(
            self._store,
            self._publisher,
            interval_s=self._options.recovery_interval_s,
            threshold_ms=self._options.recovery_threshold,
            max_sleep_s=_SCHEDULER_MAX_SLEEP_S,
            retry_s=_SCHEDULER_RETRY_S,
            retry_max_s=_SCHEDULER_RETRY_MAX_S,
            # Timers fire on time, not ahead: a turn on SQLite (the embedded default) holds the only write
            # transaction while it replays, so it could not wait for a timer fired ahead of its time.
            timer_lead_ms=0,
            logger=log,
        )
        scheduler = threading.Thread(
            target=_schedule, args=(due_work, self._stop, wake), name="duroxide-scheduler", daemon=True
        )
        scheduler.start()
        self._threads.append(scheduler)

    def _start_worker(self, role: str, queues: list[str], threads: int) -> None:
        """An in-process Celery worker with its own thread pool, consuming `queues`."""
        worker = self._app.WorkController(
            pool_cls=AppBoundThreadPool,
            consumer_cls=OwnQueuesConsumer,
            concurrency=threads,
            queues=queues,
            hostname=f"duroxide-{role}-{self._identity.worker_id}@embedded",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        worker.duroxide_queues = list(queues)  # the selection is app-wide: OwnQueuesConsumer keeps to these
        thread = threading.Thread(target=worker.start, name=f"duroxide-worker-{role}", daemon=True)
        thread.start()
        self._workers.append(worker)
        self._threads.append(thread)

    def stop(self, deadline: float) -> None:
        """Stop the workers and the scheduler; running tasks may finish until `deadline` (time.monotonic)."""
        self._stop.set()
        self._wake.set()
        # Celery's pool stop waits for running tasks without a limit; an activity stuck in user code must not hold
        # shutdown past the deadline (its lease lapses and another worker redoes it). Both workers stop at once.
        stoppers = [
            threading.Thread(target=worker.stop, kwargs={"in_sighandler": False}, name="duroxide-stop", daemon=True)
            for worker in self._workers
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        self._workers = []
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _schedule(due_work: DueWork, stop: threading.Event, wake: threading.Event) -> None:
    """The scheduler thread: a DueWork round, then sleep until the next timer falls due or a turn creates one."""
    while not stop.is_set():
        wait = due_work.round()
        wake.wait(wait)
        wake.clear()
