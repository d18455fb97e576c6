"""Runtime counters (semantics.md 1.8), each counted once per event, not per replay; per process.

Besides MetricsSnapshot's totals, the counters duroxide exports with labels (its docs/metrics-specification.md)
are kept by label values, under duroxide's metric names: `labeled()` reads them (observability/prometheus.py
exposes them). Labels never hold instance ids or payloads, only names, versions and outcomes (bounded sets).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from .replay.commands import StartOrchestration, TurnResult

#: duroxide's labeled counters and their label names, in order (a subset of duroxide's: no turn-count bucket, no
#: `initiated_by`, no execution id label, which a turn does not know or which would grow without bound).
LABELS: dict[str, tuple[str, ...]] = {
    "duroxide_orchestration_starts_total": ("orchestration_name", "version"),
    "duroxide_orchestration_completions_total": ("orchestration_name", "version", "status"),
    "duroxide_orchestration_failures_total": ("orchestration_name", "version", "error_type"),
    "duroxide_orchestration_infrastructure_errors_total": ("orchestration_name",),
    "duroxide_orchestration_configuration_errors_total": ("orchestration_name",),
    "duroxide_orchestration_continue_as_new_total": ("orchestration_name",),
    "duroxide_orchestration_poison_total": (),
    "duroxide_suborchestration_calls_total": ("parent_orchestration", "child_orchestration"),
    "duroxide_activity_executions_total": ("activity_name", "outcome", "retry_attempt"),
    "duroxide_activity_infrastructure_errors_total": ("activity_name",),
    "duroxide_activity_configuration_errors_total": ("activity_name",),
    "duroxide_activity_poison_total": (),
}


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


#: duroxide's `error_type` (orchestrations) and `outcome` (activities) of each error category.
_ORCH_ERROR_TYPES = {"Infrastructure": "infrastructure_error", "Configuration": "config_error", "Poison": "poison"}
_ACTIVITY_OUTCOMES = {"Infrastructure": "infra_error", "Configuration": "config_error", "Poison": "poison"}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._m = MetricsSnapshot()
        self._labeled: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in LABELS}

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self._m, name, getattr(self._m, name) + n)

    def _count(self, metric: str, *labels: str, n: int = 1) -> None:
        with self._lock:
            series = self._labeled[metric]
            series[labels] = series.get(labels, 0) + n

    def record_turn(self, result: TurnResult, started: bool) -> None:
        self._add("orch_dispatcher_items_fetched")
        name, version = result.orchestration_name or "", result.orchestration_version or ""
        if started:
            self._add("orch_starts")
            self._count("duroxide_orchestration_starts_total", name, version)
        children = [o for o in result.outgoing if isinstance(o, StartOrchestration) and o.parent_instance_id]
        self._add("suborchestration_calls", len(children))
        for child in children:
            self._count("duroxide_suborchestration_calls_total", name, child.name)
        if result.status == "Completed":
            self._add("orch_completions")
            self._count("duroxide_orchestration_completions_total", name, version, "success")
        elif result.status == "ContinuedAsNew":
            self._add("orch_continue_as_new")
            self._count("duroxide_orchestration_continue_as_new_total", name)
        elif result.status == "Failed":
            self._add("orch_failures")
            details = result.error or {}
            category = details.get("category", "Application")
            field = (
                "orch_poison" if category == "Poison" else f"orch_{_ERROR_FIELDS.get(category, 'application')}_errors"
            )
            self._add(field)
            cancelled = details.get("kind") == "Cancelled" or category == "Cancelled"
            status = "cancelled" if cancelled else "failed"
            self._count("duroxide_orchestration_completions_total", name, version, status)
            if not cancelled:
                error_type = _ORCH_ERROR_TYPES.get(category, "app_error")
                self._count("duroxide_orchestration_failures_total", name, version, error_type)
                if category == "Poison":
                    self._count("duroxide_orchestration_poison_total")
                elif category in ("Infrastructure", "Configuration"):
                    self._count(f"duroxide_orchestration_{category.lower()}_errors_total", name)

    def record_activity(self, ok: bool, payload: dict[str, Any], name: str = "", attempt: int = 1) -> None:
        """One activity attempt's outcome; `attempt` counts from 1 (duroxide's `retry_attempt` label from 0)."""
        self._add("worker_dispatcher_items_fetched")
        retry = str(attempt - 1) if attempt <= 3 else "3+"
        if ok:
            self._add("activity_success")
            self._count("duroxide_activity_executions_total", name, "success", retry)
            return
        category = (payload.get("details") or {}).get("category", "Application")
        names = {
            "Application": "activity_app_errors",
            "Infrastructure": "activity_infra_errors",
            "Configuration": "activity_config_errors",
            "Poison": "activity_poison",
        }
        self._add(names.get(category, "activity_app_errors"))
        self._count("duroxide_activity_executions_total", name, _ACTIVITY_OUTCOMES.get(category, "app_error"), retry)
        if category == "Poison":
            self._count("duroxide_activity_poison_total")
        elif category in ("Infrastructure", "Configuration"):
            self._count(f"duroxide_activity_{category.lower()}_errors_total", name)

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            return MetricsSnapshot(**asdict(self._m))

    def labeled(self) -> dict[str, dict[tuple[str, ...], int]]:
        """A copy of the labeled counters: metric name -> {label values (in LABELS order): count}."""
        with self._lock:
            return {name: dict(series) for name, series in self._labeled.items()}
