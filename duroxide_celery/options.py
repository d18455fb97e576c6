"""RuntimeOptions: every keyword of duroxide-python 0.2.2 (semantics.md 1.3), plus a few of our own."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from .replay.limits import MAX_NODE_ID_CHARS
from .tagfilter import parse_filter

#: The shortest activity or session lease the renewer can honour: it wakes at least every third of the lease (and
#: every 0.5 s), so a renewal lands by two thirds of it; shorter leases would leave no margin for a slow database.
MIN_LOCK_TIMEOUT_MS = 1000
#: The engine cache's default bound (engine_cache_max_bytes).
DEFAULT_ENGINE_CACHE_BYTES = 64 * 1024 * 1024


_WORKER_ID = re.compile(r"[A-Za-z0-9_.@-]+")
#: A queue prefix: dot-separated words of letters, digits, `-` and `_`.
_QUEUE_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
#: `<prefix>.sessions.<a 200-character node id>` must stay within AMQP's 255-byte queue names.
MAX_QUEUE_PREFIX_CHARS = 40


def check_worker_id(value: object) -> str:
    """A worker id names its session queue and owns its leases: 1-200 letters, digits and `-_.@` (never `~`, the
    mark of generated ids: tasks/queues.py GENERATED_ID_MARK)."""
    if not isinstance(value, str) or not value:
        raise ValueError("a worker node id must be a non-empty string")
    if len(value) > MAX_NODE_ID_CHARS:
        raise ValueError(f"a worker node id is at most {MAX_NODE_ID_CHARS} characters, got {len(value)}")
    if not _WORKER_ID.fullmatch(value):  # fullmatch: `$` alone would let a trailing newline through
        raise ValueError(f"worker node id {value!r} may contain only letters, digits and - _ . @")
    return value


def check_queue_prefix(value: object) -> str:
    """A queue prefix starts every engine queue's name (RuntimeOptions.queue_prefix, the CLI's --queue-prefix)."""
    if not isinstance(value, str):
        raise TypeError(f"a queue prefix must be a str, got {type(value).__name__}")
    if not _QUEUE_PREFIX.fullmatch(value):
        raise ValueError(
            f"queue prefix {value!r} must be non-empty words of letters, digits, - and _, separated by dots"
        )
    if len(value) > MAX_QUEUE_PREFIX_CHARS:
        raise ValueError(f"queue prefix is {len(value)} characters; the limit is {MAX_QUEUE_PREFIX_CHARS}")
    return value


def renewal_interval_ms(lock_ms: int, renew_ms: float) -> float:
    """When to renew a lease of `lock_ms` that would be renewed after `renew_ms`: never later than 2 s before expiry
    (or a third of a lease under 6 s), since the renewer wakes up to 0.5 s late; never more often than every
    second (or a third of a lease under 3 s)."""
    latest = max(lock_ms / 3, lock_ms - 2000)
    earliest = min(1000, lock_ms / 3)
    return max(earliest, min(renew_ms, latest))


@dataclass(kw_only=True)
class RuntimeOptions:
    """Runtime settings. Unknown keywords raise TypeError. `None` means the default in brackets.

    - orchestration_concurrency [4], worker_concurrency [8]: threads of the embedded worker for turns and
      activities. They are separate pools (one consumer of the orchestrator queue, one of the activity queues), so
      activities, however many or slow, never take the threads turns need. With your own Celery app, run
      separate `celery worker` processes for the orchestrator and activity queues, each with its own
      `--concurrency`. `orchestration_concurrency=0` makes an activity-only node, `worker_concurrency=0` a
      turn-only one: with an app, or an embedded runtime beside another one on the same store in this process
      (an embedded runtime with both at 0 is refused: it could run nothing).
    - orchestrator_lock_timeout_ms [5000], worker_lock_timeout_ms [30000]: instance and activity leases;
      worker_lock_renewal_buffer_ms [5000] sets how long before expiry running activities renew (never later than
      2 s before expiry; for leases under 15 s, every half lease as duroxide does, at most every third of it).
      worker_lock_timeout_ms and session_lock_timeout_ms must be at least 1000 (MIN_LOCK_TIMEOUT_MS): the
      renewer wakes every few hundred ms and could not renew a shorter lease before it lapses.
    - max_attempts [10]: poison threshold for orchestration turns and activity deliveries.
    - max_sessions_per_runtime [10], session_idle_timeout_ms [300000], session_lock_timeout_ms [30000],
      session_lock_renewal_buffer_ms [5000], worker_node_id, worker_tag_filter: sessions and tags.
    - log_level, log_format, service_name, service_version: accepted for compatibility; configure Python
      `logging` (loggers `duroxide_celery.*`) instead.
    - dispatcher_poll_interval_ms, orchestrator_lock_renewal_buffer_ms: accepted and ignored; work is pushed
      by the broker, not polled, and turns are short.
    Ours: queue_prefix ["duroxide"], recovery_interval_ms [2000 embedded], recovery_threshold_ms [10000],
    activity_cancellation_grace_period_ms [10000]: a cancelled activity still running after this is named in a
    warning (Python threads cannot be stopped; its result is dropped when it returns);
    default_activity_ttl_ms [none]: the claim deadline of activities scheduled without their own ttl_ms (an
    activity no worker picks up in time fails with a catchable "not picked up" error instead of waiting forever);
    engine_cache_max_bytes [64 MiB]: each worker process keeps the replay engines of instances waiting mid-run so
    their next turn replays nothing; this bounds that cache by the estimated size of the histories and KV the
    engines hold (payload text counted twice: stored and decoded), evicting the least recently used. 0 disables
    the cache (every turn replays its history);
    inline_steps [True]: run the next step where the last one finished, without a broker hop. A worker whose pool
    serves both the orchestrator queue and an activity's queue (one `celery worker` for both, as without `-Q`) runs
    the single activity a turn schedules right after the turn's commit, claimed in that commit; a worker that serves
    orchestrations runs the next turn of an instance whose activity it just completed. The store stays the truth: a
    crash mid-step is healed as for a published step (leases lapse, the recovery sweep republishes). False publishes
    every step.
    """

    orchestration_concurrency: int | None = None
    worker_concurrency: int | None = None
    dispatcher_poll_interval_ms: int | None = None
    worker_lock_timeout_ms: int | None = None
    log_format: str | None = None
    log_level: str | None = None
    service_name: str | None = None
    service_version: str | None = None
    max_sessions_per_runtime: int | None = None
    session_idle_timeout_ms: int | None = None
    worker_node_id: str | None = None
    worker_tag_filter: str | None = None
    orchestrator_lock_timeout_ms: int | None = None
    orchestrator_lock_renewal_buffer_ms: int | None = None
    max_attempts: int | None = None
    worker_lock_renewal_buffer_ms: int | None = None
    session_lock_timeout_ms: int | None = None
    session_lock_renewal_buffer_ms: int | None = None
    queue_prefix: str | None = None
    recovery_interval_ms: int | None = None
    recovery_threshold_ms: int | None = None
    activity_cancellation_grace_period_ms: int | None = None
    default_activity_ttl_ms: int | None = None
    engine_cache_max_bytes: int | None = None
    inline_steps: bool | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type.startswith("bool"):
                if value is not None and not isinstance(value, bool):
                    raise TypeError(f"RuntimeOptions.{f.name} must be a bool, got {type(value).__name__}")
                continue
            if value is None or f.type.startswith("str"):
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"RuntimeOptions.{f.name} must be a str, got {type(value).__name__}")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"RuntimeOptions.{f.name} must be an int, got {type(value).__name__}")
            if value < 0:
                raise ValueError(f"RuntimeOptions.{f.name} must be >= 0, got {value}")
        # The same checks as the Runtime's and the worker's command line, here so that a bad value fails where
        # it is written (options built in a settings module), not when a Runtime is made from them.
        for name, check in (
            ("worker_node_id", check_worker_id),
            ("worker_tag_filter", parse_filter),
            ("queue_prefix", check_queue_prefix),
        ):
            value = getattr(self, name)
            if value is not None:
                try:
                    check(value)
                except ValueError as exc:
                    raise ValueError(f"RuntimeOptions.{name}: {exc}") from None
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("RuntimeOptions.max_attempts must be >= 1")
        for name in ("worker_lock_timeout_ms", "session_lock_timeout_ms"):
            value = getattr(self, name)
            if value is not None and value < MIN_LOCK_TIMEOUT_MS:
                raise ValueError(
                    f"RuntimeOptions.{name} must be at least {MIN_LOCK_TIMEOUT_MS} ms, got {value}: the lease renewer "
                    "could not renew a shorter lease before it lapses, and the work would run as concurrent copies"
                )

    # Resolved values ------------------------------------------------------------------------------------------
    @property
    def inline(self) -> bool:
        """Whether a worker may run the next step where the last one finished (inline_steps)."""
        return True if self.inline_steps is None else self.inline_steps

    @property
    def orchestration_threads(self) -> int:
        return 4 if self.orchestration_concurrency is None else self.orchestration_concurrency

    @property
    def activity_threads(self) -> int:
        return 8 if self.worker_concurrency is None else self.worker_concurrency

    @property
    def orchestrator_lock_ms(self) -> int:
        return self.orchestrator_lock_timeout_ms or 5000

    @property
    def worker_lock_ms(self) -> int:
        return self.worker_lock_timeout_ms or 30_000

    @property
    def worker_renewal_interval_s(self) -> float:
        timeout = self.worker_lock_ms
        if timeout >= 15_000:  # duroxide: `timeout - buffer` for long leases, `ceil(timeout/2)` (>= 1 s) otherwise
            buffer = self.worker_lock_renewal_buffer_ms
            renew = timeout - (5000 if buffer is None else buffer)
        else:
            renew = max(1000, math.ceil(timeout / 2000) * 1000)
        return renewal_interval_ms(timeout, renew) / 1000

    @property
    def cancellation_grace_s(self) -> float:
        """How long a cancelled activity may keep running before a warning names it (it cannot be killed)."""
        value = self.activity_cancellation_grace_period_ms
        return (10_000 if value is None else value) / 1000

    @property
    def session_lock_ms(self) -> int:
        return self.session_lock_timeout_ms or 30_000

    @property
    def session_idle_ms(self) -> int:
        return 300_000 if self.session_idle_timeout_ms is None else self.session_idle_timeout_ms

    @property
    def max_sessions(self) -> int:
        return 10 if self.max_sessions_per_runtime is None else self.max_sessions_per_runtime

    @property
    def session_renewal_interval_s(self) -> float:
        """Session heartbeats (renewal, and release of idle sessions) run this often."""
        lock = self.session_lock_ms
        buffer = 5000 if self.session_lock_renewal_buffer_ms is None else self.session_lock_renewal_buffer_ms
        renew_ms = renewal_interval_ms(lock, lock - buffer if lock > buffer else lock / 2)
        return max(0.2, min(renew_ms, self.session_idle_ms / 2) / 1000)

    @property
    def engine_cache_bytes(self) -> int:
        return DEFAULT_ENGINE_CACHE_BYTES if self.engine_cache_max_bytes is None else self.engine_cache_max_bytes

    @property
    def max_attempts_value(self) -> int:
        return self.max_attempts or 10

    @property
    def prefix(self) -> str:
        return self.queue_prefix or "duroxide"

    @property
    def recovery_interval_s(self) -> float:
        return (self.recovery_interval_ms or 2000) / 1000

    @property
    def recovery_threshold(self) -> int:
        return 10_000 if self.recovery_threshold_ms is None else self.recovery_threshold_ms
