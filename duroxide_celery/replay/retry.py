"""Activity retry, run inside the orchestration as a helper generator (semantics.md 2.14).

Each attempt is its own ActivityScheduled and each backoff delay a durable timer, so a crash between attempts
resumes exactly where it was. The engine drives this generator like user code.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .yieldables import ActivityTask, RaceTask, TimerTask, UtcNowTask

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
    """Attempts, backoff timers and timeouts, as orchestration steps.

    `timeout_ms` bounds each attempt (a timed-out attempt is not retried, as in duroxide). `total_timeout_ms` is a
    real budget across all attempts and backoff delays (duroxide treats it as another per-attempt timeout): the
    loop reads the deterministic clock (`utc_now`, recorded in history) and caps every attempt and delay by what is
    left, failing with "timeout: retry budget of N ms exhausted" when it runs out."""
    policy = task.retry or {}
    max_attempts = int(policy.get("max_attempts", 3))
    attempt_timeout = policy.get("timeout_ms")
    budget = policy.get("total_timeout_ms")
    started = (yield UtcNowTask()) if budget else 0
    last_error: BaseException | None = None
    for attempt in range(1, max_attempts + 1):
        limit, by_budget = attempt_timeout, False
        if budget:
            left = int(budget) - ((yield UtcNowTask()) - started)
            if left <= 0:
                raise ActivityTimeout(f"timeout: retry budget of {budget} ms exhausted")
            if not limit or left < int(limit):
                limit, by_budget = left, True
        call = ActivityTask(
            task.name, task.input, task.session_id, task.tag, ttl_ms=task.ttl_ms, key=task.key, priority=task.priority
        )
        try:
            if limit:
                outcome = yield RaceTask([call, TimerTask(int(limit))])
                if outcome["index"] == 1:
                    if by_budget:
                        raise ActivityTimeout(f"timeout: retry budget of {budget} ms exhausted")
                    raise ActivityTimeout("timeout: activity timed out")
                return outcome["value"]
            return (yield call)
        except ActivityTimeout:
            raise
        except Exception as exc:  # an application failure of this attempt
            last_error = exc
        if attempt < max_attempts:
            delay = backoff_delay_ms(policy, attempt)
            if budget:
                left = int(budget) - ((yield UtcNowTask()) - started)
                if delay >= left:
                    break  # the next attempt could not start inside the budget: fail with the last error now
            if delay > 0:
                yield TimerTask(delay)
    assert last_error is not None
    raise last_error
