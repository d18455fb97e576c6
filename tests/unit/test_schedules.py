"""The pure schedule rules (duroxide_celery/schedules.py): ticks of cron and interval schedules (DST in
America/New_York both ways), jitter, instance ids, catch-up and overlap decisions, and validation messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from duroxide_celery import schedules as rules
from duroxide_celery.schedules import Cadence, format_tick, instance_id_for, jitter_for, make_spec, plan_round


def ms(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)


def spec(**kw):
    kw.setdefault("schedule_id", "s")
    kw.setdefault("orchestration", "O")
    kw.setdefault("input", "null")
    if "cron" not in kw and "every_ms" not in kw:
        kw["every_ms"] = 60_000
    return make_spec(kw.pop("schedule_id"), kw.pop("orchestration"), kw.pop("input"), **kw)


def ticks(s, after: int, n: int) -> list[str]:
    cadence, out, t = Cadence(s), [], after
    for _ in range(n):
        t = cadence.after(t)
        out.append(format_tick(t))
    return out


# -- ticks -------------------------------------------------------------------------------------------------------
def test_every_ms_ticks_are_anchored_at_the_epoch_or_start_at():
    s = spec(every_ms=15_000)
    assert ticks(s, ms(2026, 1, 1, 0, 0, 7), 3) == [
        "2026-01-01T00:00:15Z",
        "2026-01-01T00:00:30Z",
        "2026-01-01T00:00:45Z",
    ]
    anchored = spec(every_ms=15_000, start_at=ms(2026, 1, 1) + 1234, end_at=ms(2026, 1, 1) + 31_234)
    cadence = Cadence(anchored)
    assert cadence.after(0) == ms(2026, 1, 1) + 1234  # nothing before start_at
    assert cadence.upcoming(0, 10) == [ms(2026, 1, 1) + 1234 + k * 15_000 for k in range(3)]  # end_at inclusive
    assert cadence.after(ms(2026, 1, 1) + 31_234) is None
    assert format_tick(ms(2026, 1, 1) + 1234) == "2026-01-01T00:00:01.234Z"


def test_cron_in_utc_and_in_a_named_zone():
    weekdays = spec(cron="0 9 * * 1-5")
    assert ticks(weekdays, ms(2026, 12, 4, 10), 2) == ["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"]  # Fri -> Mon
    paris = spec(cron="0 9 * * *", timezone="Europe/Paris")
    assert ticks(paris, ms(2026, 7, 1), 1) == ["2026-07-01T07:00:00Z"]  # CEST, UTC+2
    assert ticks(paris, ms(2026, 12, 1), 1) == ["2026-12-01T08:00:00Z"]  # CET, UTC+1
    assert ticks(spec(cron="@daily"), ms(2026, 5, 5, 12), 1) == ["2026-05-06T00:00:00Z"]


def test_spring_forward_runs_a_skipped_local_time_once_right_after_the_jump():
    # 2026-03-08 in New York: 02:00 EST becomes 03:00 EDT; 02:30 does not exist that day.
    s = spec(cron="30 2 * * *", timezone="America/New_York")
    assert ticks(s, ms(2026, 3, 6, 12), 4) == [
        "2026-03-07T07:30:00Z",  # 02:30 EST
        "2026-03-08T07:00:00Z",  # 03:00 EDT: once, at the jump
        "2026-03-09T06:30:00Z",  # 02:30 EDT
        "2026-03-10T06:30:00Z",
    ]
    both = spec(cron="0,30 2 * * *", timezone="America/New_York")
    assert ticks(both, ms(2026, 3, 8, 6), 2) == ["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"]


def test_fall_back_runs_a_fixed_local_time_once_and_a_periodic_cron_in_real_time():
    # 2026-11-01 in New York: 02:00 EDT becomes 01:00 EST; 01:00-01:59 happens twice.
    daily = spec(cron="30 1 * * *", timezone="America/New_York")
    assert ticks(daily, ms(2026, 10, 31, 12), 3) == [
        "2026-11-01T05:30:00Z",  # 01:30 EDT, the first occurrence only
        "2026-11-02T06:30:00Z",  # 01:30 EST
        "2026-11-03T06:30:00Z",
    ]
    cadence = Cadence(daily)
    assert format_tick(cadence.before(ms(2026, 11, 2))) == "2026-11-01T05:30:00Z"  # before() skips the repeat too
    half_hourly = spec(cron="*/30 * * * *", timezone="America/New_York")
    assert ticks(half_hourly, ms(2026, 11, 1, 4, 45), 5) == [
        "2026-11-01T05:00:00Z",  # 01:00 EDT
        "2026-11-01T05:30:00Z",  # 01:30 EDT
        "2026-11-01T06:00:00Z",  # 01:00 EST
        "2026-11-01T06:30:00Z",  # 01:30 EST
        "2026-11-01T07:00:00Z",  # 02:00 EST
    ]


@pytest.mark.parametrize(
    "kw",
    [
        {"cron": "*/30 * * * *", "timezone": "America/New_York"},
        {"cron": "30 1 * * *", "timezone": "America/New_York"},
        {"cron": "30 2 * * *", "timezone": "America/New_York"},
        {"every_ms": 7_000},
    ],
)
def test_before_and_after_agree_across_dst(kw):
    s = spec(**kw)
    cadence = Cadence(s)
    for start in (ms(2026, 3, 7, 20), ms(2026, 10, 31, 20)):
        forward = cadence.upcoming(start, 60)
        backward = [forward[-1]]
        while len(backward) < len(forward):
            backward.append(cadence.before(backward[-1]))
        assert backward[::-1] == forward
        assert forward == sorted(set(forward))


def test_count_is_exact_for_intervals_and_bounded_for_cron():
    every = Cadence(spec(every_ms=1000))
    assert every.count(ms(2025, 1, 1), ms(2026, 1, 1)) == (365 * 86400 + 1, True)
    minutely = Cadence(spec(cron="* * * * *"))
    assert minutely.count(ms(2026, 1, 1), ms(2026, 1, 1, 1)) == (61, True)
    assert minutely.count(ms(2025, 1, 1), ms(2026, 1, 1)) == (rules.MAX_COUNTED_TICKS, False)


def test_jitter_is_deterministic_bounded_and_spread():
    values = [jitter_for("nightly", ms(2026, 1, d), 60_000) for d in range(1, 29)]
    assert values == [jitter_for("nightly", ms(2026, 1, d), 60_000) for d in range(1, 29)]
    assert all(0 <= v <= 60_000 for v in values)
    assert len(set(values)) > 20
    assert jitter_for("other", ms(2026, 1, 1), 60_000) != values[0]
    assert jitter_for("nightly", ms(2026, 1, 1), 0) == 0
    s = spec(every_ms=60_000, jitter_ms=30_000, schedule_id="nightly")
    tick = ms(2026, 1, 1, 3)
    assert Cadence(s).due(tick) == tick + jitter_for("nightly", tick, 30_000)


def test_instance_ids():
    assert instance_id_for("nightly", ms(2026, 12, 2, 14)) == "nightly@2026-12-02T14:00:00Z"
    assert instance_id_for("x", ms(2026, 12, 2, 14) + 5) == "x@2026-12-02T14:00:00.005Z"
    longest = "a" * rules.MAX_SCHEDULE_ID_CHARS
    assert len(instance_id_for(longest, ms(2026, 12, 2, 14) + 5)) == 512


# -- rounds --------------------------------------------------------------------------------------------------------
T0 = ms(2026, 6, 1, 12)


def actions(plan):
    return [(format_tick(s.fire_at), s.action, s.count) for s in plan.steps]


def test_a_due_tick_starts_and_the_next_is_planned():
    s = spec(every_ms=60_000)
    assert plan_round(s, T0, None, None, T0 - 1).steps == []  # not due yet
    plan = plan_round(s, T0, None, None, T0 + 50)
    assert actions(plan) == [("2026-06-01T12:00:00Z", "started", 1)]
    assert plan.starts == [T0]
    assert (plan.next_fire_at, plan.due_at) == (T0 + 60_000, T0 + 60_000)


def test_end_at_stops_the_schedule():
    s = spec(every_ms=60_000, start_at=T0, end_at=T0 + 60_000)
    plan = plan_round(s, T0 + 60_000, None, None, T0 + 60_000)
    assert plan.starts == [T0 + 60_000] and plan.next_fire_at is None and plan.due_at is None


def test_catch_up_with_skip_runs_only_the_latest_tick_in_the_window():
    s = spec(every_ms=60_000, catchup_window_ms=10 * 60_000)
    now = T0 + 30 * 60_000  # 30 minutes of downtime: ticks 12:00 .. 12:30 are due; the window starts at 12:20
    plan = plan_round(s, T0, None, None, now)
    assert actions(plan) == [
        ("2026-06-01T12:00:00Z", "skipped", 20),  # 12:00 .. 12:19: due more than 10 minutes ago
        ("2026-06-01T12:20:00Z", "skipped", 10),  # 12:20 .. 12:29: superseded by 12:30
        ("2026-06-01T12:30:00Z", "started", 1),
    ]
    assert "catchup_window_ms=600000" in plan.steps[0].detail
    assert "superseded by the later tick 2026-06-01T12:30:00Z" in plan.steps[1].detail
    assert plan.next_fire_at == T0 + 31 * 60_000


def test_catch_up_with_allow_all_starts_every_tick_in_the_window_in_order():
    s = spec(every_ms=60_000, catchup_window_ms=3 * 60_000 + 500, overlap="allow_all")
    plan = plan_round(s, T0, None, "s@previous", T0 + 5 * 60_000)
    assert actions(plan) == [
        ("2026-06-01T12:00:00Z", "skipped", 2),
        ("2026-06-01T12:02:00Z", "started", 1),
        ("2026-06-01T12:03:00Z", "started", 1),
        ("2026-06-01T12:04:00Z", "started", 1),
        ("2026-06-01T12:05:00Z", "started", 1),
    ]


def test_allow_all_catch_up_is_bounded_per_round():
    s = spec(every_ms=1000, overlap="allow_all")
    plan = plan_round(s, T0, None, None, T0 + 3_600_000)
    assert len(plan.starts) == rules.MAX_STARTS_PER_ROUND
    assert plan.next_fire_at == T0 + rules.MAX_STARTS_PER_ROUND * 1000
    assert plan.due_at <= T0 + 3_600_000  # still due: the next round goes on


def test_a_year_of_downtime_is_one_record():
    s = spec(every_ms=1000, catchup_window_ms=60_000)
    now = T0 + 365 * 86_400_000
    plan = plan_round(s, T0, None, None, now)
    assert [(a, c) for _, a, c in actions(plan)] == [("skipped", 365 * 86_400 - 60), ("skipped", 60), ("started", 1)]
    cron = spec(cron="* * * * *", catchup_window_ms=60_000)
    plan = plan_round(cron, T0, None, None, now)
    assert plan.steps[0].count >= rules.MAX_COUNTED_TICKS and plan.steps[0].detail.startswith("at least")
    assert plan.starts == [now] and plan.next_fire_at == now + 60_000


@pytest.mark.parametrize(
    "overlap, expected_action, cancel, buffered",
    [
        ("skip", "skipped", False, None),
        ("buffer_one", "buffered", False, T0),
        ("allow_all", "started", False, None),
        ("cancel_previous", "started", True, None),
    ],
)
def test_overlap_policies_while_the_previous_run_runs(overlap, expected_action, cancel, buffered):
    s = spec(every_ms=60_000, overlap=overlap)
    plan = plan_round(s, T0, None, "s@prev", T0)
    assert [step.action for step in plan.steps] == [expected_action]
    assert plan.cancel_previous is cancel
    assert plan.buffered_fire_at == buffered
    if overlap == "skip":
        assert plan.steps[0].detail == "previous run s@prev still running (overlap=skip)"
    if buffered is not None:
        assert plan.due_at == T0 + rules.BUFFER_RECHECK_MS  # looked at again soon, to start it when prev ends


def test_buffer_one_keeps_one_tick_and_starts_it_when_the_previous_run_ended():
    s = spec(every_ms=60_000, overlap="buffer_one")
    plan = plan_round(s, T0 + 60_000, T0, "s@prev", T0 + 60_000)  # one buffered already, still running
    assert actions(plan) == [("2026-06-01T12:01:00Z", "skipped", 1)]
    assert plan.buffered_fire_at == T0
    plan = plan_round(s, T0 + 120_000, T0, None, T0 + 61_000)  # the previous run ended; next tick not due
    assert actions(plan) == [("2026-06-01T12:00:00Z", "started", 1)]
    assert plan.buffered_fire_at is None and plan.due_at == T0 + 120_000


def test_trigger_applies_the_policy_unless_overridden():
    s = spec(every_ms=60_000, overlap="skip")
    plan = rules.plan_trigger(s, T0, None, "s@prev", T0 + 5)
    assert [step.action for step in plan.steps] == ["skipped"] and plan.next_fire_at == T0
    plan = rules.plan_trigger(s, T0, None, "s@prev", T0 + 5, overlap="allow_all")
    assert plan.starts == [T0 + 5] and plan.steps[0].action == "triggered"
    assert rules.plan_trigger(s, T0, None, None, T0 + 5).starts == [T0 + 5]


# -- validation ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"cron": "61 * * * *"}, ValueError, "is not a valid cron expression"),
        ({"cron": "* * *"}, ValueError, "must have 5 fields"),
        ({"cron": "0 0 * * * *"}, ValueError, "must have 5 fields"),
        ({"cron": "@sometimes"}, ValueError, "unknown alias"),
        ({"cron": "0 0 31 2 *"}, ValueError, "never fires"),
        ({"cron": "0 0 1 1 *", "start_at": ms(2026, 1, 2), "end_at": ms(2026, 12, 31)}, ValueError, "has no tick"),
        ({"cron": 5}, TypeError, "cron must be a str"),
        ({"cron": "* * * * *", "every_ms": 1000}, ValueError, "exactly one of cron= and every_ms="),
        ({"every_ms": 999}, ValueError, "every_ms must be at least 1000 ms"),
        ({"every_ms": 1.5}, ValueError, "every_ms must be a whole number"),
        ({"every_ms": 5000, "timezone": "Europe/Paris"}, ValueError, "timezone applies to cron schedules"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, ValueError, "unknown timezone 'Mars/Olympus'"),
        ({"cron": "* * * * *", "timezone": ""}, ValueError, "is not an IANA time zone name"),
        ({"overlap": "queue"}, ValueError, "overlap must be one of skip, buffer_one, allow_all, cancel_previous"),
        ({"catchup_window_ms": -1}, ValueError, "catchup_window_ms must be at least 1000 ms"),
        ({"jitter_ms": -5}, ValueError, "jitter_ms must be at least 0 ms"),
        ({"every_ms": 1000, "jitter_ms": 1000}, ValueError, "jitter_ms (1000) must be less than every_ms (1000)"),
        ({"start_at": ms(2027, 1, 1), "end_at": ms(2026, 1, 1)}, ValueError, "end_at (2026-01-01T00:00:00Z) must be"),
        ({"start_at": datetime(2026, 1, 1)}, ValueError, "start_at must be timezone-aware"),
        ({"end_at": "tomorrow"}, TypeError, "end_at must be a timezone-aware datetime or epoch milliseconds"),
        ({"schedule_id": ""}, ValueError, "schedule id must not be empty"),
        ({"schedule_id": "a::sub::b"}, ValueError, "reserved sub-orchestration marker"),
        ({"schedule_id": "x" * 488}, ValueError, "schedule id is 488 characters; the limit is 487"),
        ({"schedule_id": "a\x00b"}, ValueError, "schedule id must not contain NUL"),
        ({"schedule_id": 7}, TypeError, "schedule id must be a str"),
        ({"orchestration": " "}, ValueError, "orchestration name must be a non-empty string"),
        ({"version": ""}, ValueError, "version must be a non-empty string or None"),
    ],
)
def test_bad_specs_are_refused_with_a_precise_message(kw, error, message):
    with pytest.raises(error) as raised:
        spec(**kw)
    assert message in str(raised.value)


def test_aware_datetimes_and_epoch_ms_are_the_same_instant():
    eastern = timezone(timedelta(hours=-5))
    a = spec(start_at=datetime(2026, 1, 1, 7, tzinfo=eastern))
    b = spec(start_at=ms(2026, 1, 1, 12))
    assert a.start_at == b.start_at == ms(2026, 1, 1, 12)
    assert spec(cron="  0   9 * *  1-5 ").cron == "0 9 * * 1-5"
