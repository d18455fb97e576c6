"""pytest fixtures for projects using duroxide-celery: `pytest_plugins = ["duroxide_celery.pytest_plugin"]`.

`workflow_harness`: a WorkflowHarness (duroxide_celery.testing). In a Django project with
`duroxide_celery.contrib.django` installed it carries the project's orchestrations and activities (with
pytest-django, use it together with the `db` fixture: activities then see the test's rows); elsewhere it starts
empty, for `register_activity`/`register_orchestration`.
"""

from __future__ import annotations

import pytest

from .testing import WorkflowHarness


@pytest.fixture
def workflow_harness() -> WorkflowHarness:
    try:
        from django.apps import apps
    except ImportError:
        return WorkflowHarness()
    if apps.ready and apps.is_installed("duroxide_celery.contrib.django"):
        from .contrib.django import get_harness

        return get_harness()
    return WorkflowHarness()
