"""duroxide-celery for Django projects.

1. `INSTALLED_APPS += ["duroxide_celery.contrib.django"]` and a `DUROXIDE = {...}` setting (see `conf`).
2. In `proj/celery.py`, after `app.config_from_object("django.conf:settings", namespace="CELERY")`:
   `from duroxide_celery.contrib.django import install; install(app)`.
3. Workflows in each app's `workflows.py`, with `@orchestration("Name")` and `@activity("Name")`.
4. `get_client().start_orchestration(id, "Name", input)` in views: inside `atomic()` it starts after the commit.
5. `python manage.py duroxide migrate|list|status|history|raise-event|cancel|...` to operate.
"""

from __future__ import annotations

from typing import Any

from .registry import activity, get_runtime, install, orchestration

__all__ = ["DjangoClient", "activity", "get_client", "get_harness", "get_runtime", "install", "orchestration"]


def get_client() -> Any:
    """A DjangoClient on the project's store that wakes workers through the project's Celery app."""
    from .client import DjangoClient

    runtime = get_runtime()
    return DjangoClient(runtime.provider, app=runtime.host_app if runtime.host_app is not None else None)


def get_harness() -> Any:
    """A WorkflowHarness (duroxide_celery.testing) over the project's registrations, for tests: orchestrations run
    in the test's thread, so activities see a TestCase's uncommitted rows; timers skip forward on a virtual clock."""
    from ...testing import WorkflowHarness

    return WorkflowHarness(get_runtime())


def __getattr__(name: str) -> Any:
    if name == "DjangoClient":
        from .client import DjangoClient

        return DjangoClient
    if name == "celery_app":  # `duroxide-celery --app duroxide_celery.contrib.django:celery_app` (manage.py duroxide)
        return get_runtime().host_app
    raise AttributeError(name)
