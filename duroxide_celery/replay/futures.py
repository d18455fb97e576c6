"""Pending results inside one replay: single tasks, and the all/race groups that wait on several."""

from __future__ import annotations

from typing import Any

PENDING, OK, ERR, ABORT, CANCELLED = "pending", "ok", "err", "abort", "cancelled"


class Future:
    """The outcome of one scheduled task, keyed by the event id of its schedule event."""

    def __init__(self, kind: str, schedule_id: int, name: str | None = None, child_id: str | None = None):
        self.kind = kind
        self.schedule_id = schedule_id
        self.name = name
        self.child_id = child_id
        self.state = PENDING
        self.value: Any = None
        self.error: str | None = None
        self.details: dict[str, Any] | None = None
        self.seq = 0  # resolution order within this replay: the race winner is the lowest
        self.buffered_raw: str | None = None  # a dequeue served from the queue buffer keeps the raw message
        self.waiter: AllWaiter | None = None  # told when this finishes, so a 1000-way all() stays O(1) per arrival

    @property
    def open(self) -> bool:
        return self.state == PENDING

    def resolve(self, seq: int, value: Any) -> None:
        self.state, self.value, self.seq = OK, value, seq
        if self.waiter is not None:
            self.waiter.finished(self)

    def fail(self, seq: int, details: dict[str, Any]) -> None:
        # Only application errors reach user code; infrastructure, configuration and poison abort the instance.
        self.state = ERR if details.get("category") == "Application" else ABORT
        self.error, self.details, self.seq = details.get("message", ""), details, seq
        if self.waiter is not None:
            self.waiter.finished(self)


class Waiter:
    """What the generator is blocked on; `outcome()` is ("send", value) or ("throw", message)."""

    futures: list[Future]

    def done(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def outcome(self) -> tuple[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def aborted(self) -> Future | None:
        for fut in self.futures:
            if fut.state == ABORT:
                return fut
        return None


class SingleWaiter(Waiter):
    def __init__(self, future: Future):
        self.futures = [future]

    def done(self) -> bool:
        return not self.futures[0].open

    def outcome(self) -> tuple[str, Any]:
        fut = self.futures[0]
        return ("send", fut.value) if fut.state == OK else ("throw", fut.error)


class AllWaiter(Waiter):
    """ctx.all: waits for every member; never raises (semantics.md 2.7)."""

    def __init__(self, futures: list[Future], unwrap_ok: bool):
        self.futures = futures
        self.unwrap_ok = unwrap_ok
        self._remaining = 0
        self._aborted: Future | None = next((f for f in futures if f.state == ABORT), None)
        for fut in futures:
            if fut.open:
                self._remaining += 1
                fut.waiter = self

    def finished(self, fut: Future) -> None:
        self._remaining -= 1
        if fut.state == ABORT and self._aborted is None:
            self._aborted = fut

    def done(self) -> bool:
        return self._remaining == 0

    def aborted(self) -> Future | None:
        return self._aborted

    def outcome(self) -> tuple[str, Any]:
        results = []
        for fut in self.futures:
            if fut.state == OK:
                results.append(fut.value if self.unwrap_ok else {"ok": fut.value})
            else:
                results.append({"err": fut.error})
        return ("send", results)


class RaceWaiter(Waiter):
    """ctx.race: the first member to finish wins (ties go to the earlier argument); a failed winner raises."""

    def __init__(self, futures: list[Future]):
        self.futures = futures

    def winner(self) -> tuple[int, Future] | None:
        finished = [(f.seq, i, f) for i, f in enumerate(self.futures) if not f.open]
        if not finished:
            return None
        _, index, fut = min(finished, key=lambda t: (t[0], t[1]))
        return index, fut

    def done(self) -> bool:
        return self.winner() is not None

    def losers(self) -> list[Future]:
        won = self.winner()
        return [f for f in self.futures if won is None or f is not won[1]]

    def outcome(self) -> tuple[str, Any]:
        won = self.winner()
        assert won is not None
        index, fut = won
        if fut.state == OK:
            return ("send", {"index": index, "value": fut.value})
        return ("throw", fut.error)
