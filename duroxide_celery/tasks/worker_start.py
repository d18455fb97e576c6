"""What a `celery -A proj worker` of the user's app does for the engine as it starts (one home for these hooks).

- With no `-Q`, Celery consumes the app's `task_queues` (or its default queue); the worker also consumes the
  engine's queues, so a plain `celery -A proj worker` runs the app's tasks and the workflows. `-Q` narrows as usual.
- A worker that consumes any engine queue checks the store first and exits with the reason when it is unusable.
- A worker whose queues are all engine queues takes the settings the engine wants for its own work (prefetch of
  one, cancel on connection loss, no Redis ack emulation); a worker that also serves the app's queues keeps the
  app's settings (DESIGN invariant 8).
- On worker_ready: consume the worker's session queue and wake instances that were waiting for its handlers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import worker_init, worker_ready

from ..broker_acks import apply_to_worker
from ..providers.check import StoreNotReady, check_store
from .queues import queue

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["install_worker_hooks", "is_configured"]


def is_configured(app: Celery, key: str) -> bool:
    """Whether the app's own configuration (update(), config_from_object, a Django namespace) sets `key`, as
    opposed to Celery's default."""
    _ = app.conf.task_serializer  # load pending configuration, so its sources are inspectable
    names = {key, key.upper()}
    if app.namespace:
        names |= {f"{app.namespace}_{key}".upper(), f"{app.namespace}_{key}"}
    return any(name in source for source in app.conf.maps[:-1] for name in names)  # the last map: defaults


def install_worker_hooks(app: Celery, runtime: Runtime) -> None:
    """Connect the hooks for workers of `app` (once per runtime)."""

    def on_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            prepare_worker(sender, runtime)

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            runtime._on_worker_ready(sender)

    worker_init.connect(on_init, weak=False)
    worker_ready.connect(on_ready, weak=False)


def prepare_worker(worker: Any, runtime: Runtime) -> None:
    """worker_init runs after `-Q`/`-X` are applied and before the consumer and pool are built."""
    app, names = runtime.app, runtime.names
    queues = app.amqp.queues
    if getattr(queues, "_consume_from", None) is None:  # no -Q: the app's declared queues, and the engine's
        wanted = [names.orchestrator]
        if runtime.tag_filter.untagged:
            wanted.append(names.activities)  # a tag filter adds its own queues in worker_options
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


def _engine_only_settings(worker: Any, app: Celery) -> None:
    """Settings for a worker that runs only engine work, where the app did not choose otherwise."""
    if not is_configured(app, "worker_prefetch_multiplier"):
        # A worker reserves at most one message per process: a long activity never holds others back.
        worker.prefetch_multiplier = 1
    if not is_configured(app, "worker_cancel_long_running_tasks_on_connection_loss"):
        app.conf.worker_cancel_long_running_tasks_on_connection_loss = True
    log.debug("engine-only worker: prefetch %s", getattr(worker, "prefetch_multiplier", None))
