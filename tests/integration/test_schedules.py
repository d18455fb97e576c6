"""Durable schedules on the suite's store (SQLite, or PostgreSQL with DUROXIDE_TEST_DB=postgres), with a real
embedded runtime running the instances they start.

Firing is driven with an explicit clock: `fire_due_schedules(store, publisher, now=...)`, the function the timer
loop calls, with ticks in 2030 so that the runtime's own scheduler thread (on the real clock) never finds them due.
One test lets that thread fire an every-second schedule on the real clock.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from duroxide_celery import Client, ScheduleAlreadyExists, ScheduleNotFound
from duroxide_celery.tasks.recovery import fire_due_schedules

from .helpers import WAIT_MS, kinds, wait_for_kind, wait_until

#: 2030-01-01T00:00:00Z: every schedule here starts then, far ahead of the real clock.
BASE = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000


def iid(schedule_id: str, ms: int) -> str:
    text = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{schedule_id}@{text}"


def echo(ctx, value):
    return value


def hold(ctx, value):
    """Runs until it receives the event "go": a run still in progress when the next tick comes."""
    yield ctx.wait_for_event("go")
    return value


@pytest.fixture
def rt(runtime_factory):
    return runtime_factory({"Echo": echo, "Hold": hold})


def fire(rt, now: int) -> int | None:
    return fire_due_schedules(rt.store, rt.publisher, now=now)


def runs(client: Client, schedule_id: str) -> list[tuple[str, str, int, str | None]]:
    """(fire time, action, ticks, instance id) oldest first."""
    info = client.get_schedule(schedule_id)
    return [
        (datetime.fromtimestamp(r.fire_at / 1000, tz=UTC).strftime("%H:%M"), r.action, r.ticks, r.instance_id)
        for r in reversed(info.recent_runs)
    ]


def test_create_get_list_update_pause_resume_delete(client, rt):
    info = client.create_schedule(
        "report", "Echo", {"n": 1}, cron="*/15 * * * *", start_at=BASE, overlap="buffer_one", jitter_ms=0
    )
    assert (info.schedule_id, info.orchestration_name, info.input, info.cron, info.every_ms) == (
        "report",
        "Echo",
        {"n": 1},
        "*/15 * * * *",
        None,
    )
    assert info.next_fire_times == [BASE + k * 15 * MINUTE for k in range(5)]
    assert (info.paused, info.overlap, info.timezone, info.recent_runs, info.skipped_count) == (
        False,
        "buffer_one",
        "UTC",
        [],
        0,
    )
    with pytest.raises(ScheduleAlreadyExists, match="schedule 'report' already exists"):
        client.create_schedule("report", "Echo", every_ms=5000)
    client.create_schedule("another", "Echo", every_ms=3_600_000, start_at=BASE, paused=True)
    assert [(s.schedule_id, s.paused, s.next_fire_times) for s in client.list_schedules()] == [
        ("another", True, [BASE]),
        ("report", False, [BASE]),
    ]

    updated = client.update_schedule("report", every_ms=600_000, input="new")
    assert (updated.cron, updated.every_ms, updated.input, updated.overlap) == (None, 600_000, "new", "buffer_one")
    assert updated.next_fire_times[:2] == [BASE, BASE + 600_000]

    client.pause_schedule("report")
    assert client.get_schedule("report").paused is True
    assert fire(rt, BASE + MINUTE) is None  # both paused: nothing is due, ever
    assert client.list_all_instances() == []
    client.resume_schedule("another")
    assert fire(rt, BASE + 1) == BASE + 3_600_000  # resumed after its first tick: the next one is an hour later
    assert [r[1] for r in runs(client, "another")] == ["started"]
    assert client.wait_for_orchestration(iid("another", BASE), WAIT_MS).status == "Completed"

    client.delete_schedule("report")
    assert client.get_schedule("report") is None
    assert [s.schedule_id for s in client.list_schedules()] == ["another"]
    for call in (client.delete_schedule, client.pause_schedule, client.resume_schedule, client.trigger_schedule):
        with pytest.raises(ScheduleNotFound, match="schedule 'report' not found"):
            call("report")
    with pytest.raises(ScheduleNotFound):
        client.update_schedule("report", input=2)


def test_bad_input_is_refused_at_the_call_and_writes_nothing(client):
    with pytest.raises(TypeError, match="schedule input value is not JSON-serializable"):
        client.create_schedule("s", "Echo", {1, 2}, every_ms=1000)
    with pytest.raises(ValueError, match="unknown timezone 'Nowhere/City'"):
        client.create_schedule("s", "Echo", cron="0 * * * *", timezone="Nowhere/City")
    with pytest.raises(ValueError, match="give exactly one of cron= and every_ms="):
        client.create_schedule("s", "Echo")
    with pytest.raises(ValueError, match=r"end_at \(2020-01-01T00:00:00Z\) leaves the schedule no tick after now"):
        client.create_schedule("s", "Echo", every_ms=1000, end_at=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(TypeError, match="paused must be a bool"):
        client.create_schedule("s", "Echo", every_ms=1000, paused="yes")
    assert client.list_schedules() == []
    client.create_schedule("s", "Echo", every_ms=60_000, start_at=BASE)
    with pytest.raises(TypeError, match=r"unknown field\(s\) paused \(use pause_schedule/resume_schedule\)"):
        client.update_schedule("s", paused=True)
    with pytest.raises(ValueError, match="catchup_window_ms must be at least 1000 ms"):
        client.update_schedule("s", catchup_window_ms=5)
    with pytest.raises(ValueError, match="is not a valid cron expression"):
        client.update_schedule("s", cron="99 * * * *")
    with pytest.raises(ValueError, match="overlap must be one of"):
        client.trigger_schedule("s", overlap="sometimes")
    info = client.get_schedule("s")
    assert (info.every_ms, info.cron, info.catchup_window_ms, info.next_fire_times[0]) == (
        60_000,
        None,
        365 * 86_400_000,
        BASE,
    )


def test_each_tick_starts_one_instance_with_a_deterministic_id(client, rt):
    client.create_schedule("tick", "Echo", {"hello": 1}, every_ms=MINUTE, start_at=BASE)
    assert fire(rt, BASE - 1) == BASE  # not yet due: nothing started
    assert client.list_all_instances() == []
    assert fire(rt, BASE) == BASE + MINUTE
    assert fire(rt, BASE + 10) == BASE + MINUTE  # the same tick again: nothing more
    first, second = iid("tick", BASE), iid("tick", BASE + MINUTE)
    assert first == "tick@2030-01-01T00:00:00Z"
    assert client.wait_for_orchestration(first, WAIT_MS).status == "Completed"  # else overlap=skip skips the next
    assert fire(rt, BASE + MINUTE + 30) == BASE + 2 * MINUTE
    assert sorted(client.list_all_instances()) == [first, second]
    for instance_id in (first, second):
        result = client.wait_for_orchestration(instance_id, WAIT_MS)
        assert (result.status, result.output) == ("Completed", {"hello": 1})
        assert kinds(client, instance_id)[0] == "OrchestrationStarted"
    info = client.get_schedule("tick")
    assert runs(client, "tick") == [("00:00", "started", 1, first), ("00:01", "started", 1, second)]
    assert [r.status for r in info.recent_runs] == ["Completed", "Completed"]
    assert (info.last_instance_id, info.last_fire_at) == (second, BASE + MINUTE)


def test_two_concurrent_firers_start_each_tick_once(store, client, rt):
    # Two more providers: separate connection pools, as two beats have.
    others = [store.open(), store.open()]
    for n in range(8):
        client.create_schedule(f"c{n}", "Echo", n, every_ms=MINUTE, start_at=BASE, overlap="allow_all")
    now = BASE + 4 * MINUTE  # five ticks due per schedule
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def firer(provider):
        try:
            barrier.wait()
            fire_due_schedules(provider.store, rt.publisher, now=now)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=firer, args=(p,)) for p in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    expected = sorted(iid(f"c{n}", BASE + k * MINUTE) for n in range(8) for k in range(5))
    assert sorted(client.list_all_instances()) == expected
    for n in range(8):
        assert [(a, c) for _, a, c, _ in runs(client, f"c{n}")] == [("started", 1)] * 5
    wait_until(lambda: len(client.list_instances_by_status("Completed")) == 40, what="40 completed instances")


def test_catch_up_after_downtime_per_policy(client, rt):
    client.create_schedule("latest", "Echo", 1, every_ms=MINUTE, start_at=BASE, catchup_window_ms=5 * MINUTE)
    client.create_schedule(
        "all", "Echo", 2, every_ms=MINUTE, start_at=BASE, catchup_window_ms=5 * MINUTE, overlap="allow_all"
    )
    fire(rt, BASE)  # 00:00 runs, then the loop is down until 00:30
    for sid in ("latest", "all"):
        assert client.wait_for_orchestration(iid(sid, BASE), WAIT_MS).status == "Completed"
    fire(rt, BASE + 30 * MINUTE)
    assert runs(client, "latest") == [
        ("00:00", "started", 1, iid("latest", BASE)),
        ("00:01", "skipped", 24, None),  # 00:01 .. 00:24: older than the 5-minute window
        ("00:25", "skipped", 5, None),  # 00:25 .. 00:29: superseded by 00:30
        ("00:30", "started", 1, iid("latest", BASE + 30 * MINUTE)),
    ]
    assert client.get_schedule("latest").skipped_count == 29
    assert runs(client, "all")[:2] == [("00:00", "started", 1, iid("all", BASE)), ("00:01", "skipped", 24, None)]
    assert [(t, a) for t, a, _, _ in runs(client, "all")[2:]] == [
        (f"00:{m}", "started") for m in range(25, 31)
    ]  # every tick in the window, in order
    detail = client.get_schedule("all").recent_runs[-2].detail
    assert detail == "24 ticks missed: due more than catchup_window_ms=300000 ago"


def test_overlap_skip_and_buffer_one(client, rt):
    client.create_schedule("skipper", "Hold", "s", every_ms=MINUTE, start_at=BASE)
    client.create_schedule("buffer", "Hold", "b", every_ms=MINUTE, start_at=BASE, overlap="buffer_one")
    fire(rt, BASE)
    for sid in ("skipper", "buffer"):
        wait_for_kind(client, iid(sid, BASE), "ExternalSubscribed")
    fire(rt, BASE + MINUTE)
    fire(rt, BASE + 2 * MINUTE)
    assert [(t, a) for t, a, _, _ in runs(client, "skipper")] == [
        ("00:00", "started"),
        ("00:01", "skipped"),
        ("00:02", "skipped"),
    ]
    assert client.get_schedule("skipper").recent_runs[0].detail == (
        f"previous run {iid('skipper', BASE)} still running (overlap=skip)"
    )
    assert [(t, a) for t, a, _, _ in runs(client, "buffer")] == [
        ("00:00", "started"),
        ("00:01", "buffered"),
        ("00:02", "skipped"),
    ]
    assert client.get_schedule("buffer").buffered_fire_at == BASE + MINUTE

    client.raise_event(iid("buffer", BASE), "go")
    assert client.wait_for_orchestration(iid("buffer", BASE), WAIT_MS).status == "Completed"
    fire(rt, BASE + 2 * MINUTE + 1500)  # the buffer is looked at again: the previous run has ended
    assert runs(client, "buffer")[-1] == ("00:01", "started", 1, iid("buffer", BASE + MINUTE))
    assert client.get_schedule("buffer").buffered_fire_at is None
    assert sorted(client.list_all_instances()) == sorted(
        [iid("skipper", BASE), iid("buffer", BASE), iid("buffer", BASE + MINUTE)]
    )


def test_overlap_cancel_previous_and_trigger(client, rt):
    client.create_schedule("cancel", "Hold", "c", every_ms=MINUTE, start_at=BASE, overlap="cancel_previous")
    fire(rt, BASE)
    first = iid("cancel", BASE)
    wait_for_kind(client, first, "ExternalSubscribed")
    fire(rt, BASE + MINUTE)
    result = client.wait_for_orchestration(first, WAIT_MS)
    assert result.status == "Failed" and "overlap=cancel_previous" in result.error
    second = iid("cancel", BASE + MINUTE)
    assert client.get_status(second).status == "Running"
    assert runs(client, "cancel")[-1] == ("00:01", "started", 1, second)

    # trigger: the schedule's policy applies (cancel the running one), its next tick does not move
    triggered = client.trigger_schedule("cancel")
    assert triggered is not None and triggered.startswith("cancel@") and triggered.endswith("Z")
    assert client.wait_for_orchestration(second, WAIT_MS).status == "Failed"
    info = client.get_schedule("cancel")
    assert (info.recent_runs[0].action, info.recent_runs[0].instance_id) == ("triggered", triggered)
    assert info.next_fire_times[0] == BASE + 2 * MINUTE

    client.create_schedule("once", "Hold", "o", every_ms=MINUTE, start_at=BASE)  # overlap=skip
    running = client.trigger_schedule("once")
    wait_for_kind(client, running, "ExternalSubscribed")
    assert client.trigger_schedule("once") is None  # skipped: its previous run is still running
    assert client.get_schedule("once").recent_runs[0].action == "skipped"
    forced = client.trigger_schedule("once", overlap="allow_all")
    assert forced is not None and client.get_status(forced).status == "Running"


def test_the_embedded_scheduler_fires_schedules_on_the_real_clock(client, rt):
    client.create_schedule("live", "Echo", "now", every_ms=1000)
    done = wait_until(
        lambda: [r for r in client.get_schedule("live").recent_runs if r.status == "Completed"],
        what="a tick of 'live' started by the scheduler thread and completed",
    )
    assert done[0].instance_id.startswith("live@") and done[0].action == "started"
    assert client.get_status(done[0].instance_id).output == "now"
    client.delete_schedule("live")


def test_dst_transitions_in_new_york_start_one_instance_per_local_time(client, rt):
    # 2027-03-14: 02:00 EST jumps to 03:00 EDT. 2027-11-07: 02:00 EDT falls back to 01:00 EST.
    def utc(*parts: int) -> int:
        return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)

    client.create_schedule(
        "spring", "Echo", cron="30 2 * * *", timezone="America/New_York", start_at=utc(2027, 3, 13), overlap="allow_all"
    )
    for day in range(13, 16):  # one round a day, after the day's tick
        fire(rt, utc(2027, 3, day, 12))
    client.delete_schedule("spring")  # else the autumn rounds would catch its whole summer up
    client.create_schedule(
        "fall", "Echo", cron="30 1 * * *", timezone="America/New_York", start_at=utc(2027, 11, 6), overlap="allow_all"
    )
    for day in range(6, 9):
        fire(rt, utc(2027, 11, day, 12))
    assert sorted(i for i in client.list_all_instances() if i.startswith("spring@")) == [
        "spring@2027-03-13T07:30:00Z",  # 02:30 EST
        "spring@2027-03-14T07:00:00Z",  # 02:30 does not exist: 03:00 EDT, once
        "spring@2027-03-15T06:30:00Z",  # 02:30 EDT
    ]
    assert sorted(i for i in client.list_all_instances() if i.startswith("fall@")) == [
        "fall@2027-11-06T05:30:00Z",  # 01:30 EDT
        "fall@2027-11-07T05:30:00Z",  # 01:30 happens twice: the first (EDT) only
        "fall@2027-11-08T06:30:00Z",  # 01:30 EST
    ]


def test_a_broken_schedule_is_postponed_and_the_others_still_fire(client, rt, caplog):
    import sqlalchemy as sa

    client.create_schedule("broken", "Echo", every_ms=MINUTE, start_at=BASE)
    client.create_schedule("fine", "Echo", every_ms=MINUTE, start_at=BASE)
    with rt.store.engine.begin() as conn:  # a zone the system no longer knows (e.g. tzdata changed under it)
        conn.execute(sa.text("UPDATE dx_schedules SET timezone = 'Gone/Zone' WHERE schedule_id = 'broken'"))
    fire(rt, BASE)
    assert client.list_all_instances() == [iid("fine", BASE)]
    assert "schedule broken: firing failed; retrying in 60 s" in caplog.text
    with rt.store.engine.connect() as conn:
        due = conn.execute(sa.text("SELECT due_at FROM dx_schedules WHERE schedule_id = 'broken'")).scalar()
    assert due == BASE + 60_000
    assert client.get_schedule("broken").next_fire_times == []  # still readable, as is the list
    assert [s.schedule_id for s in client.list_schedules()] == ["broken", "fine"]


def test_run_records_are_bounded_and_the_skip_count_is_not(client, rt):
    from duroxide_celery.providers.schedules import KEEP_RUNS

    client.create_schedule("busy", "Hold", every_ms=MINUTE, start_at=BASE)
    fire(rt, BASE)
    wait_for_kind(client, iid("busy", BASE), "ExternalSubscribed")
    for k in range(1, KEEP_RUNS + 6):  # every later tick finds the first run still running
        fire(rt, BASE + k * MINUTE)
    info = client.get_schedule("busy")
    assert len(info.recent_runs) == KEEP_RUNS
    assert info.recent_runs[0].fire_at == BASE + (KEEP_RUNS + 5) * MINUTE  # the newest kept
    assert {r.action for r in info.recent_runs} == {"skipped"}  # the oldest, the started one, went first
    assert info.skipped_count == KEEP_RUNS + 5
    assert info.last_instance_id == iid("busy", BASE)
