"""A Client given only a provider wakes the workers of a Runtime started on the same database in this process
(tasks/publish.py live_publishers), through any provider object for that database; after shutdown it has nothing
to wake and says so. The recovery sweep is an hour away here, so only the wake-up can deliver the start."""

from __future__ import annotations

import logging

import pytest

from duroxide_celery import Client, RuntimeOptions

from .helpers import WAIT_MS

NO_SWEEP = RuntimeOptions(recovery_interval_ms=3_600_000)


def test_a_client_on_another_provider_object_wakes_the_embedded_runtime(runtime_factory, provider) -> None:
    runtime_factory({"Echo": lambda ctx, x: x}, options=NO_SWEEP)  # started: its start-up sweep has run
    same_database = type(provider)(provider.url, schema=provider.schema)
    client = Client(same_database)
    client.start_orchestration("woken", "Echo", "hi")
    assert client.wait_for_orchestration("woken", WAIT_MS).output == "hi"


def test_after_shutdown_a_client_has_no_worker_to_wake(
    runtime_factory, provider, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = runtime_factory({"Echo": lambda ctx, x: x}, options=NO_SWEEP)
    runtime.shutdown(timeout_ms=2000)
    with caplog.at_level(logging.WARNING, logger="duroxide_celery.client"):
        Client(provider).start_orchestration("unwoken", "Echo", "hi")
    assert "has no Celery app to wake workers: instance unwoken starts when the recovery sweep" in caplog.text
