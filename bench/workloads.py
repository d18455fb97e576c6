"""One benchmark run of one workload on one engine, meant to run in its own process.

    python bench/workloads.py --engine duroxide|celery|dbos --workload W1|W2|W3 --db /tmp/x/bench.db [--size N]
    python bench/workloads.py --engine celery --workload W1 --bulk ...   # W1 started with one start_orchestrations

The same workload code runs on both duroxide engines; only the imported module differs. The DBOS peer runs the
same workloads written the DBOS way (bench/dbos_bench.py) on a SQLite system database next to --db.
Stdout gets ``MEASURED {json}`` once the workload is done (before shutdown), then ``RESULT {json}``; both carry
`cpu_ms` (this process's user+system CPU over the measured window, all threads) and, for the engines on SQLAlchemy
(celery, dbos), `sql`: the statements, commits and rollbacks over the window (bench/measure.py).
Any failure (wrong status or output, exception) prints ``RESULT {"ok": false, ...}`` and exits non-zero.
"""

import argparse
import faulthandler
import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENGINES = ("duroxide", "celery", "dbos", "duroxide-pg", "celery-pg")
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_SIZES = {"W1": 500, "W2": 1000, "W3": 200, "W4": 100}
TIMER_MS = 2000  # W4's durable timer
WAIT_TIMEOUT_MS = 600_000  # the parent's per-run timeout is what bounds a run


class BenchFailure(Exception):
    """A run produced a wrong status or output."""


def check(result, expected, instance_id):
    """Raise BenchFailure unless the orchestration completed with the expected output."""
    status = getattr(result, "status", None)
    output = getattr(result, "output", None)
    if status != "Completed":
        error = getattr(result, "error", None)
        raise BenchFailure(f"{instance_id}: status={status!r} error={error!r} output={output!r}")
    if output != expected:
        raise BenchFailure(f"{instance_id}: output={output!r}, expected {expected!r}")


def unwrap_all(results):
    """ctx.all yields [{"ok": v} | {"err": msg}, ...]; return [v, ...] or raise on any other shape."""
    values = []
    for item in results:
        if not isinstance(item, dict) or "ok" not in item:
            raise ValueError(f"unexpected ctx.all item: {item!r}")
        values.append(item["ok"])
    return values


def register(runtime):
    @runtime.register_activity("AddOne")
    def add_one(ctx, x):
        return x + 1

    @runtime.register_orchestration("Single")
    def single(ctx, x):
        return (yield ctx.schedule_activity("AddOne", x))

    @runtime.register_orchestration("FanOut")
    def fan_out(ctx, n):
        results = yield ctx.all([ctx.schedule_activity("AddOne", i) for i in range(n)])
        return sum(unwrap_all(results))

    @runtime.register_orchestration("Sequence")
    def sequence(ctx, n):
        acc = 0
        for _ in range(n):
            acc = yield ctx.schedule_activity("AddOne", acc)
        return acc

    @runtime.register_orchestration("Timer")
    def timer(ctx, value):
        """W4: one durable timer right after start, then return the input."""
        yield ctx.schedule_timer(TIMER_MS)
        return value


def w1(client, n):
    """n single-activity orchestrations started together; throughput in orchestrations/s."""
    ids = [f"w1-{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, instance_id in enumerate(ids):
        client.start_orchestration(instance_id, "Single", i)
    started = time.perf_counter()
    for i, instance_id in enumerate(ids):
        check(client.wait_for_orchestration(instance_id, WAIT_TIMEOUT_MS), i + 1, instance_id)
    wall = time.perf_counter() - t0
    return {"value": n / wall, "unit": "orch/s", "wall_s": wall, "start_all_s": started - t0}


def w1_bulk(client, n):
    """W1 with its n starts in one Client.start_orchestrations call (duroxide_celery only)."""
    ids = [f"w1-{i}" for i in range(n)]
    t0 = time.perf_counter()
    client.start_orchestrations([(instance_id, "Single", i) for i, instance_id in enumerate(ids)])
    started = time.perf_counter()
    for i, instance_id in enumerate(ids):
        check(client.wait_for_orchestration(instance_id, WAIT_TIMEOUT_MS), i + 1, instance_id)
    wall = time.perf_counter() - t0
    return {"value": n / wall, "unit": "orch/s", "wall_s": wall, "start_all_s": started - t0}


def w2(client, n):
    """One orchestration fanning out n activities with ctx.all; wall seconds."""
    t0 = time.perf_counter()
    client.start_orchestration("w2", "FanOut", n)
    check(client.wait_for_orchestration("w2", WAIT_TIMEOUT_MS), n * (n + 1) // 2, "w2")
    wall = time.perf_counter() - t0
    return {"value": wall, "unit": "s", "wall_s": wall}


def w3(client, n):
    """One orchestration of n sequential activities; ms per step."""
    t0 = time.perf_counter()
    client.start_orchestration("w3", "Sequence", n)
    check(client.wait_for_orchestration("w3", WAIT_TIMEOUT_MS), n, "w3")
    wall = time.perf_counter() - t0
    return {"value": wall * 1000 / n, "unit": "ms/step", "wall_s": wall}


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100): p99 of 100 samples is the 99th smallest."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)]


def timer_lateness(client, instance_id):
    """TimerFired's timestamp (when the turn that consumed the firing ran) minus the timer's fire-at time."""
    events = client.read_execution_history(instance_id, 1)
    created = [e for e in events if e.kind == "TimerCreated"]
    fired = [e for e in events if e.kind == "TimerFired"]
    if len(created) != 1 or len(fired) != 1:
        raise BenchFailure(f"{instance_id}: {len(created)} TimerCreated, {len(fired)} TimerFired (expected 1 each)")
    data = json.loads(created[0].data)
    fire_at = data.get("fire_at_ms", data.get("fireAtMs"))  # duroxide_celery / duroxide spell it differently
    # duroxide takes the event's timestamp a moment after computing the fire-at time (1999 ms apart, seen): 5 ms leeway.
    if abs(fire_at - created[0].timestamp_ms - TIMER_MS) > 5:
        raise BenchFailure(f"{instance_id}: fire-at {fire_at} is not created {created[0].timestamp_ms} + {TIMER_MS}")
    late = fired[0].timestamp_ms - fire_at
    if late < 0:
        raise BenchFailure(f"{instance_id}: timer fired {-late} ms EARLY")
    return late


def w4(client, n):
    """n orchestrations on a 2 s durable timer started together; timer lateness p50/p99 in ms."""
    ids = [f"w4-{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, instance_id in enumerate(ids):
        client.start_orchestration(instance_id, "Timer", i)
    for i, instance_id in enumerate(ids):
        check(client.wait_for_orchestration(instance_id, WAIT_TIMEOUT_MS), i, instance_id)
    wall = time.perf_counter() - t0
    lateness = [timer_lateness(client, instance_id) for instance_id in ids]
    return {
        "value": percentile(lateness, 50),
        "unit": "ms late (p50)",
        "p99": percentile(lateness, 99),
        "min": min(lateness),
        "max": max(lateness),
        "wall_s": wall,
    }


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}


def load_engine(engine):
    """The only engine-specific code: which module the API comes from."""
    if engine.startswith("duroxide"):
        from duroxide import Client, PostgresProvider, Runtime, SqliteProvider
    else:
        from duroxide_celery import Client, PostgresProvider, Runtime, SqliteProvider
    return (PostgresProvider if engine.endswith("-pg") else SqliteProvider), Client, Runtime


class PgSchema:
    """A fresh PostgreSQL schema for one run (the -pg engines), dropped afterwards; every connection of this process
    carries the application name `bench-<schema>`, so a CpuMeter finds the backends serving it."""

    def __init__(self, url):
        import uuid

        import psycopg

        self.url = url
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.appname = f"bench-{self.name}"
        os.environ["PGAPPNAME"] = self.appname
        with psycopg.connect(url, autocommit=True, application_name="bench-setup") as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')

    def drop(self):
        import psycopg

        with psycopg.connect(self.url, autocommit=True, application_name="bench-setup") as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


def cpu_s():
    """User+system CPU seconds of this process (all threads) and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(engine, workload, db, size, pg_url=DEFAULT_PG_URL, bulk=False):
    if engine == "dbos":
        from bench import dbos_bench

        return dbos_bench.run(
            workload, "sqlite:///" + os.path.join(os.path.dirname(os.path.abspath(db)), "dbos.sqlite"), size
        )
    from bench.measure import StatementCounter

    counter = StatementCounter.install() if engine.startswith("celery") else None
    Provider, Client, Runtime = load_engine(engine)
    schema = PgSchema(pg_url) if engine.endswith("-pg") else None
    try:
        return _run(engine, workload, db, size, counter, Provider, Client, Runtime, schema, bulk)
    finally:
        if schema is not None:
            schema.drop()


def _run(engine, workload, db, size, counter, Provider, Client, Runtime, schema, bulk=False):  # noqa: N803
    from bench.measure import CpuMeter, count_delta

    t0 = time.perf_counter()
    provider = Provider.connect_with_schema(schema.url, schema.name) if schema else Provider.open(db)
    runtime = Runtime(provider)
    client = Client(provider)
    register(runtime)
    runtime.start()
    setup_s = time.perf_counter() - t0
    try:
        meter = CpuMeter(pg_dsn=schema.url, pg_appname=schema.appname, include_self=False) if schema else None
        if meter:
            meter.start()
        stats0, cpu0 = counter.snapshot() if counter else None, cpu_s()
        result = (w1_bulk if bulk else WORKLOADS[workload])(client, size)
        result["cpu_ms"] = (cpu_s() - cpu0) * 1000
        if meter:
            # The PostgreSQL backends serving this process (the meter's sampling thread is in cpu_ms: a little).
            backends = meter.stop()
            result["pg_backend_cpu_ms"] = backends.get("postgres backends", 0.0)
            result["pg_backends"] = backends.get("postgres backends (count)", 0)
            result["process_cpu_ms"] = result["cpu_ms"]
            result["cpu_ms"] += result["pg_backend_cpu_ms"]
        if counter:
            result["sql"] = count_delta(stats0, counter.snapshot())
        result.update(engine=engine, workload=workload, size=size, setup_s=setup_s, bulk=bulk)
        # Report the figure before shutdown, so a hanging shutdown does not lose it.
        print("MEASURED " + json.dumps(result), flush=True)
    finally:
        t1 = time.perf_counter()
        runtime.shutdown()
    result["shutdown_s"] = time.perf_counter() - t1
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), required=True)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--db", required=True, help="path of a fresh SQLite database file")
    parser.add_argument("--size", type=int, help="orchestrations (W1), activities (W2) or steps (W3)")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL), help="-pg engines")
    parser.add_argument("--bulk", action="store_true", help="W1 on celery/celery-pg: one start_orchestrations call")
    args = parser.parse_args(argv)
    if args.bulk and (args.workload != "W1" or not args.engine.startswith("celery")):
        parser.error("--bulk is W1 on the celery engines only")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # run.py asks for the stacks of a hung run
    size = args.size or DEFAULT_SIZES[args.workload]
    try:
        result = run(args.engine, args.workload, args.db, size, args.pg_url, args.bulk)
    except Exception as exc:
        traceback.print_exc()
        print("RESULT " + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print("RESULT " + json.dumps({"ok": True, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
