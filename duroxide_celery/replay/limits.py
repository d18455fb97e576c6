"""Every limit (`MAX_*`) in one place, and what the store can hold, checked where a value is given (Client calls
and context calls), never at commit.

The same checks run for SQLite and PostgreSQL, so a value is refused (or accepted) identically on both: SQLite would
store an over-long id or a NUL character that PostgreSQL refuses, and both refuse a lone surrogate or an integer
beyond 64 bits only deep inside a commit, where the instance can only end as poison.

Limits (characters, as the columns of providers/schema.py count them):
- instance ids (Client starts, child and detached ids): 512; KV keys: 512;
- orchestration and activity names, session ids: 256; versions: 64;
- text stored as-is (ids, names, versions, session ids, KV keys and values, custom status, cancel reasons, event
  and queue names) may not contain NUL (U+0000, which PostgreSQL text cannot hold) or lone surrogates (which no
  UTF-8 database can). JSON payloads may contain both: JSON escapes them.
- timer delays, TTLs and retry timeouts: an int (or an integral float) from 0 to MAX_DELAY_MS (100 years);
- flow-control keys: 256;
- broker queue names are at most 255 bytes (AMQP), so `<queue prefix>.activities.<tag>` must fit in 255 bytes.
"""

from __future__ import annotations

import math
from typing import Any

MAX_INSTANCE_ID_CHARS = 512
MAX_KV_KEY_CHARS = 512
MAX_NAME_CHARS = 256
MAX_SESSION_ID_CHARS = 256
MAX_VERSION_CHARS = 64
#: Timers, TTLs and retry timeouts: at most 100 years, so `now + delay` fits every column and date type.
MAX_DELAY_MS = 100 * 365 * 24 * 3600 * 1000
#: AMQP's limit on a queue name (a shortstr), in bytes.
MAX_QUEUE_NAME_BYTES = 255
#: Keys an instance's KV store may hold, and bytes per value (duroxide's limits).
MAX_KV_KEYS = 150
MAX_KV_VALUE_BYTES = 65536
#: Undelivered queue messages a continue-as-new may carry into the next execution (duroxide: 20 or 100, silently).
MAX_CARRY_FORWARD = 1000
#: A custom status's size in bytes (UTF-8).
MAX_CUSTOM_STATUS_BYTES = 256 * 1024
#: How deeply JSON payloads may nest (objects and arrays). Deeper values are refused where they are given: the
#: stdlib decoder a worker runs on them recurses once per level, so a value a Client could encode could still fail
#: every turn that reads it.
MAX_JSON_DEPTH = 256
#: An activity tag's length in bytes, and how many tags one worker's filter may name.
MAX_TAG_NAME_BYTES = 256
MAX_WORKER_TAGS = 5
#: A flow-control key's length (`.with_key()`: the unit a per-key limit counts), and the activity priority range
#: (`.with_priority()`: higher is admitted first among held work of the same activity and key).
MAX_FLOW_KEY_CHARS = 256
MIN_PRIORITY, MAX_PRIORITY = 0, 9
#: The largest concurrency limit `Runtime.limit` takes (a 32-bit column; more is no limit at all).
MAX_CONCURRENCY_LIMIT = 1_000_000
#: A worker node id's length (it names the worker's session queue).
MAX_NODE_ID_CHARS = 200
#: Signed 64-bit integers: what BIGINT (PostgreSQL) and INTEGER (SQLite) columns hold.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_storable(value: str, what: str) -> str:
    """Refuse text the database cannot store as-is: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters (\\x00), got {_show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} must be valid Unicode text; it contains a lone surrogate at position {exc.start}"
        ) from None
    return value


def check_length(value: str, what: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise ValueError(f"{what} is {len(value)} characters; the limit is {max_chars}")
    return value


def check_text(value: Any, what: str, max_chars: int | None = None) -> str:
    """A non-empty str the store can hold (TypeError for other types, ValueError for bad text)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    check_storable(value, what)
    if max_chars is not None:
        check_length(value, what, max_chars)
    return value


def check_name(value: Any, what: str, max_chars: int | None = None) -> str:
    """A name (orchestration, activity, event, instance...): a str with something besides whitespace, that the
    store can hold. The one rule the Client, the registry and the context share (TypeError for a wrong type)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    check_storable(value, what)
    if max_chars is not None:
        check_length(value, what, max_chars)
    return value


def check_delay_ms(value: Any, what: str, *, minimum: int = 0) -> int:
    """A delay in milliseconds: an int, or a float with an integral value, within [minimum, MAX_DELAY_MS]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number of milliseconds (an int), got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be a finite number of milliseconds, got {value!r}")
        if not value.is_integer():
            raise ValueError(f"{what} must be a whole number of milliseconds, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum} ms, got {value!r}")
    if value > MAX_DELAY_MS:
        raise ValueError(f"{what} is {value!r} ms; the limit is {MAX_DELAY_MS} ms (100 years)")
    return int(value)


def check_timeout_ms(value: Any, what: str = "timeout_ms") -> float:
    """A Client wait's timeout: a finite, non-negative number of milliseconds (NaN or infinity would wait forever)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of milliseconds, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of milliseconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    if value > MAX_DELAY_MS:
        raise ValueError(f"{what} is {value} ms; the limit is {MAX_DELAY_MS} ms (100 years)")
    return float(value)


def check_int64(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{what} is out of the 64-bit integer range, got {value}")
    return value


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")
