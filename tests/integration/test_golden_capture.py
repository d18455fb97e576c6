"""The golden fixtures recorded from real runs (capture_golden.py) still describe what a real run records."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from .capture_golden import GOLDEN_DIR, SCENARIOS, capture


@pytest.mark.parametrize("stem", sorted(SCENARIOS))
def test_real_run_matches_committed_fixture(stem, store):
    committed = json.loads((GOLDEN_DIR / f"{stem}.json").read_text())
    fresh = capture(store.open(), stem)
    assert (fresh["orchestration"], fresh["input"], fresh["expect"]) == (
        committed["orchestration"],
        committed["input"],
        committed["expect"],
    )
    # Completion order may differ between runs; the events recorded may not.
    assert Counter(e["kind"] for e in fresh["history"]) == Counter(e["kind"] for e in committed["history"])
    assert [e["event_id"] for e in fresh["history"]] == list(range(1, len(fresh["history"]) + 1))
    assert fresh["history"][-1]["kind"] == "OrchestrationCompleted"
    for event in fresh["history"]:
        assert set(event) == {"event_id", "kind", "source_event_id", "timestamp_ms", "data"}
        assert isinstance(event["data"], dict)
