"""Activity retry, run inside the orchestration as a helper generator (semantics.md 2.14).

Each attempt is its own ActivityScheduled and each backoff delay a durable timer, so a crash between attempts
resumes exactly where it was. The engine drives this generator like user code.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .tasks import ActivityTask, RaceTask, TimerTask

DEFAULT_BASE_MS, DEFAULT_MULTIPLIER, DEFAULT_MAX_MS, FIXED_DELAY_MS = 100, 2.0, 30_000, 1000


def backoff_delay_ms(policy: dict[str, Any], failed_attempt: int) -> int:
    """Delay after failed attempt n (1-based): none 0, fixed d, linear min(base*n, max), exponential
    min(base*mult^(n-1), max). `backoff` is a name ("exponential", "fixed", "linear", "none") or a dict
    {"kind", "base_ms" | "delay_ms", "multiplier", "max_ms"}."""
    spec = policy.get("backoff", "exponential")
    if spec is None:
        spec = "exponential"
    opts: dict[str, Any] = spec if isinstance(spec, dict) else {"kind": str(spec)}
    kind = str(opts.get("kind", "exponential")).lower()
    base = int(opts.get("base_ms", opts.get("delay_ms", FIXED_DELAY_MS if kind == "fixed" else DEFAULT_BASE_MS)))
    cap = int(opts.get("max_ms", DEFAULT_MAX_MS))
    if kind == "none":
        return 0
    if kind == "fixed":
        return base
    if kind == "exponential":
        mult = float(opts.get("multiplier", DEFAULT_MULTIPLIER))
        return int(min(base * mult ** (failed_attempt - 1), cap))
    return int(min(base * failed_attempt, cap))  # linear, and any other name (as duroxide does)


class ActivityTimeout(Exception):
    """An attempt outlived its timeout_ms; not retried."""


def retry_loop(task: ActivityTask) -> Generator[Any, Any, Any]:
    policy = task.retry or {}
    max_attempts = int(policy.get("max_attempts", 3))
    timeout_ms = policy.get("timeout_ms") or policy.get("total_timeout_ms")
    last_error: BaseException | None = None
    for attempt in range(1, max_attempts + 1):
        call = ActivityTask(task.name, task.input, task.session_id, task.tag)
        try:
            if timeout_ms:
                outcome = yield RaceTask([call, TimerTask(int(timeout_ms))])
                if outcome["index"] == 1:
                    raise ActivityTimeout("timeout: activity timed out")
                return outcome["value"]
            return (yield call)
        except ActivityTimeout:
            raise
        except Exception as exc:  # an application failure of this attempt
            last_error = exc
        if attempt < max_attempts:
            delay = backoff_delay_ms(policy, attempt)
            if delay > 0:
                yield TimerTask(delay)
    assert last_error is not None
    raise last_error
