"""One benchmark run of one workload on one engine, meant to run in its own process.

    python bench/workloads.py --engine duroxide|celery --workload W1|W2|W3 --db /tmp/x/bench.db [--size N]

The same workload code runs on both engines; only the imported module differs.
Stdout gets ``MEASURED {json}`` once the workload is done (before shutdown), then ``RESULT {json}``.
Any failure (wrong status or output, exception) prints ``RESULT {"ok": false, ...}`` and exits non-zero.
"""

import argparse
import faulthandler
import json
import signal
import sys
import time
import traceback

ENGINES = ("duroxide", "celery")
DEFAULT_SIZES = {"W1": 500, "W2": 1000, "W3": 200}
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


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3}


def load_engine(engine):
    """The only engine-specific code: which module the API comes from."""
    if engine == "duroxide":
        from duroxide import Client, Runtime, SqliteProvider
    else:
        from duroxide_celery import Client, Runtime, SqliteProvider
    return SqliteProvider, Client, Runtime


def run(engine, workload, db, size):
    SqliteProvider, Client, Runtime = load_engine(engine)
    t0 = time.perf_counter()
    provider = SqliteProvider.open(db)
    runtime = Runtime(provider)
    client = Client(provider)
    register(runtime)
    runtime.start()
    setup_s = time.perf_counter() - t0
    try:
        result = WORKLOADS[workload](client, size)
        result.update(engine=engine, workload=workload, size=size, setup_s=setup_s)
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
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # run.py asks for the stacks of a hung run
    size = args.size or DEFAULT_SIZES[args.workload]
    try:
        result = run(args.engine, args.workload, args.db, size)
    except Exception as exc:
        traceback.print_exc()
        print("RESULT " + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print("RESULT " + json.dumps({"ok": True, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
