"""Flow control on the embedded runtime, on the suite's store (SQLite, or PostgreSQL with DUROXIDE_TEST_DB=postgres):
per-key and per-activity concurrency limits enforced by the store, held work waiting in the store, fair admission
across keys, priorities, restarts and cancellation (providers/flow.py). Concurrency is measured by the activities
themselves (a counter of running calls per key), order by the order the activities finished."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from duroxide_celery import RuntimeOptions

from .helpers import WAIT_MS, event_data, kinds, wait_for_kind, wait_until


class Recorder:
    """What the activities saw: running calls per key (and the most at once), and the order they finished."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.most_total = 0
        self.finished: list[Any] = []

    def activity(self, pause_s: float = 0.05) -> Any:
        def work(ctx: Any, item: dict[str, Any]) -> Any:
            key = item["key"]
            with self.lock:
                self.running[key] = self.running.get(key, 0) + 1
                self.most[key] = max(self.most.get(key, 0), self.running[key])
                self.most_total = max(self.most_total, sum(self.running.values()))
            time.sleep(pause_s)  # gives other calls the chance to overlap (load, not an assertion)
            with self.lock:
                self.running[key] -= 1
                self.finished.append(item["tag"])
            return item["tag"]

        return work


def fan_out(ctx: Any, items: list[dict[str, Any]]) -> Any:
    tasks = []
    for item in items:
        task = ctx.schedule_activity("Call", item)
        if item["key"] != "":
            task = task.with_key(item["key"])
        if "priority" in item:
            task = task.with_priority(item["priority"])
        tasks.append(task)
    return (yield ctx.all_typed(tasks))


def items(key: str, n: int, **more: Any) -> list[dict[str, Any]]:
    return [{"key": key, "tag": f"{key}{i}", **more} for i in range(n)]


def test_key_limit_is_never_exceeded_across_keys_and_work_without_a_key_shares_one(runtime_factory, client):
    rec = Recorder()
    rt = runtime_factory({"FanOut": fan_out}, {"Call": rec.activity()}, options=RuntimeOptions(worker_concurrency=8))
    rt.limit("Call", key_limit=2)
    work = items("a", 6) + items("b", 6) + items("", 4)
    client.start_orchestration("fan", "FanOut", work)
    result = client.wait_for_orchestration("fan", WAIT_MS)
    assert result.status == "Completed", result.error
    assert sorted(result.output) == sorted(w["tag"] for w in work)
    assert rec.most == {"a": 2, "b": 2, "": 2}  # reached, never passed
    scheduled = [event_data(e) for e in client.read_execution_history("fan", 1) if e.kind == "ActivityScheduled"]
    assert [d.get("key") for d in scheduled] == [w["key"] or None for w in work]  # the key is in history
    assert rt.store.running_by_key("Call") == {} and rt.store.held_activities() == []  # every slot freed


def test_a_quiet_key_is_not_starved_by_a_busy_one(runtime_factory, client):
    """With one slot for the activity, admission alternates between keys with waiting work: the quiet key's two
    items, scheduled after the busy key's twenty, finish among the first five (first in, first out: last two)."""
    rec = Recorder()
    rt = runtime_factory(
        {"FanOut": fan_out}, {"Call": rec.activity(0.01)}, options=RuntimeOptions(worker_concurrency=4)
    )
    rt.limit("Call", limit=1)
    client.start_orchestration("busy", "FanOut", items("busy", 20))
    wait_until(lambda: len(rt.store.held_activities("busy")) >= 15, what="the busy key's work held")
    client.start_orchestration("quiet", "FanOut", items("quiet", 2))
    assert client.wait_for_orchestration("quiet", WAIT_MS).status == "Completed"
    assert client.wait_for_orchestration("busy", WAIT_MS).status == "Completed"
    assert rec.most_total == 1
    positions = [rec.finished.index(t) for t in ("quiet0", "quiet1")]
    assert max(positions) < 5, rec.finished


def test_held_work_is_admitted_by_priority_then_in_schedule_order(runtime_factory, client):
    rec = Recorder()
    rt = runtime_factory({"FanOut": fan_out}, {"Call": rec.activity(0.0)})
    rt.limit("Call", limit=1)
    priorities = [0, 5, 9, 1, 5, 0]
    work = [{"key": "k", "tag": f"p{p}-{i}", "priority": p} for i, p in enumerate(priorities)]
    client.start_orchestration("prio", "FanOut", work)
    assert client.wait_for_orchestration("prio", WAIT_MS).status == "Completed"
    assert rec.finished == ["p9-2", "p5-1", "p5-4", "p1-3", "p0-0", "p0-5"]
    scheduled = [event_data(e) for e in client.read_execution_history("prio", 1) if e.kind == "ActivityScheduled"]
    assert [d["priority"] for d in scheduled] == priorities


def test_held_work_waits_in_the_store_survives_a_restart_and_cancellation_frees_its_slot(store, client):
    from duroxide_celery import Runtime

    # A runtime that runs turns only: the admitted item is published but nobody runs it, the rest stays held.
    turns_only = Runtime(store.open(), RuntimeOptions(worker_concurrency=0))
    turns_only.register_orchestration("FanOut", fan_out)
    turns_only.limit("Call", limit=1)
    turns_only.start()
    try:
        client.start_orchestration("first", "FanOut", items("k", 3))
        wait_until(lambda: len(turns_only.store.held_activities("first")) == 2, what="two items held")
        client.start_orchestration("second", "FanOut", items("k", 1))
        wait_until(lambda: len(turns_only.store.held_activities()) == 3, what="the second instance's item held")
        held = turns_only.store.held_activities()
        assert {h.instance_id for h in held} == {"first", "second"}
        assert all(h.reason == "held by limit Call(limit=1) for key 'k'" for h in held)
        # Client.get_waits says so: one activity queued (admitted, nobody runs it here), two held by the limit.
        states = [(a.state, a.held_by) for a in client.get_waits("first").activities]
        assert sorted(states, key=str) == sorted(
            [("queued", None)] + [("held", "held by limit Call(limit=1) for key 'k'")] * 2, key=str
        )
        # Held work is not republished by the recovery sweep: it is waiting, not lost.
        assert {a.instance_id for a in turns_only.store.stale_work_items(0)} <= {"first"}
        client.cancel_instance("first", "no longer needed")
        assert client.wait_for_orchestration("first", WAIT_MS).status == "Failed"
        # The cancel dropped first's held items and freed its slot, which went to second's item in that commit.
        assert turns_only.store.held_activities() == []
        assert turns_only.store.running_by_key("Call") == {"k": 1}
    finally:
        turns_only.shutdown(timeout_ms=2000)
    rec = Recorder()
    restarted = Runtime(store.open())  # a new process: the admitted item runs, with the limit still stored
    restarted.register_orchestration("FanOut", fan_out)
    restarted.register_activity("Call", rec.activity(0.0))
    restarted.start()
    try:
        assert client.wait_for_orchestration("second", WAIT_MS).output == ["k0"]
        assert [limit.describe() for limit in restarted.store.get_limits()] == ["Call(limit=1)"]
    finally:
        restarted.shutdown(timeout_ms=2000)


def test_failed_and_expired_work_frees_its_slot_in_the_same_transaction(runtime_factory, client):
    def failing(ctx, item):
        raise RuntimeError(f"upstream refused {item['tag']}")

    def all_of(ctx, n):
        return (yield ctx.all([ctx.schedule_activity("Call", {"tag": f"k{i}"}) for i in range(n)]))

    def ttl_fan_out(ctx, n):
        return (yield ctx.all([ctx.schedule_activity("Slow", i, ttl_ms=300).with_tag("nowhere") for i in range(n)]))

    rt = runtime_factory({"AllOf": all_of, "TtlFanOut": ttl_fan_out}, {"Call": failing})
    rt.limit("Call", limit=1)
    rt.limit("Slow", limit=1)  # tagged for no worker: its rows are admitted (one at a time) but never claimed
    client.start_orchestration("failing", "AllOf", 3)
    outcomes = client.wait_for_orchestration("failing", WAIT_MS).output
    assert ["upstream refused k" + str(i) in o["err"] for i, o in enumerate(outcomes)] == [True] * 3
    client.start_orchestration("expiring", "TtlFanOut", 2)
    outcomes = client.wait_for_orchestration("expiring", WAIT_MS).output
    errors = [o["err"] for o in outcomes]
    # Both reach their deadline in one pass: the admitted one (nobody serves it), and the held one, still held.
    assert "no running worker serves tag 'nowhere'" in errors[0]
    assert "it was held by its activity's limit all that time" in errors[1]
    assert rt.store.running_by_key("Call") == {} and rt.store.running_by_key("Slow") == {}
    assert rt.store.held_activities() == []


def test_rates_bound_admissions_in_every_window_across_keys_and_per_key(runtime_factory, client):
    """rate='4/s' and key_rate='2/s': in any second, at most 4 admissions in all and 2 per key, read from the
    store's record of admissions (dx_admissions); held work becomes due by the scheduler, not by a completion."""
    import sqlalchemy as sa

    from duroxide_celery.providers.schema import admissions

    rec = Recorder()
    rt = runtime_factory({"FanOut": fan_out}, {"Call": rec.activity(0.0)})
    rt.limit("Call", rate="4/s", key_rate="2/s")
    client.start_orchestration("rated", "FanOut", items("a", 5) + items("b", 5))
    assert client.wait_for_orchestration("rated", WAIT_MS).status == "Completed"
    with rt.store.engine.connect() as conn:
        rows = conn.execute(sa.select(admissions.c.flow_key, admissions.c.admitted_at)).all()

    def within_rate(times: list[int], count: int) -> bool:
        times = sorted(times)
        return all(times[i + count] - times[i] >= 1000 for i in range(len(times) - count))

    assert len(rows) == 10
    assert within_rate([t for _, t in rows], 4)
    for key in ("a", "b"):
        assert within_rate([t for k, t in rows if k == key], 2)
    [stored] = rt.store.get_limits()
    assert stored.describe() == "Call(rate='4/s', key_rate='2/s')"


def job(ctx, item):
    return (yield ctx.schedule_activity("Call", item))


def test_start_limits_hold_starts_in_the_store_and_admit_them_as_instances_end(store, client):
    from duroxide_celery import Runtime

    def runtime(**options: Any) -> Any:
        rt = Runtime(store.open(), RuntimeOptions(**options))
        rt.register_orchestration("Job", job)
        rt.limit_starts("Job", key_limit=1)
        return rt

    turns_only = runtime(worker_concurrency=0)  # the admitted jobs wait on their activity: nothing else ends
    turns_only.start()
    try:
        for i in range(3):
            client.start_orchestration(f"a{i}", "Job", {"key": "a", "tag": f"a{i}"}, key="a")
        client.start_orchestration("b0", "Job", {"key": "b", "tag": "b0"}, key="b")
        for admitted in ("a0", "b0"):
            wait_for_kind(client, admitted, "ActivityScheduled")
        for held in ("a1", "a2"):
            status = client.get_status(held)
            assert status.status == "Running" and kinds(client, held) == []  # no turn ran
            assert status.waiting_reason == "held by limit Job(key_limit=1) for key 'a'"
        client.cancel_instance("a1", "not needed")  # a held start is not left waiting for a slot to be cancelled
        assert client.wait_for_orchestration("a1", WAIT_MS).status == "Failed"
        assert client.get_status("a2").waiting_reason == "held by limit Job(key_limit=1) for key 'a'"
    finally:
        turns_only.shutdown(timeout_ms=2000)
    rec = Recorder()
    restarted = runtime()
    restarted.register_activity("Call", rec.activity())
    restarted.start()
    try:
        for done in ("a0", "a2", "b0"):
            assert client.wait_for_orchestration(done, WAIT_MS).status == "Completed"
        assert rec.most == {"a": 1, "b": 1} and rec.finished.index("a0") < rec.finished.index("a2")
        assert [limit.describe() for limit in restarted.store.get_start_limits()] == ["Job(key_limit=1)"]
    finally:
        restarted.shutdown(timeout_ms=2000)


def test_limits_and_flow_options_refuse_bad_input(runtime_factory, client):
    rt = runtime_factory(start=False)
    with pytest.raises(ValueError, match="needs limit=, key_limit=, rate= or key_rate="):
        rt.limit("Call")
    with pytest.raises(ValueError, match="rate of activity 'Call' must read 'N/s', 'N/m' or 'N/h'"):
        rt.limit("Call", rate="10/d")
    with pytest.raises(ValueError, match="key_rate of activity 'Call' allows from 1 to 100000"):
        rt.limit("Call", key_rate="0/s")
    with pytest.raises(TypeError, match="rate of activity 'Call' must be a string like '10/s'"):
        rt.limit("Call", rate=10)
    with pytest.raises(ValueError, match="key_limit of activity 'Call' must be from 1 to"):
        rt.limit("Call", key_limit=0)
    with pytest.raises(TypeError, match="limit of activity 'Call' must be a positive int, got True"):
        rt.limit("Call", limit=True)
    with pytest.raises(ValueError, match="must not be empty"):
        rt.limit("", limit=1)
    with pytest.raises(ValueError, match="limit_starts\\('Job'\\) needs limit=, key_limit= or both"):
        rt.limit_starts("Job")
    with pytest.raises(TypeError, match="key_limit of orchestration 'Job' must be a positive int"):
        rt.limit_starts("Job", key_limit=1.5)
    assert rt.limits == {} and rt.start_limits == {}
    with pytest.raises(ValueError, match="flow-control key must not contain NUL"):
        client.start_orchestration("bad-key", "Job", None, key="a\x00b")
    assert client.get_status("bad-key").status == "NotFound"  # refused before anything was written
