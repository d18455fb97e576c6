"""Dashboard list page on a store of 100,000 instances: server time per page, median of 20 requests.

Fills a fresh store (a SQLite file, and a fresh schema on PostgreSQL) with instance rows by bulk INSERT (the
list reads dx_instances only): statuses 70% Completed, 20% Failed, 10% Running, five orchestration names, two
versions, creation times spread over 30 days. Then times, through Flask's test client (the whole request: routing,
SQL, template; the status counts are cached for 2 s, so mostly served from the cache) and its query alone, for
the first page, a deep page reached by its keyset cursor (row 90,000), filtered pages; then the status counts
query (a GROUP BY over every instance), uncached.

    python bench/dashboard.py                       # both stores, 100,000 instances
    python bench/dashboard.py --stores sqlite --instances 20000
    DUROXIDE_BENCH_PG_URL=postgresql://postgres@127.0.0.1:5432/test python bench/dashboard.py --stores postgres
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duroxide_celery import Client, PostgresProvider, SqliteProvider  # noqa: E402
from duroxide_celery.dashboard import create_app  # noqa: E402
from duroxide_celery.dashboard.app import _cursor_text  # noqa: E402
from duroxide_celery.providers import dashboard_reads  # noqa: E402
from duroxide_celery.providers.schema import instances  # noqa: E402

PG_URL = os.environ.get("DUROXIDE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
NAMES = ("OrderSaga", "Refund", "Signup", "Nightly", "Export")
REQUESTS = 20


def fill(provider: Any, count: int) -> None:
    """Bulk-insert `count` instance rows, 5,000 per statement."""
    rng = random.Random(15)
    now = int(time.time() * 1000)
    statuses = ["Completed"] * 7 + ["Failed"] * 2 + ["Running"]
    engine = provider.store.engine
    batch: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for i in range(count):
            created = now - rng.randrange(30 * 86_400_000)
            batch.append(
                {
                    "instance_id": f"order-{i:07d}",
                    "orchestration_name": NAMES[i % len(NAMES)],
                    "orchestration_version": "1.0.0" if i % 3 else "2.0.0",
                    "requested_version": None,
                    "status": statuses[i % len(statuses)],
                    "current_execution_id": 1,
                    "custom_status_version": 0,
                    "created_at": created,
                    "updated_at": created + 1000,
                    "locked_until": 0,
                    "attempt_count": 0,
                    "next_attempt_at": 0,
                }
            )
            if len(batch) == 5000:
                conn.execute(sa.insert(instances), batch)
                batch = []
        if batch:
            conn.execute(sa.insert(instances), batch)
    # What autovacuum (PostgreSQL) or a long-running store would have done by now: statistics, visibility map.
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "VACUUM ANALYZE dx_instances" if engine.dialect.name == "postgresql" else "ANALYZE"
        )


def median_ms(fn: Any) -> tuple[float, float]:
    fn()  # warm: statement caches, the database's buffers
    times = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def bench(label: str, provider: Any, count: int) -> None:
    started = time.perf_counter()
    fill(provider, count)
    print(f"\n{label}: {count} instances inserted in {time.perf_counter() - started:.1f} s")
    client = Client(provider)
    tc = create_app(client).test_client()
    store = provider.store
    # The cursor of the row 90% down the list, found once (the page itself never counts rows).
    with store.read() as conn:
        row = conn.execute(
            sa.select(instances.c.created_at, instances.c.instance_id)
            .order_by(instances.c.created_at.desc(), instances.c.instance_id.desc())
            .offset(int(count * 0.9))
            .limit(1)
        ).one()
    deep = (row[0], row[1])
    day = 86_400_000
    now = int(time.time() * 1000)
    frm = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((now - 10 * day) / 1000))
    to = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((now - 9 * day) / 1000))
    Q = dashboard_reads.InstanceQuery
    cases = [
        ("first page (50 rows)", "/", Q(), None),
        ("deep page, row 90% down, via keyset cursor", f"/?after={_cursor_text(deep)}", Q(), deep),
        ("status=Failed, first page", "/?status=Failed", Q(status="Failed"), None),
        ("status=Running, deep page", f"/?status=Running&after={_cursor_text(deep)}", Q(status="Running"), deep),
        ("name=Refund&version=2.0.0", "/?name=Refund&version=2.0.0", Q(name="Refund", version="2.0.0"), None),
        ("id prefix order-00123", "/?q=order-00123", Q(id_prefix="order-00123"), None),
        ("created within one day, 10 days ago", f"/?from={frm}&to={to}", None, None),
    ]
    print(f"  {'page':<45} {'request':>17}  {'(max)':>9}  {'its query':>12}")
    for what, url, query, after in cases:
        response = tc.get(url)
        assert response.status_code == 200, (url, response.status_code, response.data[:300])
        rows = response.get_data(as_text=True).count('class="row ')
        assert rows == 50, (url, rows)
        med, worst = median_ms(lambda url=url: tc.get(url))
        sql = ""
        if query is not None:
            sql_med, _ = median_ms(lambda q=query, a=after: dashboard_reads.list_instances(store, q, limit=50, after=a))
            sql = f"{sql_med:7.2f} ms"
        print(f"  {what:<45} {med:7.2f} ms median  ({worst:6.2f})  {sql:>12}")
    med, worst = median_ms(lambda: dashboard_reads.status_counts(store))
    print(f"  {'status counts (GROUP BY, uncached)':<45} {med:7.2f} ms median  ({worst:6.2f} max)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--instances", type=int, default=100_000)
    args = parser.parse_args()
    print(f"dashboard list page: server time per request, median of {REQUESTS} (Flask test client)")
    for kind in args.stores.split(","):
        if kind == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                provider = SqliteProvider.open(str(Path(tmp) / "bench.db"))
                try:
                    bench("SQLite", provider, args.instances)
                finally:
                    provider.dispose()
        elif kind == "postgres":
            schema = f"dxbench_{uuid.uuid4().hex[:10]}"
            provider = PostgresProvider.connect_with_schema(PG_URL, schema)
            try:
                bench(f"PostgreSQL (schema {schema})", provider, args.instances)
            finally:
                provider.dispose()
                engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
                with engine.begin() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                engine.dispose()
        else:
            parser.error(f"unknown store {kind!r}: sqlite or postgres")


if __name__ == "__main__":
    main()
