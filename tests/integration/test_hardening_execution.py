"""Issue 11, engine execution: BaseException in orchestration code (item 3) and in activities (item 7), NUL
characters in text the store writes (item 2), one lease owner per holder (item 4), the lease clock, and a poison
decision whose commit fails. Every test runs on SQLite and on PostgreSQL (DUROXIDE_TEST_DB)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import pytest
from sqlalchemy import update

from duroxide_celery import RuntimeOptions
from duroxide_celery.providers import activities as activities_module
from duroxide_celery.providers import store as store_module
from duroxide_celery.providers import turns as turns_module
from duroxide_celery.providers.schema import escape_nul, instances, unescape_nul, work_items
from duroxide_celery.providers.store import LeaseLost, PendingActivity
from duroxide_celery.replay import events as ev

from .conftest import DB
from .helpers import WAIT_MS, kinds, wait_until

BASE_EXCEPTIONS = [
    pytest.param(lambda: SystemExit("bye"), "SystemExit: bye", id="SystemExit"),
    pytest.param(lambda: KeyboardInterrupt("stop"), "KeyboardInterrupt: stop", id="KeyboardInterrupt"),
    pytest.param(lambda: GeneratorExit("gone"), "GeneratorExit: gone", id="GeneratorExit"),
]


def _probe(ctx: Any, x: int) -> Any:
    yield ctx.schedule_timer(1)
    return x + 1


def _assert_others_complete(client: Any, prefix: str) -> None:
    """Other instances keep completing next to the failed one."""
    for n in range(3):
        client.start_orchestration(f"{prefix}-probe-{n}", "Probe", n)
    for n in range(3):
        result = client.wait_for_orchestration(f"{prefix}-probe-{n}", WAIT_MS)
        assert (result.status, result.output) == ("Completed", n + 1)


# -- item 3: BaseException in orchestration code ----------------------------------------------------------------
@pytest.mark.parametrize(("make", "text"), BASE_EXCEPTIONS)
def test_orchestration_raising_base_exception_fails_once_with_its_cause(runtime_factory, client, caplog, make, text):
    runs = itertools.count(1)
    seen: list[int] = []

    def raiser(ctx: Any, _: Any) -> Any:
        seen.append(next(runs))
        raise make()
        yield  # a generator, like most orchestrations

    rt = runtime_factory({"Raiser": raiser, "Probe": _probe}, options=RuntimeOptions(max_attempts=3))
    with caplog.at_level(logging.WARNING, logger="duroxide_celery"):
        client.start_orchestration("base-orch", "Raiser", None)
        result = client.wait_for_orchestration("base-orch", WAIT_MS)
        _assert_others_complete(client, "base-orch")
    assert result.status == "Failed"
    assert result.error.split("\n", 1)[0] == text
    assert "Traceback" in result.error
    assert kinds(client, "base-orch") == ["OrchestrationStarted", "OrchestrationFailed"]
    assert seen == [1], "deterministic user code runs once, not once per attempt"
    assert rt.store.get_instance("base-orch")["attempt_count"] == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "base-orch" in r.getMessage()]
    assert any(text in r.getMessage() and getattr(r, "instance_id", None) == "base-orch" for r in warnings)
    assert not [r for r in caplog.records if "poison" in r.getMessage()]


def test_base_exception_in_a_later_turn_fails_the_orchestration_and_a_parent_catches_it(runtime_factory, client):
    def child(ctx: Any, _: Any) -> Any:
        yield ctx.schedule_activity("Echo", 1)
        raise SystemExit(3)

    def parent(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.schedule_sub_orchestration_with_id("Child", "base-child", None)
        except Exception as exc:  # noqa: BLE001 - the child's failure is the parent's to handle
            return f"caught: {str(exc).splitlines()[0]}"
        return "not failed"

    runtime_factory({"Parent": parent, "Child": child, "Probe": _probe}, {"Echo": lambda ctx, x: x})
    client.start_orchestration("base-parent", "Parent", None)
    result = client.wait_for_orchestration("base-parent", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "caught: SystemExit: 3")
    child_result = client.get_status("base-child")
    assert child_result.status == "Failed" and child_result.error.startswith("SystemExit: 3\n")
    assert kinds(client, "base-child") == ["OrchestrationStarted", "ActivityScheduled", "OrchestrationFailed"]
    _assert_others_complete(client, "base-parent")


# -- item 7: BaseException or a broken __str__ in activities ----------------------------------------------------
class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _CustomBase(BaseException):
    pass


ACTIVITY_FAILURES = [
    *BASE_EXCEPTIONS,
    pytest.param(lambda: _CustomBase("custom"), "_CustomBase: custom", id="BaseException-subclass"),
    pytest.param(lambda: _Unprintable(), "_Unprintable: <exception str() failed>", id="broken-str"),
]


@pytest.mark.parametrize(("make", "text"), ACTIVITY_FAILURES)
def test_activity_raising_base_exception_or_unprintable_fails_once_and_is_catchable(
    runtime_factory, client, make, text
):
    runs: list[int] = []

    def bad(ctx: Any, _: Any) -> Any:
        runs.append(1)
        raise make()

    def orch(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.schedule_activity("Bad", None)
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        return "no failure"

    runtime_factory({"UsesBad": orch, "Probe": _probe}, {"Bad": bad}, options=RuntimeOptions(max_attempts=3))
    client.start_orchestration("base-act", "UsesBad", None)
    result = client.wait_for_orchestration("base-act", WAIT_MS)
    assert (result.status, result.output) == ("Completed", f"Activity 'Bad' call failed: {text}")
    assert kinds(client, "base-act") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityFailed",
        "OrchestrationCompleted",
    ]
    _assert_others_complete(client, "base-act")
    assert len(runs) == 1, "recorded once, never re-executed"


# -- item 2: NUL characters in text the store writes -------------------------------------------------------------
def test_nul_in_an_orchestration_error_is_recorded_and_catchable_by_the_parent(runtime_factory, client):
    def child(ctx: Any, _: Any) -> Any:
        yield ctx.schedule_timer(1)
        raise ValueError("bad\x00value")

    def parent(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.schedule_sub_orchestration_with_id("Child", "nul-child", None)
        except Exception as exc:  # noqa: BLE001
            return str(exc).splitlines()[0]
        return "not failed"

    runtime_factory({"Parent": parent, "Child": child, "Probe": _probe})
    client.start_orchestration("nul-parent", "Parent", None)
    result = client.wait_for_orchestration("nul-parent", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "ValueError: bad\x00value")
    child_result = client.get_status("nul-child")
    assert child_result.status == "Failed"
    assert child_result.error.startswith("ValueError: bad\x00value\n")
    assert client.list_executions("nul-child")  # the execution row (with its error) reads back
    _assert_others_complete(client, "nul")


def test_nul_in_an_activity_error_reaches_the_orchestration_and_its_failure(runtime_factory, client):
    def failing(ctx: Any, _: Any) -> Any:
        raise RuntimeError("act\x00err")

    def orch(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.schedule_activity("Failing", None)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"wrapped: {exc}") from None
        return "no failure"

    runtime_factory({"Orch": orch, "Probe": _probe}, {"Failing": failing})
    client.start_orchestration("nul-act", "Orch", None)
    result = client.wait_for_orchestration("nul-act", WAIT_MS)
    assert result.status == "Failed"
    assert result.error.startswith("ValueError: wrapped: Activity 'Failing' call failed: RuntimeError: act\x00err\n")
    assert kinds(client, "nul-act") == [
        "OrchestrationStarted",
        "ActivityScheduled",
        "ActivityFailed",
        "OrchestrationFailed",
    ]
    _assert_others_complete(client, "nul-act")


def test_store_round_trips_nul_in_raw_text_columns(provider, client):
    """The context refuses NUL in custom status and KV values; the store still records any such text the same
    on both stores (escaped on PostgreSQL, in one place: schema.NulSafeText)."""
    store = provider.store
    client.start_orchestration("nul-store", "X", None)
    marked = "\ufdd0 looks escaped \\0 but is not"
    with store.write() as conn:
        store.bump_custom_status(conn, "nul-store", "status\x00with nul")
        store.apply_kv(conn, "nul-store", [("set", "k", "value\x00with nul", 1), ("set", "m", marked, 1)])
        store.update_execution(conn, "nul-store", 1, status="Failed", error="boom\x00!")
    store.count_failed_attempt("nul-store", "turn attempt failed: ValueError: why\x00")
    row = store.get_instance("nul-store")
    assert row["waiting_reason"] == "turn attempt failed: ValueError: why\x00"
    assert row["custom_status"] == "status\x00with nul"
    assert client.get_status("nul-store").custom_status == "status\x00with nul"
    assert store.get_kv("nul-store", "k") == "value\x00with nul"
    assert store.get_kv("nul-store", "m") == marked
    assert store.list_executions("nul-store")[0]["error"] == "boom\x00!"


@pytest.mark.parametrize("text", ["", "plain", "a\x00b", "\x00", "\\0", "\\\x00\\", "\ufdd0", "\ufdd0\\0\x00"])
def test_nul_escaping_round_trips(text):
    stored = escape_nul(text)
    assert "\x00" not in stored
    assert unescape_nul(stored) == text
    if "\x00" not in text and not text.startswith("\ufdd0"):
        assert stored == text  # ordinary text is stored as it is


# -- item 4: one lease owner per holder ---------------------------------------------------------------------------
def test_taken_over_activity_is_cancelled_and_its_stale_result_dropped(runtime_factory, client):
    """Two executions of one activity row in one process (a lapsed lease taken by another thread): the first sees
    is_cancelled() and its result is not the one recorded."""
    started, first_done = threading.Event(), threading.Event()
    calls = itertools.count(1)
    saw_cancel: list[bool] = []

    def slow(ctx: Any, _: Any) -> str:
        if next(calls) == 1:
            started.set()
            deadline = time.monotonic() + WAIT_MS / 1000
            while not ctx.is_cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            saw_cancel.append(ctx.is_cancelled())
            first_done.set()
            return "stale"
        first_done.wait(WAIT_MS / 1000)  # the stale execution finishes first: its result must still lose
        return "fresh"

    def orch(ctx: Any, _: Any) -> Any:
        return (yield ctx.schedule_activity("Slow", None))

    rt = runtime_factory({"Orch": orch, "Probe": _probe}, {"Slow": slow})
    client.start_orchestration("takeover-act", "Orch", None)
    assert started.wait(WAIT_MS / 1000)
    with rt.store.engine.begin() as conn:  # the lease lapses
        conn.execute(update(work_items).where(work_items.c.instance_id == "takeover-act").values(locked_until=0))
    rt.publisher.activities([PendingActivity("takeover-act", 1, 2, "Slow")])  # another thread takes the row
    result = client.wait_for_orchestration("takeover-act", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "fresh")
    assert saw_cancel == [True]
    history = client.read_execution_history("takeover-act", 1)
    assert [e.kind for e in history].count("ActivityCompleted") == 1
    _assert_others_complete(client, "takeover-act")


@pytest.mark.skipif(
    DB != "postgres", reason="SQLite: a turn holds the only write transaction from lease to commit (no take-over)"
)
def test_turn_whose_lease_was_taken_over_changes_nothing(runtime_factory, client):
    lost = threading.Event()

    class _Lost(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "takeover-turn" in record.getMessage() and "lost during its turn" in record.getMessage():
                lost.set()

    handler = _Lost()
    logging.getLogger("duroxide_celery.tasks.turn").addHandler(handler)
    first_blocked, release_first = threading.Event(), threading.Event()
    runs = itertools.count(1)

    def orch(ctx: Any, _: Any) -> Any:
        if next(runs) == 1:
            first_blocked.set()
            release_first.wait(WAIT_MS / 1000)
            return "first"
        release_first.set()
        lost.wait(WAIT_MS / 1000)  # hold the lease until the first turn tried to commit
        return "second"
        yield

    try:
        rt = runtime_factory({"Orch": orch, "Probe": _probe})
        client.start_orchestration("takeover-turn", "Orch", None)
        assert first_blocked.wait(WAIT_MS / 1000)
        with rt.store.engine.begin() as conn:  # the first turn's lease lapses
            conn.execute(
                update(instances)
                .where(instances.c.instance_id == "takeover-turn")
                .values(lock_owner=None, locked_until=0)
            )
        client.raise_event("takeover-turn", "nudge", None)  # a message, and a poke: another thread takes over
        result = client.wait_for_orchestration("takeover-turn", WAIT_MS)
    finally:
        logging.getLogger("duroxide_celery.tasks.turn").removeHandler(handler)
    assert lost.is_set(), "the turn that lost its lease was refused at its commit"
    assert (result.status, result.output) == ("Completed", "second")
    assert kinds(client, "takeover-turn").count("OrchestrationCompleted") == 1
    row = rt.store.get_instance("takeover-turn")
    assert (row["lock_owner"], row["status"]) == (None, "Completed")
    _assert_others_complete(client, "takeover-turn")


def test_lease_holders_have_their_own_owners_and_a_lost_lease_changes_nothing(provider, client):
    store = provider.store
    client.start_orchestration("owners", "X", None)
    first = store.acquire_instance("owners", "node:1:1", 60_000)
    assert first is not None and first.owner == "node:1:1"
    with store.engine.begin() as conn:  # it lapses, and another holder of the same node takes it
        conn.execute(update(instances).where(instances.c.instance_id == "owners").values(locked_until=0))
    second = store.acquire_instance("owners", "node:1:2", 60_000)
    assert second is not None
    with pytest.raises(LeaseLost), store.write() as conn:
        store.finish_instance(conn, "owners", "node:1:1", status="Completed")
    store.release_instance("owners", "node:1:1", reset_attempts=False)  # the loser's error path
    assert store.get_instance("owners")["lock_owner"] == "node:1:2"
    assert store.acquire_instance("owners", "node:1:3", 60_000) is None


# -- the lease clock --------------------------------------------------------------------------------------------
def test_a_worker_with_a_slow_clock_never_takes_an_already_expired_lease(provider, client, monkeypatch):
    store = provider.store
    client.start_orchestration("skewed", "X", None)
    with store.write() as conn:
        store.add_work_items(conn, "skewed", 1, ("X", ""), [_Item()], store_module.now_ms())
    real = store_module.now_ms
    for leasing in (turns_module, activities_module):  # this worker's clock is 1 h slow
        monkeypatch.setattr(leasing, "now_ms", lambda: real() - 3_600_000)
    assert store.acquire_instance("skewed", "slow-worker", 60_000) is not None
    assert store.claim_work_item(("skewed", 1, 2), "slow-worker", 60_000) is not None
    for leasing in (turns_module, activities_module):
        monkeypatch.setattr(leasing, "now_ms", real)
    # The leases run 60 s by the database's clock: nobody else may take them now.
    assert store.acquire_instance("skewed", "other-worker", 60_000) is None
    assert store.claim_work_item(("skewed", 1, 2), "other-worker", 60_000) is None
    row = store.get_instance("skewed")
    assert real() < row["locked_until"] <= real() + 60_000


class _Item:
    event_id, name, input, session_id, tag, ttl_ms, key, priority = 2, "Act", "null", None, None, None, None, 0


# -- a poison decision whose commit fails --------------------------------------------------------------------
def test_poison_decision_that_fails_to_commit_is_retried_and_counted_once(runtime_factory, client, caplog):
    rt = runtime_factory({"Probe": _probe, "Fine": lambda ctx, x: x}, options=RuntimeOptions(max_attempts=2))
    store = rt.store
    real_fence = store.fence_turn
    failures = itertools.count(1)

    def failing_fence(conn: Any, fence: Any) -> set[str]:
        # Attempts 1 and 2 fail, then the commit of the first poison decision (attempt 3) fails too.
        if fence.instance_id == "poisoned" and next(failures) <= 3:
            if any(e.kind == ev.ORCHESTRATION_FAILED for e in fence.history):
                poison_commit_failed.set()
            raise RuntimeError("injected store failure")
        return real_fence(conn, fence)

    poison_commit_failed = threading.Event()
    store.fence_turn = failing_fence  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="duroxide_celery"):
        client.start_orchestration("poisoned", "Fine", 1)
        result = client.wait_for_orchestration("poisoned", WAIT_MS)
        _assert_others_complete(client, "poisoned")
    assert poison_commit_failed.is_set()
    assert result.status == "Failed"
    assert result.error.startswith("poison: orchestration poisoned exceeded")
    assert "last attempt: turn attempt failed: RuntimeError: injected store failure" in result.error
    assert kinds(client, "poisoned") == ["OrchestrationStarted", "OrchestrationFailed"]
    poison_logs = [r for r in caplog.records if r.getMessage().startswith("poison: orchestration poisoned")]
    assert len(poison_logs) == 1, "only the poison decision that committed is reported"
    assert rt.metrics.snapshot()["orch_poison"] == 1


@pytest.mark.skipif(
    DB != "postgres", reason="SQLite: a turn holds the only write transaction from lease to commit (no renewal)"
)
def test_a_long_turn_renews_its_instance_lease(runtime_factory, client):
    """A replay that outlives the orchestrator lease keeps it: another poke finds it held, the code runs once."""
    blocked, release = threading.Event(), threading.Event()
    runs = itertools.count(1)
    seen: list[int] = []

    def orch(ctx: Any, _: Any) -> Any:
        seen.append(next(runs))
        if len(seen) == 1:
            blocked.set()
            release.wait(WAIT_MS / 1000)
        return "done"
        yield

    rt = runtime_factory({"Slow": orch, "Probe": _probe}, options=RuntimeOptions(orchestrator_lock_timeout_ms=1000))
    client.start_orchestration("long-turn", "Slow", None)
    assert blocked.wait(WAIT_MS / 1000)
    first = rt.store.get_instance("long-turn")
    # Renewed past its first expiry, under the same owner, while the code still runs.
    renewed = wait_until(
        lambda: (row := rt.store.get_instance("long-turn"))["locked_until"] > first["locked_until"] + 500 and row,
        what="the lease of the long turn to be renewed",
    )
    assert renewed["lock_owner"] == first["lock_owner"]
    client.raise_event("long-turn", "nudge", None)  # a poke while the turn runs: it must not take the lease
    _assert_others_complete(client, "long-turn")
    release.set()
    result = client.wait_for_orchestration("long-turn", WAIT_MS)
    assert (result.status, result.output) == ("Completed", "done")
    assert seen == [1]
