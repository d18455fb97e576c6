"""Runtime: registries of orchestrations and activities, bound to a Celery app.

With no app given (the embedded default) it runs the engine's Celery tasks on an in-process worker over kombu's
memory transport, with a thread that fires timers and runs the recovery sweep. With your Celery app, it only
registers the tasks; `celery worker` and `celery beat` processes run them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from celery import Celery

from .metrics import Metrics, MetricsSnapshot
from .options import RuntimeOptions
from .providers import Provider
from .providers.store import Store, now_ms
from .registry import Registry
from .tagfilter import parse_filter
from .tasks.engine_cache import LruCache
from .tasks.install import install_tasks
from .tasks.publish import Publisher, Unpublishable
from .tasks.queues import QueueNames, embedded_settings
from .tasks.recovery import fire_what_is_due, sweep
from .tasks.thread_pool import AppBoundThreadPool, OwnQueuesConsumer

log = logging.getLogger(__name__)

_EMBEDDED_POLLING_S = 0.001
_SCHEDULER_MAX_SLEEP_S = 0.25


def _check_host_app(app: Any) -> None:
    """The engine's messages are JSON (DESIGN invariant 5): an app whose workers refuse JSON could never run them."""
    if not isinstance(app, Celery):
        raise TypeError(f"app must be a celery.Celery application, got {type(app).__name__}")
    accepted = app.conf.accept_content
    if accepted is not None and not any(c in ("json", "application/json") for c in accepted):
        raise ValueError(
            f"this Celery app's accept_content is {list(accepted)!r}: duroxide-celery sends JSON messages, so add "
            "'json' to accept_content (e.g. accept_content=[..., 'json'])"
        )


class Runtime(Registry):
    """Runs orchestrations and activities (duroxide-python's `Runtime`, on Celery)."""

    def __init__(self, provider: Provider, options: RuntimeOptions | None = None, app: Celery | None = None):
        if not isinstance(provider, Provider):
            raise TypeError(
                f"Runtime needs a provider (SqliteProvider.open/in_memory, PostgresProvider.connect), got {provider!r}"
            )
        if options is not None and not isinstance(options, RuntimeOptions):
            raise TypeError(f"options must be a RuntimeOptions, got {type(options).__name__}")
        self.provider = provider
        self.options = options or RuntimeOptions()
        self.embedded = app is None
        if self.options.worker_node_id is not None:
            from .worker_options import check_node_id

            check_node_id(self.options.worker_node_id)  # it names a broker queue: a clear error now, not later
        self.worker_id = self.options.worker_node_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.metrics = Metrics()
        self.tag_filter = parse_filter(self.options.worker_tag_filter)  # a bad filter fails here, not later
        Registry.__init__(self)
        prefix = self.options.prefix
        #: The user's Celery app, untouched apart from the engine's own tasks (DESIGN invariant 8); None embedded.
        self.host_app = app
        #: With `task_always_eager` (a test setup) nothing runs in `celery worker` processes: the engine then runs
        #: in this process, like the embedded default, and starts with the first message it sends.
        self.eager = False
        if app is not None:
            _check_host_app(app)
            self.eager = bool(app.conf.task_always_eager)
            if self.eager:
                log.info("task_always_eager is set on %s: duroxide runs orchestrations in this process", app.main)
                self.embedded = True
        if self.embedded:
            # Broker queues live in process memory: name them after the store so two stores never share them.
            prefix = f"{prefix}-{provider.token}"
            # No fixups: Celery's Django fixup would close this process's Django connections when the in-process
            # worker starts (a TestCase's own connection among them).
            own = Celery(
                f"duroxide-embedded-{provider.token}", broker="memory://localhost//", set_as_current=False, fixups=[]
            )
            own.conf.update(embedded_settings(QueueNames(prefix)))
            own.conf.update(
                broker_transport="duroxide_celery.tasks.memory_transport:Transport",
                broker_transport_options={"polling_interval": _EMBEDDED_POLLING_S},
                worker_hijack_root_logger=False,
                worker_send_task_events=False,
            )
            own.duroxide_runtime = self
            app = own
        assert app is not None
        self.app: Celery = app
        if self.host_app is not None:
            self.host_app.duroxide_runtime = self  # found by the beat scheduler, the worker hooks, Client and CLI
        self.names = QueueNames(prefix)
        self.publisher = Publisher(app, self.names, coalesce=self.embedded)
        if self.eager:
            self.publisher.on_first_send = self.start
        self.publisher.on_unpublishable = self._fail_unpublishable
        self._activity_executor: Any = None
        #: This process's cache of suspended replay engines (bounded by options.engine_cache_max_bytes).
        self.engine_cache: LruCache[Any] | None = None
        install_tasks(app, self)
        if not self.embedded:
            from .beat import connect_beat_check as warn_beat_without_timers
            from .tasks.worker_start import install_worker_hooks
            from .worker_options import install_worker_options

            install_worker_hooks(app, self)  # engine queues, store check, engine-only worker settings
            warn_beat_without_timers()  # a beat of this app whose scheduler fires no durable timers says so
            install_worker_options(app)  # celery worker --duroxide-tag-filter/--duroxide-node-id
            # A Client(provider) in this process (a web view importing the Celery app) wakes workers at once.
            provider.attach_publisher(self.publisher)
        #: The embedded workers: one consumes the orchestrator queue with orchestration_concurrency threads, the
        #: other the activity queues with worker_concurrency threads, so activities can never take every thread
        #: and starve turns (timers, timeouts and new instances would then wait for the slowest activity).
        self._turn_worker: Any = None
        self._activity_worker: Any = None
        self._worker_threads: list[threading.Thread] = []
        self._scheduler: threading.Thread | None = None
        self._stop = threading.Event()
        self._timer_wake = threading.Event()
        self._started = False
        self._consumed_tags: set[str] = set()

    @property
    def store(self) -> Store:
        return self.provider.store

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the embedded worker and scheduler (non-blocking). With your own Celery app this only checks the
        store; run `celery worker`/`celery beat` processes to do the work."""
        if self._started:
            return
        _ = self.store  # create/migrate the schema now, not in the first task
        self._started = True
        self.provider.attach_publisher(self.publisher)
        self._wake_backed_off()
        if not self.embedded:
            return
        # A start after shutdown() starts everything afresh: stop flags cleared, new workers and threads.
        self._stop = threading.Event()  # a scheduler thread left over from before (stuck past shutdown) keeps its own
        self._timer_wake.clear()
        self._renew_leases_again()
        if self.publisher.pending is not None:
            self.publisher.pending.reset()
        self._worker_threads = []
        if self.options.orchestration_threads > 0:
            turn_queues = [self.names.orchestrator]
            self._turn_worker = self._start_worker("turns", turn_queues, self.options.orchestration_threads)
        if self.options.activity_threads > 0:
            self._consumed_tags = self._served_tags()
            queues = self.worker_activity_queues(self._consumed_tags)
            queues.append(self.names.session_queue(self.worker_id))  # activities of the sessions it owns
            self._activity_worker = self._start_worker("activities", queues, self.options.activity_threads)
        self.publisher.on_timer = lambda _fire_at: self._timer_wake.set()
        self._scheduler = threading.Thread(
            target=self._schedule_loop, args=(self._stop,), name="duroxide-scheduler", daemon=True
        )
        self._scheduler.start()

    def _start_worker(self, role: str, queues: list[str], threads: int) -> Any:
        """An in-process Celery worker with its own thread pool, consuming `queues`."""
        worker = self.app.WorkController(
            pool_cls=AppBoundThreadPool,
            consumer_cls=OwnQueuesConsumer,
            concurrency=threads,
            queues=queues,
            hostname=f"duroxide-{role}-{self.worker_id}@embedded",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        worker.duroxide_queues = list(queues)  # the selection is app-wide: OwnQueuesConsumer keeps to these
        thread = threading.Thread(target=worker.start, name=f"duroxide-worker-{role}", daemon=True)
        thread.start()
        self._worker_threads.append(thread)
        return worker

    def _renew_leases_again(self) -> None:
        """shutdown() stopped the activity lease renewer for good: a restarted runtime needs a fresh one."""
        executor = self._activity_executor
        if executor is None or not getattr(executor.renewer, "_stopped", False):
            return
        from .tasks.activity import LeaseRenewer

        executor.renewer = LeaseRenewer(self)

    def _served_tags(self) -> set[str]:
        """The tags this runtime's filter names; with TagFilter.ANY, every tag in use now."""
        return set(self.tag_filter.tags) if self.tag_filter.tags is not None else set(self.store.known_tags())

    def worker_activity_queues(self, tags: set[str] | None = None) -> list[str]:
        """The activity queues a worker with this runtime's tag filter consumes: `<prefix>.activities` if the filter
        accepts untagged work, `<prefix>.activities.<tag>` per tag it names (with TagFilter.ANY: every tag in use)."""
        names = [self.names.activities] if self.tag_filter.untagged else []
        names.extend(self.names.activity_queue(t) for t in sorted(self._served_tags() if tags is None else tags))
        return names

    def _follow_new_tags(self) -> None:
        """TagFilter.ANY also serves tags first used after this worker started: consume their queues too."""
        if self._activity_worker is None or not self.tag_filter.any_tag or self.options.activity_threads == 0:
            return
        consumer = getattr(self._activity_worker, "consumer", None)
        if consumer is None:
            return
        for tag in set(self.store.known_tags()) - self._consumed_tags:
            name = self.names.activity_queue(tag)
            consumer.add_task_queue(name, exchange=name, exchange_type="direct", routing_key=name)
            self._consumed_tags.add(tag)

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self._consume_session_queue(sender)
            try:
                self._wake_backed_off()
            except Exception:  # noqa: BLE001 - an optimisation: the backoff retry still comes
                log.exception("could not wake backed-off instances")

    def _consume_session_queue(self, consumer: Any) -> None:
        """A production worker that runs activities also consumes its own session queue, where the activities of
        the sessions it owns are published (`<prefix>.sessions.<worker_node_id>`)."""
        task_consumer = getattr(consumer, "task_consumer", None)
        if task_consumer is None:
            return
        consumed = {q.name for q in task_consumer.queues}
        if not any(self.names.is_activity_queue(name) for name in consumed):
            return
        name = self.names.session_queue(self.worker_id)
        if name not in consumed:
            consumer.add_task_queue(name, exchange=name, exchange_type="direct", routing_key=name)
            log.debug("worker %s consumes its session queue %s", self.worker_id, name)

    def _wake_backed_off(self) -> None:
        """A worker that brings handlers (a rolling deploy) retries the instances that backed off for lack of
        them now, instead of after the rest of their backoff."""
        names = list(self._orchestrations)
        if names:
            woken = self.store.wake_backed_off(names)
            if woken:
                self.publisher.poke(woken, force=True)

    def shutdown(self, timeout_ms: int | None = None) -> None:
        """Stop the embedded worker: running tasks finish (up to timeout_ms), nothing pending is lost."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        self._timer_wake.set()
        if self._activity_executor is not None:
            self._activity_executor.renewer.stop()
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms is not None else 30.0)
        # Celery's pool stop waits for running tasks without a limit; an activity stuck in user code must not
        # hold shutdown past timeout_ms (its lease lapses and another worker redoes it). Both workers stop at once.
        stoppers = [
            threading.Thread(target=worker.stop, kwargs={"in_sighandler": False}, name="duroxide-stop", daemon=True)
            for worker in (self._turn_worker, self._activity_worker)
            if worker is not None
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        self._turn_worker = self._activity_worker = None
        for thread in (*self._worker_threads, self._scheduler):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._release_sessions()
        self.provider.detach_publisher(self.publisher)

    def _release_sessions(self) -> None:
        """Without a stable worker_node_id nobody will come back for this runtime's sessions: free them now, so
        their next activities go to another worker at once instead of after the session lock expires. (A stable
        node id keeps them: a restart resumes them, as with duroxide.)"""
        executor = self._activity_executor
        if self.options.worker_node_id is not None or executor is None or not executor.renewer.holds_sessions:
            return
        try:
            released = self.store.release_sessions(self.worker_id)
        except Exception:  # noqa: BLE001 - their locks expire anyway
            log.exception("could not release the sessions of %s", self.worker_id)
            return
        if released:
            log.info("released %d sessions of %s at shutdown", released, self.worker_id)

    def _fail_unpublishable(self, failed: list[Unpublishable]) -> None:
        """Activities no message can carry (e.g. a tag whose queue name is over AMQP's 255 bytes) would be
        republished and refused forever: record each as a failure its orchestration can catch, through the same
        claim and completion a worker uses, and wake the orchestration."""
        from .providers.store import ClaimedWorkItem, SessionPolicy
        from .replay import events as ev
        from .replay.events import error_details

        store = self.store
        policy = SessionPolicy(self.options.session_lock_ms, self.options.max_sessions)
        for bad in failed:
            item = bad.item
            key = (item.instance_id, item.execution_id, item.event_id)
            try:
                claimed = store.claim_work_item(key, self.worker_id, self.options.worker_lock_ms, policy)
                if not isinstance(claimed, ClaimedWorkItem):
                    continue  # already done, cancelled, or held by someone (a session owner)
                message = f"activity '{item.name}' cannot be delivered to a worker: {bad.reason}"
                details = error_details(ev.APPLICATION, message, "Undeliverable")  # catchable
                payload = {"details": details}
                if store.complete_work_item(key, self.worker_id, ev.MSG_ACTIVITY_FAILED, payload, claimed.session_id):
                    self.publisher.poke([(item.instance_id, claimed.orchestration_name)])
            except Exception:  # noqa: BLE001 - the sweep offers it again; other rows are unaffected
                log.exception(
                    "could not record undeliverable activity %s#%d of instance %s as failed",
                    item.name,
                    item.event_id,
                    item.instance_id,
                    extra={"instance_id": item.instance_id, "activity_name": item.name},
                )

    def metrics_snapshot(self) -> MetricsSnapshot:
        return self.metrics.snapshot()

    # -- embedded scheduler: the same timer and recovery code beat runs in production ---------------------------
    def _schedule_loop(self, stop: threading.Event) -> None:
        store = self.store
        threshold = 0  # the first sweep republishes everything a previous runtime left pending
        next_sweep = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    self._follow_new_tags()
                    sweep(store, self.publisher, threshold)
                    threshold = self.options.recovery_threshold
                    next_sweep = time.monotonic() + self.options.recovery_interval_s
                due = fire_what_is_due(store, self.publisher)
            except Exception:  # noqa: BLE001 - keep the scheduler alive through database blips
                log.exception("embedded scheduler round failed")
                due = None
            wait = _SCHEDULER_MAX_SLEEP_S
            if due is not None:
                wait = min(wait, max(0.0, (due - now_ms()) / 1000))
            self._timer_wake.wait(wait)
            self._timer_wake.clear()
