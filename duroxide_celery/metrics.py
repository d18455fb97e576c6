"""Runtime counters (semantics.md 1.8), each counted once per event, not per replay."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from .replay.commands import StartOrchestration, TurnResult


@dataclass
class MetricsSnapshot:
    orch_starts: int = 0
    orch_completions: int = 0
    orch_failures: int = 0
    orch_application_errors: int = 0
    orch_infrastructure_errors: int = 0
    orch_configuration_errors: int = 0
    orch_poison: int = 0
    activity_success: int = 0
    activity_app_errors: int = 0
    activity_infra_errors: int = 0
    activity_config_errors: int = 0
    activity_poison: int = 0
    orch_dispatcher_items_fetched: int = 0
    worker_dispatcher_items_fetched: int = 0
    orch_continue_as_new: int = 0
    suborchestration_calls: int = 0
    provider_errors: int = 0

    def __getitem__(self, key: str) -> int:  # the SDK's guide reads snapshot['orch_starts']
        return getattr(self, key)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_ERROR_FIELDS = {"Application": "application", "Infrastructure": "infrastructure", "Configuration": "configuration"}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._m = MetricsSnapshot()

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self._m, name, getattr(self._m, name) + n)

    def record_turn(self, result: TurnResult, started: bool) -> None:
        self._add("orch_dispatcher_items_fetched")
        if started:
            self._add("orch_starts")
        self._add(
            "suborchestration_calls",
            sum(1 for o in result.outgoing if isinstance(o, StartOrchestration) and o.parent_instance_id),
        )
        if result.status == "Completed":
            self._add("orch_completions")
        elif result.status == "ContinuedAsNew":
            self._add("orch_continue_as_new")
        elif result.status == "Failed":
            self._add("orch_failures")
            category = (result.error or {}).get("category", "Application")
            field = (
                "orch_poison" if category == "Poison" else f"orch_{_ERROR_FIELDS.get(category, 'application')}_errors"
            )
            self._add(field)

    def record_activity(self, ok: bool, payload: dict[str, Any]) -> None:
        self._add("worker_dispatcher_items_fetched")
        if ok:
            self._add("activity_success")
        else:
            category = (payload.get("details") or {}).get("category", "Application")
            names = {
                "Application": "activity_app_errors",
                "Infrastructure": "activity_infra_errors",
                "Configuration": "activity_config_errors",
                "Poison": "activity_poison",
            }
            self._add(names.get(category, "activity_app_errors"))

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            return MetricsSnapshot(**asdict(self._m))
