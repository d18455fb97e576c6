"""Durable schedules fired by real `celery beat` processes (duroxide's TimerScheduler) on Redis and PostgreSQL,
with workers running what they start: examples/shop's ApprovalWithTimeout (ends on a durable timer, which beat fires
too) and Monitor (one activity).

- Two beats at once: every tick of an every-second schedule is claimed once. The run records (one per tick, with
  its instance) must cover the ticks without a gap or a repeat, and every started instance completes.
- Beat killed across missed ticks, then restarted: ticks later than the catch-up window are recorded as missed,
  the ones inside it are collapsed into the latest (overlap=skip), and the schedule goes on from there.
"""

from __future__ import annotations

import time
from typing import Any

from .conftest import Cluster

ORCHESTRATION = "ApprovalWithTimeout"
INPUT = {"timeout_ms": 1, "escalate_to": "nobody"}


def _records(cluster: Cluster, schedule_id: str) -> list[tuple[int, str, int, str | None, str | None]]:
    """(fire_at, action, ticks, instance id, detail), oldest first."""
    return [
        tuple(row)
        for row in cluster.sql(
            "SELECT fire_at, action, ticks, instance_id, detail FROM dx_schedule_runs "
            "WHERE schedule_id = :s ORDER BY id",
            s=schedule_id,
        )
    ]


def _assert_contiguous(records: list[Any], every_ms: int) -> None:
    """Each tick has exactly one record: the records, in tick order, follow each other without gap or overlap."""
    ordered = sorted(records, key=lambda r: r[0])
    for before, after in zip(ordered, ordered[1:]):
        assert after[0] == before[0] + before[2] * every_ms, (before, after, ordered)


def test_two_beats_start_each_tick_once(redis_cluster: Cluster) -> None:
    cluster = redis_cluster
    cluster.worker("orch")
    cluster.beat()
    cluster.beat()
    cluster.client.create_schedule("twin", ORCHESTRATION, INPUT, every_ms=1000, overlap="allow_all")
    cluster.wait_for(lambda: len(_records(cluster, "twin")) >= 6, "six ticks of 'twin' started", timeout_s=60)
    cluster.client.pause_schedule("twin")
    records = _records(cluster, "twin")
    assert all(action == "started" and ticks == 1 for _, action, ticks, _, _ in records), records
    assert len({r[0] for r in records}) == len(records)  # no tick claimed twice
    _assert_contiguous(records, 1000)
    ids = [r[3] for r in records]
    assert all(
        i == f"twin@{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(r[0] / 1000))}" for i, r in zip(ids, records)
    )
    cluster.wait_all_terminal(ids)
    assert set(cluster.statuses(ids).values()) == {("Completed", None)}
    assert cluster.scalar("SELECT count(*) FROM dx_instances WHERE instance_id LIKE 'twin@%'") == len(ids)


def test_beat_down_across_missed_ticks_catches_up_per_policy(redis_cluster: Cluster) -> None:
    cluster = redis_cluster
    cluster.worker("orch")
    cluster.worker("act")
    beat = cluster.beat()
    # Monitor ends without a timer: the run started just before the outage has ended when beat comes back.
    monitor = {"target": "db", "rounds": 1}
    cluster.client.create_schedule("late", "Monitor", monitor, every_ms=1000, catchup_window_ms=2000)
    cluster.wait_for(lambda: len(_records(cluster, "late")) >= 2, "two ticks of 'late' before the outage")
    beat.kill()
    before = _records(cluster, "late")
    last_before = max(r[0] for r in before)
    # The outage: long enough that ticks fall out of the 2 s catch-up window.
    cluster.wait_for(lambda: time.time() * 1000 > last_before + 6000, "six seconds of downtime", timeout_s=30)
    cluster.beat()
    cluster.wait_for(
        lambda: any(r[1] == "started" and r[0] > last_before + 6000 for r in _records(cluster, "late")),
        "the first tick after the restart started",
        timeout_s=60,
    )
    cluster.client.pause_schedule("late")
    after = _records(cluster, "late")[len(before) :]
    missed = [r for r in after if r[1] == "skipped" and "missed" in (r[4] or "")]
    assert len(missed) == 1 and missed[0][0] == last_before + 1000 and missed[0][2] >= 3, after
    assert "catchup_window_ms=2000" in missed[0][4]
    # Inside the window, only the latest tick ran (the others, if any, superseded); then the schedule went on.
    first_started = next(r for r in after if r[1] == "started")
    between = after[after.index(missed[0]) + 1 : after.index(first_started)]
    assert all(r[1] == "skipped" and "superseded" in r[4] for r in between), after
    _assert_contiguous(before + after, 1000)
    ids = [r[3] for r in before + after if r[3]]
    cluster.wait_all_terminal(ids)
    info = cluster.client.get_schedule("late")
    assert info.skipped_count == sum(r[2] for r in after if r[1] == "skipped")
