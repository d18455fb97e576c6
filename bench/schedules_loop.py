"""What durable schedules add to the timer loop (tasks/recovery.fire_what_is_due), on SQLite and PostgreSQL.

Prints, per store:
- idle call: fire_due_schedules when nothing is due and the due index was read less than a second ago (what almost
  every round of the loop costs: no query);
- due-index read: the one `min(due_at)` query a round makes once a second, with 0 and with 1000 schedules;
- firing: 200 due ticks (200 schedules, one tick each) started in one call, per tick.

    python bench/schedules_loop.py                 # SQLite file, and PostgreSQL if reachable
    python bench/schedules_loop.py --pg-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from duroxide_celery import Client, PostgresProvider, SqliteProvider
from duroxide_celery.providers.schedules import for_store
from duroxide_celery.tasks.recovery import fire_due_schedules

#: 2030-01-01T00:00:00Z: ticks the real clock does not reach.
BASE = 1893456000000


class Pokes:
    """Stands in for the Publisher (this measures the store side only): counts the wake-ups."""

    count = 0

    def poke(self, targets: list) -> None:
        self.count += len(targets)


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def measure(name: str, provider) -> None:
    client, store, pokes = Client(provider), provider.store, Pokes()
    schedules = for_store(store)
    fire_due_schedules(store, pokes)  # reads the (empty) index once
    idle = per_call_us(lambda: fire_due_schedules(store, pokes), 20_000)
    read_empty = per_call_us(schedules.next_due, 500)
    for n in range(1000):
        client.create_schedule(f"s{n}", "Noop", every_ms=3_600_000, start_at=BASE + 60_000 * (n % 50))
    read_full = per_call_us(schedules.next_due, 500)
    for n in range(1000):
        client.delete_schedule(f"s{n}")
    for n in range(200):
        client.create_schedule(f"d{n}", "Noop", every_ms=3_600_000, start_at=BASE)
    start = time.perf_counter()
    fire_due_schedules(store, pokes, now=BASE)
    per_tick_ms = (time.perf_counter() - start) / 200 * 1000
    assert pokes.count == 200, pokes.count
    print(
        f"{name:10} idle call {idle:6.2f} us | due-index read {read_empty:7.1f} us (0 schedules), "
        f"{read_full:7.1f} us (1000) | firing {per_tick_ms:5.2f} ms per tick (200 ticks)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        provider = SqliteProvider.open(str(Path(tmp) / "bench.db"))
        measure("sqlite", provider)
        provider.dispose()
    schema = f"bench_sched_{uuid.uuid4().hex[:8]}"
    try:
        provider = PostgresProvider.connect_with_schema(args.pg_url, schema)
        _ = provider.store
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional here
        print(f"postgresql skipped: {exc}")
        return
    try:
        measure("postgresql", provider)
    finally:
        provider.dispose()
        engine = sa.create_engine(args.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


if __name__ == "__main__":
    main()
