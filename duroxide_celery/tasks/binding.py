"""Which Runtime serves a Celery app.

Celery hands the beat scheduler, worker bootsteps and signal handlers only the app; `celery -A` and the CLI load
only the app. `Runtime(provider, options, app=app)` binds itself to its app here, and they look it up with
`runtime_of(app)`. One Runtime per app: a second one replaces the first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bind_runtime", "runtime_of"]

_ATTRIBUTE = "_duroxide_runtime"


def bind_runtime(app: Any, runtime: Any) -> None:
    """Record `runtime` as the one serving `app` (kept on the app itself, so it lives and dies with it)."""
    setattr(app, _ATTRIBUTE, runtime)


def runtime_of(app: Any) -> Any:
    """The Runtime bound to `app` (a duroxide_celery.Runtime), or None."""
    return getattr(app, _ATTRIBUTE, None)
