"""Hardening of the runtime (issue 11): turns keep threads of their own, restart, lease minimums, no payloads in
logs, a byte-bounded engine cache, schema names. On SQLite and PostgreSQL (DUROXIDE_TEST_DB)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from duroxide_celery import PostgresProvider, RuntimeOptions
from duroxide_celery.options import MIN_LOCK_TIMEOUT_MS
from duroxide_celery.tasks.engine_cache import LruCache

from .helpers import WAIT_MS, wait_for_kind, wait_until


def _tick(ctx: Any, _: Any) -> Any:
    yield ctx.schedule_timer(100)
    return "tick"


def _inc(ctx: Any, x: int) -> Any:
    return (yield ctx.schedule_activity("Inc", x))


# -- item 1: turns have threads activities cannot take -------------------------------------------------------------


def test_turns_run_while_every_activity_thread_is_blocked(runtime_factory, client):
    """Two activity threads, both held by activities that never return on their own: a 100 ms timer of another
    instance still fires, an activity guarded by timeout_ms still times out, new instances still start."""
    release = threading.Event()
    running: list[int] = []

    def block(ctx: Any, i: int) -> int:
        running.append(i)
        release.wait(60)
        return i

    def fan(ctx: Any, n: int) -> Any:
        results = yield ctx.all([ctx.schedule_activity("Block", i) for i in range(n)])
        return sum(r["ok"] for r in results)

    def guarded(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.schedule_activity_with_retry("Block", 99, {"max_attempts": 1, "timeout_ms": 300})
        except Exception as exc:  # noqa: BLE001 - the timeout is what this orchestration reports
            return f"timed out: {type(exc).__name__}"
        return "not timed out"

    options = RuntimeOptions(orchestration_concurrency=1, worker_concurrency=2)
    runtime_factory({"Fan": fan, "Tick": _tick, "Guarded": guarded}, {"Block": block}, options=options)
    try:
        client.start_orchestration("fan", "Fan", 6)
        wait_until(lambda: len(running) >= 2, what="both activity threads to be busy")
        client.start_orchestration("tick", "Tick", None)
        client.start_orchestration("guarded", "Guarded", None)
        tick = client.wait_for_orchestration("tick", WAIT_MS)
        assert (tick.status, tick.output) == ("Completed", "tick")
        guarded_result = client.wait_for_orchestration("guarded", WAIT_MS)
        assert guarded_result.status == "Completed"
        assert guarded_result.output.startswith("timed out"), guarded_result.output
        assert client.get_status("fan").status == "Running"  # its activities are still blocked
    finally:
        release.set()
    fan_result = client.wait_for_orchestration("fan", WAIT_MS)
    assert (fan_result.status, fan_result.output) == ("Completed", sum(range(6)))


# -- item 10: shutdown() then start() --------------------------------------------------------------------------------


def test_restart_after_shutdown_fires_timers_and_renews_leases(runtime_factory, client):
    """After shutdown() and start(), timers fire (the scheduler thread is back), activities run, and a running
    activity's lease is renewed (a 1 s lease on a 2.5 s activity must not let the sweep start a second copy)."""
    calls: list[int] = []
    done = threading.Event()

    def slow(ctx: Any, x: int) -> int:
        calls.append(x)
        done.wait(2.5)  # longer than the lease: only renewals keep it
        return x * 2

    def long_one(ctx: Any, x: int) -> Any:
        return (yield ctx.schedule_activity("Slow", x))

    options = RuntimeOptions(worker_lock_timeout_ms=1000, recovery_interval_ms=100, recovery_threshold_ms=100)
    rt = runtime_factory(
        {"Tick": _tick, "Inc": _inc, "Long": long_one}, {"Inc": lambda ctx, x: x + 1, "Slow": slow}, options=options
    )
    client.start_orchestration("before", "Tick", None)
    assert client.wait_for_orchestration("before", WAIT_MS).status == "Completed"
    rt.shutdown(timeout_ms=5000)
    rt.start()
    client.start_orchestration("after-timer", "Tick", None)
    client.start_orchestration("after-activity", "Inc", 41)
    client.start_orchestration("after-long", "Long", 21)
    timer = client.wait_for_orchestration("after-timer", WAIT_MS)
    assert (timer.status, timer.output) == ("Completed", "tick")
    activity = client.wait_for_orchestration("after-activity", WAIT_MS)
    assert (activity.status, activity.output) == ("Completed", 42)
    long_result = client.wait_for_orchestration("after-long", WAIT_MS)
    assert (long_result.status, long_result.output) == ("Completed", 42)
    assert calls == [21], "the activity ran more than once: its lease was not renewed after the restart"


def test_restart_twice_keeps_working(runtime_factory, client):
    rt = runtime_factory({"Tick": _tick}, {})
    for round_ in range(2):
        rt.shutdown(timeout_ms=5000)
        rt.start()
        client.start_orchestration(f"tick-{round_}", "Tick", None)
        assert client.wait_for_orchestration(f"tick-{round_}", WAIT_MS).status == "Completed"


# -- item 8: leases the renewer cannot honour are refused ------------------------------------------------------------


@pytest.mark.parametrize("option", ["worker_lock_timeout_ms", "session_lock_timeout_ms"])
@pytest.mark.parametrize("value", [0, 1, 500, MIN_LOCK_TIMEOUT_MS - 1])
def test_lock_timeouts_below_the_minimum_are_refused(option, value):
    with pytest.raises(ValueError, match=rf"RuntimeOptions\.{option} must be at least 1000 ms, got {value}"):
        RuntimeOptions(**{option: value})


@pytest.mark.parametrize("lock_ms", [1000, 1500, 2000, 3000, 5000, 14_999, 15_000, 30_000, 600_000])
@pytest.mark.parametrize("buffer_ms", [None, 0, 500, 5000, 10**9])
def test_renewals_always_land_well_before_the_lease_lapses(lock_ms, buffer_ms):
    """The renewer wakes at least every min(0.5 s, interval) and so may renew up to that late: the interval plus
    that slack must stay under the lease by a margin (a third of it, or 1.5 s for long leases)."""
    opts = RuntimeOptions(
        worker_lock_timeout_ms=lock_ms,
        worker_lock_renewal_buffer_ms=buffer_ms,
        session_lock_timeout_ms=lock_ms,
        session_lock_renewal_buffer_ms=buffer_ms,
    )
    for interval in (opts.worker_renewal_interval_s, opts.session_renewal_interval_s):
        latest = interval + min(0.5, interval)
        assert 0 < interval and latest <= lock_ms / 1000 - min(1.5, lock_ms / 3000) + 1e-9, (lock_ms, interval)
    assert RuntimeOptions(worker_lock_timeout_ms=30_000).worker_renewal_interval_s == 25  # duroxide's default


def test_shortest_allowed_lease_runs_a_long_activity_once(runtime_factory, client):
    """A 3 s activity under the minimum lease (1 s) and an eager recovery sweep runs exactly once."""
    calls: list[int] = []

    def slow(ctx: Any, x: int) -> int:
        calls.append(x)
        threading.Event().wait(3)
        return x

    def long_one(ctx: Any, x: int) -> Any:
        return (yield ctx.schedule_activity("Slow", x))

    options = RuntimeOptions(
        worker_lock_timeout_ms=MIN_LOCK_TIMEOUT_MS, recovery_interval_ms=100, recovery_threshold_ms=100
    )
    runtime_factory({"Long": long_one, "Inc": _inc}, {"Slow": slow, "Inc": lambda ctx, x: x + 1}, options=options)
    client.start_orchestration("long", "Long", 7)
    client.start_orchestration("other", "Inc", 1)
    assert client.wait_for_orchestration("other", WAIT_MS).output == 2
    result = client.wait_for_orchestration("long", WAIT_MS)
    assert (result.status, result.output) == ("Completed", 7)
    assert calls == [7]


# -- item 9: no payloads in logs ---------------------------------------------------------------------------------------

SECRET = "4111-1111-SECRET-MARKER"


def _refuse_secret_rows(provider: Any) -> None:
    """A real database error on the commit of a turn: a trigger refuses work items whose input holds the marker."""
    engine = provider.store.engine
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER dx_refuse_secret BEFORE INSERT ON dx_work_items "
                "WHEN instr(NEW.input, 'SECRET-MARKER') > 0 BEGIN SELECT RAISE(ABORT, 'row refused by trigger'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION dx_refuse_secret() RETURNS trigger AS $$ BEGIN "
                "IF strpos(NEW.input, 'SECRET-MARKER') > 0 THEN RAISE EXCEPTION 'row refused by trigger'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER dx_refuse_secret BEFORE INSERT ON dx_work_items "
                "FOR EACH ROW EXECUTE FUNCTION dx_refuse_secret()"
            )


def test_database_errors_never_log_payloads(runtime_factory, client, provider, caplog):
    def pay(ctx: Any, card: str) -> Any:
        return (yield ctx.schedule_activity("Charge", {"card": card}))

    _refuse_secret_rows(provider)
    caplog.set_level(logging.DEBUG)
    runtime_factory(
        {"Pay": pay, "Inc": _inc},
        {"Charge": lambda ctx, x: "charged", "Inc": lambda ctx, x: x + 1},
        options=RuntimeOptions(max_attempts=2),
    )
    client.start_orchestration("pay", "Pay", SECRET)
    client.start_orchestration("other", "Inc", 1)
    assert client.wait_for_orchestration("other", WAIT_MS).output == 2
    wait_until(lambda: "row refused by trigger" in caplog.text, what="the database error to be logged")
    wait_until(lambda: client.get_status("pay").status == "Failed", what="the turn to be given up (poison)")
    assert "row refused by trigger" in caplog.text  # the error is still reported...
    assert "SECRET-MARKER" not in caplog.text  # ...without the bound parameters
    for record in caplog.records:
        assert "SECRET-MARKER" not in record.getMessage()
        assert "SECRET-MARKER" not in str(record.exc_info[1] if record.exc_info else "")


def test_engines_hide_bound_parameters(provider):
    engine = provider.store.engine
    assert engine.hide_parameters is True
    with pytest.raises(sa.exc.DBAPIError) as err, engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table WHERE x = :x"), {"x": SECRET})
    assert "SECRET-MARKER" not in str(err.value)
    assert "no_such_table" in str(err.value)


# -- item 11: the engine cache is bounded by bytes ---------------------------------------------------------------------


def test_engine_cache_is_bounded_by_bytes(runtime_factory, client):
    """Instances waiting with 1 MB inputs: the cache holds at most its budget, evicted instances still complete."""
    budget = 3 * 1024 * 1024

    def waits(ctx: Any, data: str) -> Any:
        go = yield ctx.wait_for_event("go")
        return [len(data), go]

    rt = runtime_factory({"Waits": waits}, {}, options=RuntimeOptions(engine_cache_max_bytes=budget))
    assert rt.engine_cache is not None and rt.engine_cache.max_bytes == budget
    ids = [f"big-{i}" for i in range(8)]
    for instance_id in ids:
        client.start_orchestration(instance_id, "Waits", "x" * 1_000_000)
    for instance_id in ids:
        wait_for_kind(client, instance_id, "ExternalSubscribed")
    assert 0 < len(rt.engine_cache) < len(ids)
    assert rt.engine_cache.bytes <= budget
    for instance_id in ids:
        client.raise_event(instance_id, "go", instance_id)
    for instance_id in ids:
        result = client.wait_for_orchestration(instance_id, WAIT_MS)
        assert (result.status, result.output) == ("Completed", [1_000_000, instance_id])


def test_engine_cache_default_budget_and_lru_eviction():
    assert RuntimeOptions().engine_cache_bytes == 64 * 1024 * 1024
    cache: LruCache[str] = LruCache(max_bytes=100, sizer=len)
    cache.put(("a", 1), "a" * 40)
    cache.put(("b", 1), "b" * 40)
    assert cache.peek(("a", 1)) is not None  # a is now the most recently used
    cache.put(("c", 1), "c" * 40)  # over 100: the least recently used (b) goes
    assert cache.peek(("b", 1)) is None and cache.peek(("a", 1)) and cache.peek(("c", 1))
    assert cache.bytes == 80
    cache.put(("huge", 1), "h" * 101)  # bigger than the whole budget: not kept, nothing else evicted
    assert cache.peek(("huge", 1)) is None and cache.bytes == 80
    assert cache.take(("a", 1)) == "a" * 40 and cache.bytes == 40
    off: LruCache[str] = LruCache(max_bytes=0, sizer=len)
    off.put(("a", 1), "a")
    assert off.peek(("a", 1)) is None


# -- item 13: schema names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["name\n", "name\r", "a b", "1abc", "a-b", "a;drop", "", "x" * 64, "é"])
def test_invalid_schema_names_are_refused(schema):
    with pytest.raises(ValueError, match="invalid PostgreSQL schema name"):
        PostgresProvider.connect_with_schema("postgresql://postgres@127.0.0.1:5432/test", schema)
    with pytest.raises(ValueError, match="invalid PostgreSQL schema name"):
        PostgresProvider.connect_with_schema("postgresql://postgres@127.0.0.1:5432/test", 42)


def test_valid_schema_names_are_accepted():
    for schema in ("name", "_x", "dx_" + "a" * 60, "A1"):
        assert (
            PostgresProvider.connect_with_schema("postgresql://postgres@127.0.0.1:5432/test", schema).schema == schema
        )
