"""Regenerate the golden-history fixtures in tests/fixtures/golden/ from golden_orchestrations.SCENARIOS.

    python tests/unit/make_golden.py            # rewrite the fixtures this script owns
    python tests/unit/make_golden.py --check    # exit 1 if a committed fixture differs from a fresh recording

Fixture format (one execution of one instance; test_golden.py reads it):
    {"orchestration": name, "input": decoded input, "history": [HistoryEvent.to_json(), ...],
     "expect": {"status": ..., "output": decoded output, "error": first line of the error message,
                "replays_history": false only when today's code is expected to diverge from the history},
     optional: "instance_id", "execution_id", "kv_snapshot" {key: [value, stamp]},
               "turns": [{"start": index of the turn's first event, "now_ms": clock, "messages": [...]}, ...]}
Fixtures captured from real runs may carry only the required keys; test_golden.py then derives the last turn.
Only files named after a scenario are written; other fixtures in the folder are left alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `unit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from unit.golden_orchestrations import REGISTRY, SCENARIOS, Scenario
    from unit.sim import Sim, make_resolver
else:
    from .golden_orchestrations import REGISTRY, SCENARIOS, Scenario
    from .sim import Sim, make_resolver

from duroxide_celery.replay import events as ev

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def expectation(result: Any) -> dict[str, Any]:
    expect: dict[str, Any] = {"status": result.status, "output": ev.loads(result.output)}
    if result.error is not None:
        expect["error"] = result.error["message"].split("\n", 1)[0]
        expect["error_category"] = result.error["category"]
    if result.status == "ContinuedAsNew":
        expect["continue_as_new_input"] = ev.loads(result.continue_as_new["input"])
    if result.custom_status is not None:
        expect["custom_status"] = result.custom_status
    return expect


def record(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Run one scenario; return {fixture file stem: fixture}."""
    code = dict(REGISTRY)
    code.update(scenario.record_with)
    sim = Sim(code, instance_id=scenario.instance_id).start(scenario.orchestration, scenario.input)
    executions = scenario.run(sim)
    fixtures = {}
    for sim in executions:
        stem = scenario.fixture if len(executions) == 1 else f"{scenario.fixture}_exec{sim.execution_id}"
        fixture: dict[str, Any] = {
            "orchestration": scenario.orchestration,
            "input": ev.loads(sim.event(1).data["input"]),
            "instance_id": sim.instance_id,
            "execution_id": sim.execution_id,
            "history": [e.to_json() for e in sim.history],
            "turns": [
                {"start": start, "now_ms": clock, "messages": messages}
                for start, clock, messages in zip(sim.turn_starts, sim.turn_clocks, sim.turn_messages)
            ],
            "expect": expectation(sim.last),
        }
        if sim.kv_snapshot:
            fixture["kv_snapshot"] = {k: list(v) for k, v in sim.kv_snapshot.items()}
        if scenario.record_with:
            # recorded with other code: the expectation is what today's code makes of the last turn
            sim.resolve = make_resolver(REGISTRY)
            again = sim.replay(sim.turn_messages[-1], history=sim.history[: sim.turn_starts[-1]])
            fixture["expect"] = expectation(again)
        fixture["expect"].update(scenario.expect_extra)
        fixtures[stem] = fixture
    return fixtures


def render(fixture: dict[str, Any]) -> str:
    return json.dumps(fixture, indent=1) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    stale = []
    for scenario in SCENARIOS:
        for stem, fixture in record(scenario).items():
            path = GOLDEN_DIR / f"{stem}.json"
            text = render(fixture)
            if check:
                if not path.exists() or path.read_text() != text:
                    stale.append(path.name)
            else:
                path.write_text(text)
                print(
                    f"wrote {path.relative_to(GOLDEN_DIR.parents[2])}: {fixture['expect']['status']}, "
                    f"{len(fixture['history'])} events"
                )
    if stale:
        print("out of date:", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
