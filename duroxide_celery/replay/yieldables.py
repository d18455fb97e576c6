"""Yieldables: the values orchestration code yields (ActivityTask, TimerTask, ...). They describe work; the
replay engine records it in history and performs it. Not Celery tasks (those live in `duroxide_celery.tasks`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .limits import MAX_DELAY_MS, MAX_FLOW_KEY_CHARS, MAX_PRIORITY, MAX_TAG_NAME_BYTES, MIN_PRIORITY, check_text

_TAG = re.compile(r"^[A-Za-z0-9_.:-]+$")


def check_tag(tag: object) -> str:
    """A tag names a broker queue, so it is limited to letters, digits and `_ . : -`, at most 256 bytes."""
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"activity tag must be a non-empty string, got {tag!r}")
    if len(tag.encode()) > MAX_TAG_NAME_BYTES:
        raise ValueError(f"activity tag is {len(tag.encode())} bytes; the limit is {MAX_TAG_NAME_BYTES}")
    if not _TAG.fullmatch(tag):  # fullmatch: `$` alone would let a trailing newline through
        raise ValueError(f"activity tag {tag!r} may contain only letters, digits and _ . : -")
    return tag


class Task:
    """Base class of everything an orchestration may yield."""

    #: Which yieldable this is (each subclass names itself); results always come back decoded from JSON text.
    kind: str = "task"


@dataclass
class ActivityTask(Task):
    name: str
    input: str
    session_id: str | None = None
    tag: str | None = None
    retry: dict[str, Any] | None = None
    kind: str = "activity"
    ttl_ms: int | None = None
    #: Flow control: the key a per-key limit counts this activity under, and its admission priority.
    key: str | None = None
    priority: int | None = None

    def with_tag(self, tag: str) -> ActivityTask:
        """Route this activity to workers whose tag filter names `tag` (semantics.md 2.18)."""
        self.tag = check_tag(tag)
        return self

    def with_ttl(self, ttl_ms: int) -> ActivityTask:
        """Fail this activity (catchable, "not picked up") if no worker claims it within `ttl_ms`: an
        activity whose tag no worker serves then fails instead of waiting forever."""
        self.ttl_ms = check_ttl(ttl_ms)
        return self

    def with_key(self, key: str) -> ActivityTask:
        """Count this activity under `key` (e.g. "tenant:42") for the activity's limits (`Runtime.limit`): at most
        `key_limit` activities of one key run at once, and held work is admitted fairly across keys."""
        self.key = check_flow_key(key)
        return self

    def with_priority(self, priority: int) -> ActivityTask:
        """Admit this activity before lower-priority held work of the same activity and key (0-9, higher first;
        default 0). Only work held by a limit is ordered: unlimited work is published at once."""
        self.priority = check_priority(priority)
        return self


def check_flow_key(key: object) -> str:
    """A flow-control key is stored and compared as-is: a non-empty str, no NUL, at most 256 characters."""
    return check_text(key, "activity flow-control key", MAX_FLOW_KEY_CHARS)


def check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"activity priority must be an int from {MIN_PRIORITY} to {MAX_PRIORITY}, got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"activity priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, got {priority}")
    return priority


def check_ttl(ttl_ms: object) -> int:
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
        raise ValueError(f"activity ttl_ms must be a positive int (milliseconds), got {ttl_ms!r}")
    if ttl_ms > MAX_DELAY_MS:
        raise ValueError(f"activity ttl_ms is {ttl_ms} ms; the limit is {MAX_DELAY_MS} ms (100 years)")
    return ttl_ms


@dataclass
class TimerTask(Task):
    delay_ms: int
    kind: str = "timer"


@dataclass
class WaitEventTask(Task):
    name: str
    kind: str = "wait"


@dataclass
class DequeueTask(Task):
    queue: str
    kind: str = "dequeue"


@dataclass
class TryDequeueTask(Task):
    queue: str
    kind: str = "try_dequeue"


@dataclass
class SubOrchestrationTask(Task):
    name: str
    input: str
    instance_id: str | None = None
    version: str | None = None
    kind: str = "sub_orchestration"


@dataclass
class DetachedStartTask(Task):
    name: str
    instance_id: str
    input: str
    version: str | None = None
    kind: str = "detached"


@dataclass
class UtcNowTask(Task):
    kind: str = "utc_now"


@dataclass
class NewGuidTask(Task):
    kind: str = "new_guid"


@dataclass
class ContinueAsNewTask(Task):
    input: str
    version: str | None = None
    kind: str = "continue_as_new"


@dataclass
class AllTask(Task):
    tasks: list[Task] = field(default_factory=list)
    unwrap_ok: bool = False
    kind: str = "all"


@dataclass
class RaceTask(Task):
    tasks: list[Task] = field(default_factory=list)
    kind: str = "race"


#: Tasks that can be members of all/race.
SINGLE_TASKS = (ActivityTask, TimerTask, WaitEventTask, DequeueTask, SubOrchestrationTask)
