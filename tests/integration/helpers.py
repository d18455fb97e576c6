"""Helpers shared by the integration tests (waiting on history, checking its shape)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from duroxide_celery import Client

#: Generous upper bound for any wait in this suite; a healthy run finishes far sooner. Never a timing assertion.
WAIT_MS = 15_000


def wait_until(predicate: Callable[[], Any], timeout_ms: int = WAIT_MS, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (that value is returned); fail after timeout_ms."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_ms} ms waiting for {what}")
        time.sleep(0.01)


def kinds(client: Client, instance_id: str, execution_id: int = 1) -> list[str]:
    return [e.kind for e in client.read_execution_history(instance_id, execution_id)]


def wait_for_kind(client: Client, instance_id: str, kind: str, execution_id: int = 1) -> None:
    """Wait until `kind` is in the instance's history (e.g. ExternalSubscribed before raising an event, since an
    event raised before its wait is never delivered)."""
    wait_until(lambda: kind in kinds(client, instance_id, execution_id), what=f"{kind} in {instance_id}'s history")


def event_data(event: Any) -> dict[str, Any]:
    return json.loads(event.data) if event.data else {}


def assert_well_formed(client: Client, instance_id: str, execution_id: int = 1) -> list[Any]:
    """Exactly one completion or failure per scheduled activity, and exactly one terminal event, last."""
    history = client.read_execution_history(instance_id, execution_id)
    scheduled = [e.event_id for e in history if e.kind == "ActivityScheduled"]
    outcomes = [e.source_event_id for e in history if e.kind in ("ActivityCompleted", "ActivityFailed")]
    assert sorted(outcomes) == sorted(scheduled), (instance_id, [e.kind for e in history])
    terminal = [
        e for e in history if e.kind in ("OrchestrationCompleted", "OrchestrationFailed", "OrchestrationContinuedAsNew")
    ]
    assert len(terminal) == 1 and history[-1] is terminal[0], (instance_id, [e.kind for e in history])
    assert [e.event_id for e in history] == list(range(1, len(history) + 1))
    return history
