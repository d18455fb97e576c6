"""Runtime: the registry of orchestrations and activities, bound to a Celery app, and the start/shutdown facade.

With no app given (the embedded default) it runs the engine's Celery tasks on in-process workers over kombu's
memory transport, with a thread that fires timers and runs the recovery sweep (tasks/embedded.py). With your Celery
app, it registers the tasks and the worker hooks (tasks/hooks.py); `celery worker` and `celery beat` processes run
them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from celery import Celery

from .metrics import Metrics, MetricsSnapshot
from .observability.otel import Tracing
from .options import RuntimeOptions
from .providers import Provider
from .providers.flow import ActivityLimit, parse_rate
from .providers.store import Store
from .registry import Registry
from .replay.limits import MAX_CONCURRENCY_LIMIT, MAX_NAME_CHARS, check_text
from .tagfilter import parse_cli_tag_filter, parse_filter
from .tasks.binding import bind_runtime
from .tasks.consume import activity_queues, served_tags
from .tasks.embedded import EmbeddedWorker, embedded_app
from .tasks.engine_cache import LruCache
from .tasks.hooks import install_worker_hooks
from .tasks.identity import WorkerIdentity, check_worker_id
from .tasks.install import install_tasks
from .tasks.publish import Publisher, Unpublishable, live_publishers
from .tasks.queues import QueueNames
from .tasks.recovery import wake_backed_off

log = logging.getLogger(__name__)


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


def _is_in_memory(provider: Provider) -> bool:
    """SqliteProvider.in_memory()'s flag (`is_in_memory`, earlier `in_memory`; `is True`: never the classmethod)."""
    return getattr(provider, "is_in_memory", getattr(provider, "in_memory", False)) is True


def _check_concurrency(value: object, what: str, of: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} of {of} must be a positive int, got {value!r}")
    if not 1 <= value <= MAX_CONCURRENCY_LIMIT:
        raise ValueError(f"{what} of {of} must be from 1 to {MAX_CONCURRENCY_LIMIT}, got {value}")


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
        #: Who this worker is and which tags it serves; a bad worker_node_id (it names a broker queue) or tag
        #: filter fails here, not later. The executors read it; `configure_worker` is the one way to change it.
        self.identity = WorkerIdentity.create(self.options.worker_node_id, self.options.worker_tag_filter)
        self.metrics = Metrics()
        #: OpenTelemetry spans of turns and activity attempts (inert without a configured TracerProvider).
        self.tracing = Tracing()
        Registry.__init__(self)
        #: Activity limits by activity name (`limit`) and start limits by orchestration name (`limit_starts`),
        #: written to the store at start.
        self.limits: dict[str, ActivityLimit] = {}
        self.start_limits: dict[str, ActivityLimit] = {}
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
            elif _is_in_memory(provider):
                # `celery worker` processes of the app could never see this process's private database.
                raise ValueError(
                    "SqliteProvider.in_memory() is private to this process, so the workers of Celery app "
                    f"{app.main!r} would each get an empty database of their own: use SqliteProvider.open(path) "
                    "or PostgresProvider.connect(url) with an app (in_memory() is for the embedded runtime, no app)"
                )
        if self.embedded and self.options.orchestration_threads == 0 and self.options.activity_threads == 0:
            # An embedded runtime's threads are its only workers: with none, nothing it serves would ever run.
            raise ValueError(
                "RuntimeOptions(orchestration_concurrency=0, worker_concurrency=0) leaves the embedded runtime "
                "(no Celery app) no thread to run turns or activities: give at least one of them a value >= 1"
            )
        if self.embedded and 0 in (self.options.orchestration_threads, self.options.activity_threads):
            # Legitimate only beside another embedded runtime on the same store in this process (one node per role).
            none = "turns" if self.options.orchestration_threads == 0 else "activities"
            log.warning(
                "this embedded runtime runs no %s (concurrency 0): they run only if another Runtime on the same "
                "store in this process does",
                none,
            )
        if self.embedded:
            # Broker queues live in process memory: name them after the store so two stores never share them.
            prefix = f"{prefix}-{provider.token}"
            app = embedded_app(provider.token, QueueNames(prefix))
            bind_runtime(app, self)  # its workers' consumer step finds this runtime
        assert app is not None
        self.app: Celery = app
        if self.host_app is not None:
            bind_runtime(self.host_app, self)  # found by the beat scheduler, the worker hooks, Client and CLI
        self.names = QueueNames(prefix)
        self.publisher = Publisher(app, self.names, coalesce=self.embedded)
        if self.eager:
            self.publisher.on_first_send = self.start
        self.publisher.on_unpublishable = self._fail_unpublishable
        installed = install_tasks(app, self)
        self._activity_executor = installed.activities
        #: This process's cache of suspended replay engines (bounded by options.engine_cache_max_bytes).
        self.engine_cache: LruCache[Any] | None = installed.engine_cache
        self._embedded: EmbeddedWorker | None = None
        if self.embedded:
            self._embedded = EmbeddedWorker(
                app, self.names, self.identity, self.options, lambda: provider.store, self.publisher
            )
        else:
            # Engine queues, store check, engine-only worker settings, --duroxide-* options, the beat check.
            install_worker_hooks(app)
            # A Client(provider) in this process (a web view importing the Celery app) wakes workers at once.
            live_publishers.attach(provider.token, self.publisher)
        self._started = False

    @property
    def store(self) -> Store:
        return self.provider.store

    @property
    def worker_id(self) -> str:
        """This worker's id (RuntimeOptions.worker_node_id, --duroxide-node-id, or generated per process)."""
        return self.identity.worker_id

    def orchestration_names(self) -> list[str]:
        """The names of the orchestrations registered here."""
        return list(self._orchestrations)

    def configure_worker(self, worker_id: str | None = None, tag_filter: str | None = None) -> None:
        """Give this process's worker another id and tag filter (`celery worker --duroxide-node-id/
        --duroxide-tag-filter`), before it consumes: `options` and the `identity` the executors read change together.
        A bad value raises ValueError and changes nothing."""
        changes: dict[str, str] = {}
        if worker_id is not None:
            changes["worker_node_id"] = check_worker_id(worker_id)
        if tag_filter is not None:
            changes["worker_tag_filter"] = parse_cli_tag_filter(tag_filter)
        if not changes:
            return
        options = dataclasses.replace(self.options, **changes)
        parsed = parse_filter(options.worker_tag_filter)
        self.options = options
        if worker_id is not None:
            self.identity.worker_id, self.identity.stable = changes["worker_node_id"], True
        self.identity.tag_filter = parsed

    # -- flow control -------------------------------------------------------------------------------------------
    def limit(
        self,
        activity: str,
        *,
        limit: int | None = None,
        key_limit: int | None = None,
        rate: str | None = None,
        key_rate: str | None = None,
    ) -> None:
        """Limit `activity` across all workers: at most `limit` running at once in all and `key_limit` per key
        (`ctx.schedule_activity(...).with_key("tenant:42")`; work without a key shares one key), and at most
        `rate` admissions per period in all and `key_rate` per key ("10/s", "100/m", "1000/h"). Work beyond a
        limit waits in the store (not in the broker) and is admitted fairly across keys as slots free.

        Limits are stored (where every worker reads them) when this runtime starts, or at once if it has; register
        them on every runtime of the app, like activities. The activity need not be registered here (a turn-only
        worker stores the limits of activities other workers run)."""
        name = check_text(activity, "limit's activity name", MAX_NAME_CHARS)
        if limit is None and key_limit is None and rate is None and key_rate is None:
            raise ValueError(f"limit({name!r}) needs limit=, key_limit=, rate= or key_rate= (any of them)")
        for what, value in (("limit", limit), ("key_limit", key_limit)):
            if value is not None:
                _check_concurrency(value, what, f"activity {name!r}")
        rates = [
            None if r is None else parse_rate(r, f"{w} of activity {name!r}")
            for w, r in (("rate", rate), ("key_rate", key_rate))
        ]
        self.limits[name] = ActivityLimit(name, limit, key_limit, rates[0], rates[1])
        if self._started:
            self.store_limits([self.limits[name]])

    def limit_starts(self, orchestration: str, *, limit: int | None = None, key_limit: int | None = None) -> None:
        """Limit how many instances of `orchestration` run at once across all workers: at most `limit` in all and
        `key_limit` per key (`client.start_orchestration(..., key="tenant:42")`; starts without a key share one).
        A Client start beyond the limit waits in the store (Running, with a waiting reason) until an instance of
        the orchestration ends, admitted fairly across keys, oldest first within a key. Stored like `limit`."""
        name = check_text(orchestration, "limit_starts' orchestration name", MAX_NAME_CHARS)
        if limit is None and key_limit is None:
            raise ValueError(f"limit_starts({name!r}) needs limit=, key_limit= or both")
        for what, value in (("limit", limit), ("key_limit", key_limit)):
            if value is not None:
                _check_concurrency(value, what, f"orchestration {name!r}")
        self.start_limits[name] = ActivityLimit(name, limit, key_limit)
        if self._started:
            self.store_limits([], [self.start_limits[name]])

    def store_limits(self, which: list[ActivityLimit] | None = None, starts: list[ActivityLimit] | None = None) -> None:
        """Write this runtime's limits to the store (the truth every worker's claims go by) and publish the held
        work and wake the held starts they now let in (at start, and by each `celery worker` when ready)."""
        for item in self.limits.values() if which is None else which:
            self.publisher.activities(self.store.set_limit(item))
        for item in self.start_limits.values() if starts is None else starts:
            self.publisher.poke(self.store.set_start_limit(item.name, item.limit, item.key_limit))

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the embedded worker and scheduler (non-blocking). With your own Celery app this only checks the
        store; run `celery worker`/`celery beat` processes to do the work."""
        if self._started:
            return
        _ = self.store  # create/migrate the schema now, not in the first task
        self._started = True
        live_publishers.attach(self.provider.token, self.publisher)
        self.store_limits()
        wake_backed_off(self.store, self.publisher, self.orchestration_names())
        if self._embedded is None:
            return
        # A start after shutdown() starts everything afresh: new workers and threads.
        self._renew_leases_again()
        if self.publisher.pending is not None:
            self.publisher.pending.reset()
        self._embedded.start()

    def _renew_leases_again(self) -> None:
        """shutdown() stopped the activity lease renewer for good: a restarted runtime needs a fresh one."""
        if self._activity_executor is not None:
            self._activity_executor.restart_renewer()

    def worker_activity_queues(self, tags: set[str] | None = None) -> list[str]:
        """The activity queues a worker with this runtime's tag filter consumes: `<prefix>.activities` if the filter
        accepts untagged work, `<prefix>.activities.<tag>` per tag it names (with TagFilter.ANY: every tag in use)."""
        tag_filter = self.identity.tag_filter
        return activity_queues(self.names, tag_filter, served_tags(tag_filter, self.store) if tags is None else tags)

    def shutdown(self, timeout_ms: int | None = None) -> None:
        """Stop the embedded worker: running tasks finish (up to timeout_ms), nothing pending is lost."""
        if not self._started:
            return
        self._started = False
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms is not None else 30.0)
        if self._activity_executor is not None:
            self._activity_executor.renewer.stop()
        if self._embedded is not None:
            self._embedded.stop(deadline)
        self._release_sessions()
        live_publishers.detach(self.provider.token, self.publisher)

    def _release_sessions(self) -> None:
        """Without a stable worker id nobody will come back for this runtime's sessions: free them now, so their
        next activities go to another worker at once instead of after the session lock expires. (A stable id keeps
        them: a restart resumes them, as with duroxide.)"""
        executor = self._activity_executor
        if self.identity.stable or executor is None or not executor.renewer.holds_sessions:
            return
        worker_id = self.identity.worker_id
        try:
            released = self.store.release_sessions(worker_id)
        except Exception:  # noqa: BLE001 - their locks expire anyway
            log.exception("could not release the sessions of %s", worker_id)
            return
        if released:
            log.info("released %d sessions of %s at shutdown", released, worker_id)

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
                recorded = store.fail_work_item(key, self.worker_id, details, claimed.session_id)
                if recorded is not None:
                    self.publisher.poke([(item.instance_id, claimed.orchestration_name)])
                    self.publisher.activities(recorded.admitted)  # held work its freed slot let in
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
