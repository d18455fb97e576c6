"""Celery's thread pool, with each task run under its own app.

Celery finds the app of a task through a thread-local `current_app`; pool threads would fall back to the
process default app, so two embedded runtimes (two apps) in one process would run each other's tasks wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.concurrency import thread


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
