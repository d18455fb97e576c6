"""Every Celery process-lifecycle hook of the engine, in one place: signals, the consumer bootstep, the `celery
worker` command-line options and the beat check. Each finds its Runtime from the app (tasks/binding.py).

What a `celery -A proj worker` of the user's app does for the engine:

- worker_init (after `-Q`/`-X` are applied, before the consumer and pool are built): with no `-Q`, Celery consumes
  the app's `task_queues` (or its default queue); the worker also consumes the engine's queues, so a plain
  `celery -A proj worker` runs the app's tasks and the workflows. `-Q` narrows as usual. A worker that consumes
  any engine queue checks the store first and exits with the reason when it is unusable. A worker whose queues
  are all engine queues takes the settings the engine wants for its own work (prefetch of one, cancel on
  connection loss, no Redis ack emulation); a worker that also serves the app's queues keeps the app's settings
  (DESIGN invariant 8).
- `--duroxide-tag-filter FILTER --duroxide-node-id NODE` (FILTER: tagfilter.parse_cli_tag_filter) override
  RuntimeOptions(worker_tag_filter=..., worker_node_id=...) for that process only. The consumer bootstep
  (`EngineQueues.__init__`, while the worker is built, before a prefork pool forks) applies them through
  `Runtime.configure_worker`, once. With a filter in force (from the command line or RuntimeOptions) the worker
  consumes the activity queues the filter names in addition to the queues given with `-Q`; without `-Q` the
  untagged activity queue is dropped when the filter does not accept untagged work.
- When the consumer starts (`EngineQueues.start`, also in the embedded runtime's workers): a consumer of activity
  queues also consumes its session queue and, with the `any` filter, follows tags first used later
  (tasks/consume.py).
- worker_ready: store the flow-control limits the app registers; wake instances that were waiting for this
  worker's handlers.
- With DUROXIDE_METRICS_PORT set, each process of the worker that runs tasks serves its Prometheus metrics
  (observability/prometheus.py).
- beat_init: a beat of an app with a Runtime whose scheduler lacks durable timers says so.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

import click
from celery import Celery, bootsteps, concurrency
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import beat_init, worker_init, worker_process_init, worker_ready
from celery.utils.log import current_process_index

from ..beat import warn_without_durable_timers
from ..broker_acks import apply_to_worker
from ..providers.check import StoreNotReady, check_store
from ..tagfilter import parse_cli_tag_filter
from .binding import runtime_of
from .consume import (
    TagFollower,
    activity_queues,
    consume,
    consumed_queues,
    delete_generated_session_queue,
    served_tags,
)
from .identity import WorkerIdentity, check_worker_id
from .queues import QueueNames, queue
from .recovery import wake_backed_off

if TYPE_CHECKING:
    from ..options import RuntimeOptions
    from ..providers import Provider
    from ..providers.store import Store
    from .publish import Publisher

log = logging.getLogger(__name__)

__all__ = [
    "NODE_ID_OPTION",
    "TAG_FILTER_OPTION",
    "EngineQueues",
    "HookedRuntime",
    "install_worker_hooks",
    "is_configured",
]

TAG_FILTER_OPTION = "--duroxide-tag-filter"
NODE_ID_OPTION = "--duroxide-node-id"


class HookedRuntime(Protocol):
    """What the hooks use of a Runtime (duroxide_celery.Runtime implements it)."""

    embedded: bool
    identity: WorkerIdentity
    names: QueueNames
    options: RuntimeOptions
    provider: Provider
    publisher: Publisher

    @property
    def store(self) -> Store: ...

    def orchestration_names(self) -> list[str]: ...

    def configure_worker(self, worker_id: str | None = None, tag_filter: str | None = None) -> None: ...

    def store_limits(self) -> None: ...


def is_configured(app: Celery, key: str) -> bool:
    """Whether the app's own configuration (update(), config_from_object, a Django namespace) sets `key`, as
    opposed to Celery's default."""
    _ = app.conf.task_serializer  # load pending configuration, so its sources are inspectable
    names = {key, key.upper()}
    if app.namespace:
        names |= {f"{app.namespace}_{key}".upper(), f"{app.namespace}_{key}"}
    return any(name in source for source in app.conf.maps[:-1] for name in names)  # the last map: defaults


def _worker_runtime(sender: Any) -> HookedRuntime | None:
    """The Runtime of a `celery worker` of the user's app; None for other apps and for embedded runtimes (whose
    private workers need none of the worker_init/worker_ready work)."""
    runtime = runtime_of(getattr(sender, "app", None))
    return None if runtime is None or runtime.embedded else runtime


def install_worker_hooks(app: Celery) -> None:
    """Install the hooks for `celery worker` and `celery beat` processes of `app` (idempotent)."""
    worker_init.connect(_on_worker_init, weak=False, dispatch_uid="duroxide-worker-init")
    worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="duroxide-worker-ready")
    beat_init.connect(warn_without_durable_timers, weak=False, dispatch_uid="duroxide-beat-check")
    if getattr(app, "_duroxide_worker_options", False):
        return
    app._duroxide_worker_options = True
    app.user_options["worker"].add(
        click.Option(
            [TAG_FILTER_OPTION],
            default=None,
            callback=_click_check(parse_cli_tag_filter),
            help="duroxide: activity tags this worker serves (default_only, any, none, gpu, gpu,cpu, "
            "default_and:gpu; overrides RuntimeOptions.worker_tag_filter).",
        )
    )
    app.user_options["worker"].add(
        click.Option(
            [NODE_ID_OPTION],
            default=None,
            callback=_click_check(check_worker_id),
            help="duroxide: stable node id of this worker: lease owner and session identity "
            "(overrides RuntimeOptions.worker_node_id).",
        )
    )
    app.steps["consumer"].add(EngineQueues)


def _click_check(check: Any) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    runtime = _worker_runtime(sender)
    if runtime is not None:
        prepare_worker(sender, runtime)
        serve_metrics(sender, runtime)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    runtime = _worker_runtime(sender)
    if runtime is None:
        return
    try:
        runtime.store_limits()  # the flow-control limits this worker's code registers (Runtime.limit)
    except Exception:  # noqa: BLE001 - a worker runs without; the limits stored before still hold
        log.exception("could not store the flow-control limits of this worker")
    try:
        wake_backed_off(runtime.store, runtime.publisher, runtime.orchestration_names())
    except Exception:  # noqa: BLE001 - an optimisation: the backoff retry still comes
        log.exception("could not wake backed-off instances")


def prepare_worker(worker: Any, runtime: HookedRuntime) -> None:
    """worker_init runs after `-Q`/`-X` are applied and before the consumer and pool are built."""
    app, names = worker.app, runtime.names
    queues = app.amqp.queues
    if getattr(queues, "_consume_from", None) is None:  # no -Q: the app's declared queues, and the engine's
        wanted = [names.orchestrator]
        if runtime.identity.tag_filter.untagged:
            wanted.append(names.activities)  # a tag filter adds its own queues in EngineQueues
        for name in wanted:
            queues.select_add(queue(name))
    consumed = list(queues.consume_from or queues)
    ours = [name for name in consumed if names.is_ours(name)]
    if not ours:
        return  # this worker serves only the app's own queues: the engine stays out of its way
    try:
        check_store(runtime.provider)
    except StoreNotReady as exc:
        # worker_init's dispatcher swallows exceptions; SystemExit is not one: the worker stops here, printing this.
        raise SystemExit(f"duroxide-celery: {exc}") from None
    if len(ours) == len(consumed):
        _engine_only_settings(worker, app)
        apply_to_worker(app, names)


def serve_metrics(worker: Any, runtime: HookedRuntime) -> None:
    """DUROXIDE_METRICS_PORT=N: prefork children serve their metrics on N + their index (their counters are their
    own), a solo or thread-pool worker on N."""
    if not os.environ.get("DUROXIDE_METRICS_PORT", "").strip():
        return
    try:
        from ..observability.prometheus import serve_worker_process
    except ImportError:
        log.error("DUROXIDE_METRICS_PORT is set, but prometheus_client is not installed: no metrics endpoint")
        return
    pool = concurrency.get_implementation(worker.pool_cls)
    if isinstance(pool, type) and issubclass(pool, PreforkPool):
        # Connected here, in the parent: the handler runs in each child the pool forks (and re-forks).
        worker_process_init.connect(
            lambda **_: serve_worker_process(runtime, current_process_index(base=0)), weak=False
        )
    else:
        serve_worker_process(runtime, None)


def _engine_only_settings(worker: Any, app: Celery) -> None:
    """Settings for a worker that runs only engine work, where the app did not choose otherwise."""
    if not is_configured(app, "worker_prefetch_multiplier"):
        # A worker reserves at most one message per process: a long activity never holds others back.
        worker.prefetch_multiplier = 1
    if not is_configured(app, "worker_cancel_long_running_tasks_on_connection_loss"):
        app.conf.worker_cancel_long_running_tasks_on_connection_loss = True
    log.debug("engine-only worker: prefetch %s", getattr(worker, "prefetch_multiplier", None))


def note_consumed(rt: HookedRuntime, queues: Any) -> None:
    """Record the engine queues this `celery worker` consumes (its `-Q` and tag filter, before a prefork pool
    forks): one pool runs all of them, so the inline steps they allow are decided from it (tasks/inline.py)."""
    # `consume_from`: the -Q selection, else the queues consumed by default (all of them on Celery < 5.7, where
    # it returns the whole table), each minus what a tag filter deselected.
    rt.identity.consumed = frozenset(name for name in queues.consume_from if rt.names.is_ours(name))
    rt.identity.shared_pool = True
    log.debug(
        "duroxide worker: engine queues %s (inline steps where one pool serves both)", sorted(rt.identity.consumed)
    )


class EngineQueues(bootsteps.StartStopStep):
    """The engine's queues of one worker consumer: the tag filter's activity queues, the session queue, new tags.

    `__init__` runs while the worker is built (before a prefork pool forks, so its children inherit the identity
    it sets); `start` runs after the task consumer was built (and after the fork: it may use the store)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(
        self, c: Any, duroxide_tag_filter: str | None = None, duroxide_node_id: str | None = None, **kwargs: Any
    ):
        super().__init__(c, **kwargs)
        self.runtime: HookedRuntime | None = runtime_of(c.app)
        self.follower: TagFollower | None = None
        #: The session queue this consumer consumes (set when it starts).
        self.session_queue: str | None = None
        rt = self.runtime
        if rt is None:
            return
        if not rt.embedded:
            if duroxide_node_id is not None or duroxide_tag_filter is not None:
                rt.configure_worker(worker_id=duroxide_node_id, tag_filter=duroxide_tag_filter)
            self._select_filter_queues(c, rt)
            note_consumed(rt, c.app.amqp.queues)
        if rt.identity.tag_filter.any_tag:
            self.follower = TagFollower(lambda: rt.store, rt.names)

    @staticmethod
    def _select_filter_queues(c: Any, rt: HookedRuntime) -> None:
        """Before the consumer exists: what a filter decides without the store, so the banner lists it."""
        tag_filter, queues = rt.identity.tag_filter, c.app.amqp.queues
        if rt.options.worker_tag_filter is None:
            return  # no filter anywhere: -Q alone decides
        if not tag_filter.untagged and getattr(queues, "_consume_from", None) is None:
            queues.deselect(rt.names.activities)  # no -Q: Celery would consume all task_queues, untagged ones too
        if not tag_filter.any_tag:
            for name in activity_queues(rt.names, tag_filter, tag_filter.tags or ()):
                queues.select_add(queue(name))

    def start(self, c: Any) -> None:
        rt = self.runtime
        if rt is None:
            return
        identity, names = rt.identity, rt.names
        if not rt.embedded and rt.options.worker_tag_filter is not None:
            wanted = activity_queues(names, identity.tag_filter, served_tags(identity.tag_filter, rt.store))
            for name in wanted:
                consume(c, name, now=False)
            log.info(
                "duroxide worker %s: tag filter %s, activity queues %s",
                identity.worker_id,
                rt.options.worker_tag_filter,
                wanted,
            )
        if not any(names.is_activity_queue(name) for name in consumed_queues(c)):
            return  # a turn-only consumer: no sessions, no tags
        session_queue = self.session_queue = names.session_queue(identity.worker_id)
        if session_queue not in consumed_queues(c):
            consume(c, session_queue, now=False)
            log.debug("worker %s consumes its session queue %s", identity.worker_id, session_queue)
        if self.follower is not None:
            self.follower.start(c)

    def stop(self, c: Any) -> None:
        if self.follower is not None:
            self.follower.stop_draining()

    def shutdown(self, c: Any) -> None:
        if self.follower is not None:
            self.follower.shutdown()
        rt = self.runtime
        if self.session_queue is not None and rt is not None and not rt.embedded and not rt.identity.stable:
            delete_generated_session_queue(c, self.session_queue)  # no restart comes back for a generated id
