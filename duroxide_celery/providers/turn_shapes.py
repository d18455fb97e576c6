"""The transactions of one orchestrator turn, one shape per database (its dialect picks it).

A turn leases its instance, loads its history and inbox, replays (no I/O), then commits everything it decided,
fenced by the lease (DESIGN invariant 2). SQLite has one writer at a time anyway: lease, load, replay and commit
run in one write transaction, which halves the commits, and nothing can reach the inbox meanwhile. PostgreSQL:
one statement takes the lease and reads what the replay needs, committing as it runs; the replay holds no
transaction, and the turn commits in a transaction whose first statement proves the lease is still ours.

A message that arrives while the lease is held must not be left behind (PostgreSQL). Its poke's lease statement
either takes the lease (its snapshot shows it free: it reads the message), or finds it held and counts itself in
the instance row (`refused_pokes`), on the row version its snapshot sees; a version changed since, such as our
commit's, makes it look again with a new snapshot. The commit's first statement row-locks the instance and returns
that count as of the latest version: a refusal committed before it shows (`PublishPlan.more`: this task takes
another turn), and one that comes after it waits for our commit, then finds the lease free. A turn that ends
without a commit (`release`) reads the inbox once its release is durable instead: a message committed before that
read is taken by this task's next turn, and one committed after it finds the lease free for its own poke.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from types import TracebackType
from typing import Protocol, TypeVar

from sqlalchemy.engine import Connection

from . import telemetry
from .dto import InstanceLease, LoadedLease, PublishPlan, TurnChanges, TurnLoad

log = logging.getLogger(__name__)

T = TypeVar("T")


class TurnOps(Protocol):
    """What a turn's transactions need from the store."""

    def write(self) -> AbstractContextManager[Connection]: ...
    def lease_transaction(self) -> AbstractContextManager[Connection]: ...
    def has_inbox(self, instance_id: str, conn: Connection | None = None) -> bool: ...
    def acquire_instance(
        self, instance_id: str, owner: str, lease_ms: int, conn: Connection | None = None
    ) -> InstanceLease | None: ...
    def lease_and_load(
        self, instance_id: str, owner: str, lease_ms: int, prefix: tuple[int, int] | None = None
    ) -> LoadedLease | None: ...
    def load_turn(
        self, instance_id: str, execution_id: int, after_event_id: int = 0, conn: Connection | None = None
    ) -> TurnLoad: ...
    def get_kv(self, instance_id: str, key: str, conn: Connection | None = None) -> str | None: ...
    def release_instance(
        self,
        instance_id: str,
        owner: str,
        *,
        reset_attempts: bool,
        next_attempt_at: int = 0,
        waiting_reason: str | None = None,
        consumed_ids: Iterable[int] = (),
        conn: Connection | None = None,
    ) -> None: ...
    def count_failed_attempt(self, instance_id: str, cause: str | None = None) -> None: ...
    def commit_turn(self, lease: InstanceLease, changes: TurnChanges, *, conn: Connection) -> PublishPlan: ...
    def renew_instance(self, instance_id: str, owner: str, lease_ms: int) -> bool: ...
    @property
    def lease_keeper(self) -> LeaseKeeper: ...


class TurnTransaction:
    """One turn's transactions. Entering leases the instance (`lease`: None when refused: held elsewhere, backed
    off, or no pending message); `load` reads what the replay needs; `replay_starts` marks the replay (no I/O);
    `commit` or `release` ends the turn; leaving rolls back whatever did not commit. `prefix`: (execution id,
    event id) of the history the caller holds already (a hint: `load` is asked for what it needs)."""

    #: Whether the turn may wait after `replay_starts` (a TimerFired read just before its time) without holding a
    #: database transaction open; False where the turn's write transaction stays open through the replay.
    may_wait = False

    def __init__(
        self, ops: TurnOps, instance_id: str, owner: str, lease_ms: int, prefix: tuple[int, int] | None = None
    ):
        self.ops = ops
        self.instance_id = instance_id
        self.owner = owner
        self.lease_ms = lease_ms
        self.prefix = prefix
        self.lease: InstanceLease | None = None
        self._lease_transaction = ExitStack()
        self._lease_conn: Connection | None = None

    def __enter__(self) -> TurnTransaction:
        raise NotImplementedError

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lease_transaction.__exit__(exc_type, exc, tb)

    def _leased_conn(self) -> Connection:
        if self._lease_conn is None:
            raise RuntimeError("the turn's lease transaction is not open")
        return self._lease_conn

    def load(self, execution_id: int, after_event_id: int = 0) -> TurnLoad:
        """The execution's history after `after_event_id`, the pending messages and the KV snapshot."""
        return self.ops.load_turn(self.instance_id, execution_id, after_event_id, conn=self._leased_conn())

    def read_kv(self, instance_id: str, key: str) -> str | None:
        raise NotImplementedError

    def trace_context(self) -> str | None:
        """The instance's stored trace context, read in the lease transaction (observability/otel.py)."""
        return telemetry.trace_context(self._leased_conn(), self.instance_id)

    def adopt_trace_context(self, context: str) -> None:
        """Store `context` for an instance started untraced, in the lease transaction (which holds the lease)."""
        telemetry.adopt_trace_context(self._leased_conn(), self.instance_id, context)

    def replay_starts(self) -> None:
        raise NotImplementedError

    def commit(self, changes: TurnChanges) -> PublishPlan:
        """Commit everything the turn decided (Store.commit_turn), fenced by the lease (LeaseLost when it was
        taken over); returns what to publish now that it is durable, and whether messages may wait (`more`)."""
        lease = self.lease
        if lease is None:
            raise RuntimeError("a turn that holds no lease has nothing to commit")
        return self._in_commit(lambda conn: self.ops.commit_turn(lease, changes, conn=conn))

    def _in_commit(self, write: Callable[[Connection], T]) -> T:
        """Run `write(conn)` in the commit transaction, and commit it."""
        raise NotImplementedError

    def _more_waiting(self) -> bool:
        """After a release: whether messages may have arrived for the instance while the lease was held."""
        raise NotImplementedError

    def release(
        self,
        *,
        reset_attempts: bool,
        next_attempt_at: int = 0,
        waiting_reason: str | None = None,
        consumed_ids: Iterable[int] = (),
    ) -> bool:
        """Give the lease back without a turn (Store.release_instance); whether more messages may wait."""
        self._in_commit(
            lambda conn: self.ops.release_instance(
                self.instance_id,
                self.owner,
                reset_attempts=reset_attempts,
                next_attempt_at=next_attempt_at,
                waiting_reason=waiting_reason,
                consumed_ids=consumed_ids,
                conn=conn,
            )
        )
        return self._more_waiting()

    def record_failed_attempt(self, cause: str) -> None:
        """After the turn failed before its commit (its transaction rolled back): keep its attempt counted (the
        poison bound) with its `cause`, and give back the lease if it is still ours, never another holder's."""
        raise NotImplementedError


class OneTransactionTurn(TurnTransaction):
    """SQLite: lease, load, replay and commit in one write transaction."""

    def __enter__(self) -> TurnTransaction:
        if not self.ops.has_inbox(self.instance_id):
            return self  # a duplicate or late poke: nothing to do, and no write lock taken to learn it
        self._lease_conn = self._lease_transaction.enter_context(self.ops.write())
        try:
            self.lease = self.ops.acquire_instance(self.instance_id, self.owner, self.lease_ms, conn=self._lease_conn)
        except BaseException:
            self._lease_transaction.close()  # a failed statement rolls back the write transaction
            raise
        return self

    def read_kv(self, instance_id: str, key: str) -> str | None:
        return self.ops.get_kv(instance_id, key, conn=self._leased_conn())

    def replay_starts(self) -> None:
        return None  # the write transaction stays open through the replay: nobody else can write meanwhile

    def _in_commit(self, write: Callable[[Connection], T]) -> T:
        return write(self._leased_conn())  # committed when the turn's transaction ends

    def _more_waiting(self) -> bool:
        return False  # nobody could write a message while this turn held SQLite's only write transaction

    def record_failed_attempt(self, cause: str) -> None:
        # The rollback undid the lease and its attempt count: count the attempt.
        self.ops.count_failed_attempt(self.instance_id, cause)


class LeaseThenCommitTurn(TurnTransaction):
    """PostgreSQL: the lease and the turn's reads are one statement that commits as it runs, the replay holds no
    transaction, and the commit transaction is fenced by the lease; a replay that runs long has its lease renewed
    (LeaseKeeper)."""

    may_wait = True  # the lease committed with its reads: the turn holds no transaction

    def __init__(
        self, ops: TurnOps, instance_id: str, owner: str, lease_ms: int, prefix: tuple[int, int] | None = None
    ):
        super().__init__(ops, instance_id, owner, lease_ms, prefix)
        self._held = False
        self._loaded: LoadedLease | None = None

    def __enter__(self) -> TurnTransaction:
        self._loaded = self.ops.lease_and_load(self.instance_id, self.owner, self.lease_ms, self.prefix)
        if self._loaded is not None:
            self.lease = self._loaded.lease
            self.ops.lease_keeper.hold(self.instance_id, self.owner, self.lease_ms)  # committed: renewed from now
            self._held = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            if self._held:
                self.ops.lease_keeper.drop(self.instance_id, self.owner)

    def load(self, execution_id: int, after_event_id: int = 0) -> TurnLoad:
        # What the lease statement read, when it covers what is asked; else read again (the lease is ours).
        loaded = self._loaded
        if loaded is not None and loaded.lease.execution_id == execution_id and loaded.after <= after_event_id:
            history, messages, snapshot = loaded.load
            if loaded.after < after_event_id:
                history = [e for e in history if e.event_id > after_event_id]
            return history, messages, snapshot
        return self.ops.load_turn(self.instance_id, execution_id, after_event_id)

    def read_kv(self, instance_id: str, key: str) -> str | None:
        return self.ops.get_kv(instance_id, key)

    def trace_context(self) -> str | None:
        return self._loaded.trace_context if self._loaded is not None else None

    def adopt_trace_context(self, context: str) -> None:
        with self.ops.lease_transaction() as conn:  # the lease is ours: nobody else writes the row meanwhile
            telemetry.adopt_trace_context(conn, self.instance_id, context)

    def replay_starts(self) -> None:
        return None  # the lease committed with its reads: the replay runs outside any transaction

    def _in_commit(self, write: Callable[[Connection], T]) -> T:
        with self.ops.write() as commit_conn:
            return write(commit_conn)

    def _more_waiting(self) -> bool:
        # Read after the release, never inside it: see the module docstring.
        return self.ops.has_inbox(self.instance_id)

    def record_failed_attempt(self, cause: str) -> None:
        # The lease (and its attempt count) committed: give it back, with the cause.
        self.ops.release_instance(self.instance_id, self.owner, reset_attempts=False, waiting_reason=cause)


class LeaseKeeper:
    """Renews the instance leases of turns that run long (where a turn's replay runs outside any transaction): a
    turn still running a third of its lease after it took it gets its lease extended, so a slow replay is not
    taken over and redone by another worker, over and over. A normal turn is done long before: tracking it costs
    two dict operations and no statement. A turn that lost its lease anyway changes nothing (its commit's fence
    compares the lease owner, unique per turn)."""

    #: The renewal thread exits after this long with no turn to watch (seconds); the next turn starts it again.
    IDLE_EXIT_S = 30.0

    def __init__(self, renew: Callable[[str, str, int], bool]):
        self._renew = renew
        self._held: dict[tuple[str, str], tuple[float, int]] = {}  # (instance, owner) -> (taken at, lease ms)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def hold(self, instance_id: str, owner: str, lease_ms: int) -> None:
        with self._cond:
            self._held[(instance_id, owner)] = (time.monotonic(), lease_ms)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="duroxide-turn-leases", daemon=True)
                self._thread.start()

    def drop(self, instance_id: str, owner: str) -> None:
        with self._cond:
            self._held.pop((instance_id, owner), None)

    def _loop(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._cond:
                shortest = min((lease for _, lease in self._held.values()), default=3000) / 1000
                self._cond.wait(min(max(shortest / 3, 0.05), 1.0))
                now = time.monotonic()
                if not self._held and now - idle_since > self.IDLE_EXIT_S:
                    self._thread = None
                    return
                if self._held:
                    idle_since = now
                due = [(key, lease) for key, (taken, lease) in self._held.items() if now - taken >= lease / 1000 / 3]
            for (instance_id, owner), lease_ms in due:
                self._renew_one(instance_id, owner, lease_ms)

    def _renew_one(self, instance_id: str, owner: str, lease_ms: int) -> None:
        try:
            held = self._renew(instance_id, owner, lease_ms)
        except Exception:  # noqa: BLE001 - a database blip: the next round tries again
            log.exception("renewing the lease of a long turn of %s failed", instance_id)
            return
        with self._cond:
            if (instance_id, owner) in self._held:
                if held:
                    self._held[(instance_id, owner)] = (time.monotonic(), lease_ms)
                else:  # committed meanwhile, or taken over: its commit's fence decides
                    del self._held[(instance_id, owner)]
