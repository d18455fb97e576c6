"""Which inbox messages a turn may process now: a TimerFired message read before its `fire_at_ms` is early.

Beat fires timers a little ahead of their time (so that the turn consuming one is already under way when it falls
due), and beat's clock and a worker's may differ: a TimerFired message can reach a turn before its time. History
must never record a timer that fired early, so a turn processes the due messages and leaves the early ones in the
inbox until their time (tasks/turn.py decides whether it waits for them or comes back later).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import events as ev

#: An inbox message as a turn holds it: (inbox row id, message body with its `kind`).
Message = tuple[int, dict[str, Any]]


def fire_at(body: Mapping[str, Any]) -> int | None:
    """When a TimerFired message's timer falls due (epoch ms); None for any other message, or a malformed one
    (ingestion drops or records those as it always did: only a well-formed timer can be early)."""
    if body.get("kind") != ev.MSG_TIMER_FIRED:
        return None
    value = body.get("fire_at_ms")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class DueSplit:
    """A turn's messages split at `now`: `due` (processed now, in their inbox order) and `early` (TimerFired
    messages whose time has not come: they stay in the inbox)."""

    due: list[Message]
    early: list[Message]

    @property
    def next_due_ms(self) -> int | None:
        """When the earliest early message falls due (epoch ms); None when none is early."""
        times = [fire_at(body) for _, body in self.early]
        return min((t for t in times if t is not None), default=None)


def split_due(messages: Sequence[Message], now_ms: int) -> DueSplit:
    """Split `messages` at `now_ms` (this worker's clock): a TimerFired whose fire_at_ms is after it is early
    (one due exactly at `now_ms` is due); every other message is due."""
    due: list[Message] = []
    early: list[Message] = []
    for message in messages:
        at = fire_at(message[1])
        (early if at is not None and at > now_ms else due).append(message)
    return DueSplit(due, early)
