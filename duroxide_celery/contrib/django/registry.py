"""The project's one Runtime, and decorators that register into it from any module (each app's `workflows.py`).

Decorated functions are remembered here and registered when the Runtime is built, or at once if it already is,
so a `workflows.py` imported before or after `install(app)` registers the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from django.core.exceptions import ImproperlyConfigured

from ...options import RuntimeOptions
from ...runtime import Runtime
from ...tasks.binding import runtime_of
from . import conf
from .provider import BEFORE_TEST_DATABASE_DROPS, provider_for_alias

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.RLock()
_runtime: Runtime | None = None
_pending: list[tuple[str, str, str | None, Callable[..., Any]]] = []


def _register(runtime: Runtime, kind: str, name: str, version: str | None, fn: Callable[..., Any]) -> None:
    if kind == "activity":
        runtime.register_activity(name, fn)
    elif version is None:
        runtime.register_orchestration(name, fn)
    else:
        runtime.register_orchestration_versioned(name, version, fn)


def _remember(kind: str, name: str, version: str | None, fn: Callable[..., Any]) -> None:
    with _lock:
        _pending.append((kind, name, version, fn))
        if _runtime is not None:
            _register(_runtime, kind, name, version, fn)


def activity(name: str) -> Callable[[F], F]:
    """`@activity("Name")`: register `fn(ctx, input)` as an activity of the project's Runtime."""

    def decorate(fn: F) -> F:
        _remember("activity", name, None, fn)
        return fn

    return decorate


def orchestration(name: str, version: str | None = None) -> Callable[[F], F]:
    """`@orchestration("Name")` (or with `version="1.2.0"`): register a generator orchestration."""

    def decorate(fn: F) -> F:
        _remember("orchestration", name, version, fn)
        return fn

    return decorate


def install(app: Celery) -> Runtime:
    """Build the project's Runtime on `app` from settings.DUROXIDE. Call it in the module `celery -A proj` loads
    (proj/celery.py, after `config_from_object`), so workers get `--duroxide-tag-filter`/`--duroxide-node-id` and
    web processes share it. Idempotent for the same app."""
    global _runtime
    with _lock:
        if _runtime is not None:
            if _runtime.host_app is not app:
                raise RuntimeError("duroxide_celery.contrib.django.install() already ran with another Celery app")
            return _runtime
        settings = conf.load()
        conf.apply_json_encoder(settings)
        try:
            if settings.url is not None:
                from ...providers import provider_from_url

                provider = provider_from_url(settings.url)
            else:
                provider = provider_for_alias(settings.database, settings.schema)
        except ValueError as exc:  # the message says what is wrong; name the setting it came from
            key = "URL" if settings.url is not None else "SCHEMA" if "schema" in str(exc) else "DATABASE"
            raise ImproperlyConfigured(f"settings.DUROXIDE[{key!r}]: {exc}") from None
        runtime = Runtime(provider, RuntimeOptions(**settings.options), app=app)
        for kind, name, version, fn in _pending:
            _register(runtime, kind, name, version, fn)
        _runtime = runtime
        return runtime


def get_runtime() -> Runtime:
    """The project's Runtime: the one `install(app)` built, else one built on settings.DUROXIDE['CELERY_APP']
    (or Celery's current app)."""
    with _lock:
        if _runtime is not None:
            return _runtime
    settings = conf.load()
    if settings.celery_app:
        from celery.app.utils import find_app

        try:
            app = find_app(settings.celery_app)
        except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, Celery's own: all mean "not found"
            raise ImproperlyConfigured(
                f"settings.DUROXIDE['CELERY_APP'] is {settings.celery_app!r}, which does not load: {exc}"
            ) from None
    else:
        from celery import current_app

        app = current_app._get_current_object()
    existing = runtime_of(app)
    if existing is not None and _runtime is None:
        return existing
    return install(app)


def stop_in_process_runtime() -> None:
    """Shut down the project's Runtime if it runs the engine in this process (task_always_eager), e.g. before the
    test runner drops the test database its threads are connected to."""
    with _lock:
        runtime = _runtime
    if runtime is not None and runtime.embedded:
        runtime.shutdown(timeout_ms=5000)


BEFORE_TEST_DATABASE_DROPS.append(stop_in_process_runtime)
