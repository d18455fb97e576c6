"""`celery worker --duroxide-tag-filter FILTER --duroxide-node-id NODE`: per-process tag filter and node id.

`Runtime(provider, options, app=app)` adds both options to `app.user_options["worker"]` and a consumer bootstep to
`app.steps["consumer"]`, so any `celery -A proj worker` process of that app accepts them. A value given on the
command line overrides RuntimeOptions(worker_tag_filter=..., worker_node_id=...) for that process only.

With a filter in force (from the command line or RuntimeOptions) the worker consumes the activity queues the filter
names (`<prefix>.activities` when it accepts untagged work, `<prefix>.activities.<tag>` per tag) in addition to the
queues given with `-Q`. Without `-Q` Celery consumes every queue of `task_queues`; the untagged activity queue is
then dropped when the filter does not accept untagged work. With `any`, a thread polls the store for tags first used
after the worker started, and the consumer starts consuming their queues (from its own thread, through its timer).

FILTER is RuntimeOptions.worker_tag_filter's syntax (`default_only`, `any`, `none`, the JSON of
`TagFilter.tags([...])` / `TagFilter.default_and([...])`) or a shell-friendly shorthand: `gpu`, `gpu,cpu` (those
tags only) and `default_and:gpu,cpu` (untagged work and those tags).
"""

from __future__ import annotations

import dataclasses
import logging
import queue as queue_module
import re
import threading
from typing import TYPE_CHECKING, Any

import click
from celery import Celery, bootsteps

from .replay.limits import MAX_NODE_ID_CHARS
from .tagfilter import TagFilter, parse_filter
from .tasks.queues import queue

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

TAG_FILTER_OPTION = "--duroxide-tag-filter"
NODE_ID_OPTION = "--duroxide-node-id"
_NODE_ID = re.compile(r"^[A-Za-z0-9_.@-]+$")
_DEFAULT_AND = "default_and:"
#: How often a worker with the `any` filter looks for tags first used after it started, and how often its consumer
#: picks up what that found.
FOLLOW_INTERVAL_S = 2.0
_DRAIN_INTERVAL_S = 0.5

__all__ = ["NODE_ID_OPTION", "TAG_FILTER_OPTION", "check_node_id", "install_worker_options", "parse_cli_tag_filter"]


def parse_cli_tag_filter(value: str) -> str:
    """A FILTER (module docstring) as RuntimeOptions.worker_tag_filter's string; ValueError when it is not one."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("empty tag filter: use default_only, any, none, TAG[,TAG...] or default_and:TAG[,TAG...]")
    text = value.strip()
    if text in (TagFilter.DEFAULT_ONLY, TagFilter.ANY, TagFilter.NONE) or text.startswith("{"):
        parse_filter(text)
        return text
    if text.startswith(_DEFAULT_AND):
        return TagFilter.default_and(_split(text[len(_DEFAULT_AND) :]))
    return TagFilter.tags(_split(text))


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]


def check_node_id(value: str) -> str:
    """A worker node id names its session queue and owns its leases: 1-200 letters, digits and `-_.@`."""
    if not isinstance(value, str) or not value:
        raise ValueError("a worker node id must be a non-empty string")
    if len(value) > MAX_NODE_ID_CHARS:
        raise ValueError(f"a worker node id is at most {MAX_NODE_ID_CHARS} characters, got {len(value)}")
    if not _NODE_ID.match(value):
        raise ValueError(f"worker node id {value!r} may contain only letters, digits and - _ . @")
    return value


def _click_check(check: Any) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def install_worker_options(app: Celery) -> None:
    """Add the two `celery worker` options and the bootstep that applies them (once per app)."""
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
            callback=_click_check(check_node_id),
            help="duroxide: stable node id of this worker: lease owner and session identity "
            "(overrides RuntimeOptions.worker_node_id).",
        )
    )
    app.steps["consumer"].add(DuroxideWorkerStep)


class DuroxideWorkerStep(bootsteps.StartStopStep):
    """Applies --duroxide-tag-filter/--duroxide-node-id to the app's Runtime and consumes the filter's queues.

    `__init__` runs while the worker is built, before a prefork pool forks, so its children inherit the node id;
    `start` runs after the task consumer started (and after the fork: it may use the store)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(
        self, c: Any, duroxide_tag_filter: str | None = None, duroxide_node_id: str | None = None, **kwargs: Any
    ):
        super().__init__(c, **kwargs)
        self.runtime: Runtime | None = getattr(c.app, "duroxide_runtime", None)
        self.active = False
        self._consumed: set[str] = set()
        self._found: queue_module.SimpleQueue[str] = queue_module.SimpleQueue()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._tref: Any = None
        rt = self.runtime
        if rt is None or rt.embedded:
            return
        changes: dict[str, str] = {}
        if duroxide_node_id is not None:
            rt.worker_id = changes["worker_node_id"] = check_node_id(duroxide_node_id)
        if duroxide_tag_filter is not None:
            changes["worker_tag_filter"] = parse_cli_tag_filter(duroxide_tag_filter)
            rt.tag_filter = parse_filter(changes["worker_tag_filter"])
        if changes:
            rt.options = dataclasses.replace(rt.options, **changes)
        self.active = rt.options.worker_tag_filter is not None
        queues = c.app.amqp.queues
        if not self.active:
            return
        if not rt.tag_filter.untagged and getattr(queues, "_consume_from", None) is None:
            queues.deselect(rt.names.activities)  # no -Q: Celery would consume all task_queues, untagged ones too
        if not rt.tag_filter.any_tag:  # known without the store: select now, so the banner lists them
            for name in rt.worker_activity_queues():
                queues.select_add(queue(name))

    def start(self, c: Any) -> None:
        rt = self.runtime
        if rt is None or not self.active:
            return
        names = rt.worker_activity_queues()
        for name in names:
            self._consume(c, name)
        log.info(
            "duroxide worker %s: tag filter %s, activity queues %s", rt.worker_id, rt.options.worker_tag_filter, names
        )
        if rt.tag_filter.any_tag:
            if self._follower is None or not self._follower.is_alive():
                self._stop.clear()
                self._follower = threading.Thread(target=self._follow, name="duroxide-follow-tags", daemon=True)
                self._follower.start()
            self._tref = c.timer.call_repeatedly(_DRAIN_INTERVAL_S, self._drain, (c,))

    def stop(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        self._stop.set()

    # -- queues -------------------------------------------------------------------------------------------------
    def _consume(self, c: Any, name: str) -> None:
        """Consume `name` now and after any consumer restart (the selection outlives the task consumer)."""
        c.app.amqp.queues.select_add(queue(name))
        self._consumed.add(name)
        consumer = c.task_consumer
        if consumer is not None and name not in {q.name for q in consumer.queues}:
            c.add_task_queue(name)

    def _follow(self) -> None:
        """Thread: find tags first used since the worker started (the store, never the consumer's thread)."""
        rt = self.runtime
        assert rt is not None
        seen = set(self._consumed)
        while not self._stop.wait(FOLLOW_INTERVAL_S):
            try:
                tags = rt.store.known_tags()
            except Exception:  # noqa: BLE001 - a database blip: try again next round
                log.warning("could not read activity tags from the store", exc_info=True)
                continue
            for tag in sorted(tags):
                name = rt.names.activity_queue(tag)
                if name not in seen:
                    seen.add(name)
                    self._found.put(name)

    def _drain(self, c: Any) -> None:
        """Timer: hand queues the follower found to the consumer's own thread (kombu objects are not thread-safe)."""
        while True:
            try:
                name = self._found.get_nowait()
            except queue_module.Empty:
                return
            if c.hub is not None:  # the timer runs in the event loop: this is the consumer's thread
                self._safe_consume(c, name)
            else:  # a timer thread: the loop runs pending operations between messages
                c.call_soon(self._safe_consume, c, name)

    def _safe_consume(self, c: Any, name: str) -> None:
        try:
            self._consume(c, name)
        except Exception:  # noqa: BLE001 - selected already: a restarted consumer picks it up
            log.exception("could not start consuming %s", name)
