"""History checks for the production tests: exactly-once completion, no duplicate outcome in any history."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

from .conftest import Cluster

TERMINAL = ("OrchestrationCompleted", "OrchestrationFailed", "OrchestrationContinuedAsNew")
#: Outcomes that answer a scheduled step (source_event_id names it): each may appear at most once per step.
OUTCOMES = ("ActivityCompleted", "ActivityFailed", "TimerFired", "SubOrchestrationCompleted", "SubOrchestrationFailed")


def histories(cluster: Cluster, ids: list[str] | None = None) -> dict[str, dict[int, list[tuple[int, str, Any]]]]:
    """{instance: {execution: [(event_id, kind, source_event_id), ...]}} in one query (ids None: every instance)."""
    query = "SELECT instance_id, execution_id, event_id, kind, source_event_id FROM dx_history"
    if ids is not None:
        query += " WHERE instance_id = ANY(:ids)"
    out: dict[str, dict[int, list[tuple[int, str, Any]]]] = {}
    for inst, exe, eid, kind, src in cluster.sql(query + " ORDER BY 1, 2, 3", ids=list(ids or [])):
        out.setdefault(inst, {}).setdefault(exe, []).append((eid, kind, src))
    return out


def check_histories(cluster: Cluster, *, timers_all_fired: bool = False) -> dict[str, dict[int, list]]:
    """Every instance of the store (children included) ended exactly once and holds a clean history:

    - per execution: event ids 1..n without gaps, exactly one terminal event and it is last; every execution but
      the last ended in continue-as-new, the last one in Completed/Failed matching the instance row;
    - per execution: at most one outcome per source_event_id, and each outcome answers a step of that execution;
    - with `timers_all_fired`: TimerFired count == TimerCreated count per execution.
    """
    rows = cluster.sql("SELECT instance_id, status, current_execution_id FROM dx_instances")
    assert rows, "no instances in the store"
    all_histories = histories(cluster)
    problems: list[str] = []
    for instance_id, status, current in rows:
        executions = all_histories.get(instance_id, {})
        if sorted(executions) != list(range(1, current + 1)):
            problems.append(f"{instance_id}: executions {sorted(executions)} but current is {current}")
            continue
        if status not in ("Completed", "Failed"):
            problems.append(f"{instance_id}: status {status}")
        for exe, events in executions.items():
            kinds = [k for _, k, _ in events]
            where = f"{instance_id}#{exe}"
            if [e for e, _, _ in events] != list(range(1, len(events) + 1)):
                problems.append(f"{where}: event ids not 1..n: {[e for e, _, _ in events]}")
            terminal = [k for k in kinds if k in TERMINAL]
            expected = ("Orchestration" + status) if exe == current else "OrchestrationContinuedAsNew"
            if terminal != [expected] or kinds[-1] != expected:
                problems.append(f"{where}: terminal events {terminal} (expected one {expected}, last): {kinds}")
            ids = {e for e, _, _ in events}
            per_source = Counter(src for _, k, src in events if k in OUTCOMES)
            dupes = {src: n for src, n in per_source.items() if n > 1}
            if dupes:
                problems.append(f"{where}: duplicate outcomes for steps {dupes}: {kinds}")
            orphans = [src for src in per_source if src not in ids]
            if orphans:
                problems.append(f"{where}: outcomes for unknown steps {orphans}")
            if timers_all_fired and kinds.count("TimerFired") != kinds.count("TimerCreated"):
                problems.append(
                    f"{where}: {kinds.count('TimerCreated')} TimerCreated but {kinds.count('TimerFired')} TimerFired"
                )
    assert not problems, "unclean histories:\n" + "\n".join(problems[:30])
    return all_histories


def outputs(cluster: Cluster, ids: list[str]) -> dict[str, Any]:
    rows = cluster.sql(
        "SELECT instance_id, status, output, error FROM dx_instances WHERE instance_id = ANY(:ids)", ids=ids
    )
    result = {}
    for inst, status, output, error in rows:
        assert status == "Completed", f"{inst} ended {status}: {error}"
        result[inst] = json.loads(output)
    return result


class TaskEvents:
    """Every task and worker event on the broker, captured in a thread by Celery's event receiver."""

    def __init__(self, app: Any):
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)

    def _run(self) -> None:
        listening = self._listening
        base = self.app.events.Receiver

        class Receiver(base):  # type: ignore[misc, valid-type]
            def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                super().on_consume_ready(*args, **kwargs)
                listening.set()

        with self.app.connection_for_read() as conn:
            self._receiver = Receiver(conn, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def start(self) -> None:
        self._thread.start()
        assert self._listening.wait(30), "the event receiver did not start"

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def names(self) -> dict[str, str]:
        """Task id -> the name it was received under (the shadow: `act:<Name>#<id>`, `orch:<Name>#<id>`)."""
        return {e["uuid"]: e.get("name") or "" for e in self.snapshot() if e["type"] == "task-received"}

    def of(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Events of type `kind` (e.g. task-failed) of the tasks received as `name`."""
        names = self.names()
        return [e for e in self.snapshot() if e["type"] == kind and names.get(e.get("uuid")) == name]

    def workers_online(self) -> set[str]:
        return {e["hostname"] for e in self.snapshot() if e["type"] == "worker-online"}
