"""Hot instances: a worker keeps the replay engine of an instance waiting mid-run and resumes it with the next
turn's messages instead of replaying its history (tasks/engine_cache.py). A resume that fails would still finish
the workflow (the turn is retried with a full replay a second later), so only these checks see it break."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from duroxide_celery.replay.engine import ReplayEngine

from .helpers import WAIT_MS, kinds


def test_sequential_steps_resume_the_cached_engine_without_a_failed_turn(
    runtime_factory: Any, client: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    resumed: list[int] = []
    original = ReplayEngine.resume

    def counting_resume(self: ReplayEngine, inp: Any) -> Any:
        resumed.append(len(inp.history))
        return original(self, inp)

    monkeypatch.setattr(ReplayEngine, "resume", counting_resume)

    def sequence(ctx: Any, n: int) -> Any:
        total = 0
        for i in range(n):
            total = yield ctx.schedule_activity("Add", [total, i])
        return total

    runtime_factory({"Sequence": sequence}, {"Add": lambda ctx, pair: pair[0] + pair[1]})
    with caplog.at_level(logging.WARNING):
        client.start_orchestration("hot-1", "Sequence", 6)
        result = client.wait_for_orchestration("hot-1", WAIT_MS)
    assert (result.status, result.output) == ("Completed", 15)
    assert kinds(client, "hot-1").count("ActivityCompleted") == 6
    assert resumed, "no turn resumed a cached engine"
    failed_turns = [r.getMessage() for r in caplog.records if "turn of hot-1 failed" in r.getMessage()]
    assert failed_turns == []
