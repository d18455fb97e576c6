"""The DBOS peer (PyPI `dbos`, 3.x): the benchmark workloads written the DBOS way, run in this process.

    python bench/dbos_bench.py --workload W1 --url sqlite:////tmp/x/dbos.sqlite [--size N]
    python bench/dbos_bench.py --workload W1 --url postgresql://postgres@127.0.0.1:5432/test --schema dbos_x --handshake

DBOS runs with its defaults (`DBOSConfig` with only name, system database URL, schema and log level), embedded in
this process as DBOS is meant to be used:

- W1: n workflows `single(i)`, each calling one step `add_one`, started together with `DBOS.start_workflow`, then
  each `handle.get_result()`.
- W2: one workflow `fan_out(n)` fanning out n `add_one` steps with DBOS's idiomatic concurrent fan-out: enqueue
  each on a queue (`DBOS.register_queue("bench_fanout")`, default settings: no concurrency limit, 1 s polling), then
  `get_result()` of each handle. The other way, starting each step as a child workflow with `DBOS.start_workflow`
  (a thread each, no queue), is measured with BENCH_DBOS_FANOUT=children in the environment.
- W3: one workflow `sequence(n)` of n sequential `add_one` steps.
- W4: n workflows `timer(i)`: `DBOS.sleep(2)` (durable: the wake-up time is recorded as a step), then a step that
  returns the wall clock. Lateness per workflow = that clock minus the recorded wake-up time (the `DBOS.sleep`
  step's output, read back with `DBOS.list_workflow_steps`), like duroxide_celery's TimerFired - fire_at_ms.

Prints ``MEASURED {json}`` after the workload (with this process's CPU time and SQL statement counts over the
window), then ``RESULT {json}`` after `DBOS.destroy()`. With `--handshake` (bench/production.py) it prints
``READY`` once launched and waits for a line on stdin before timing, and after MEASURED waits for another line
before it shuts down, so the driver's CPU meter window (which includes the PostgreSQL backends) matches.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

from bench.measure import StatementCounter, count_delta  # noqa: E402

DEFAULT_SIZES = {"W1": 500, "W2": 1000, "W3": 200, "W4": 100}
TIMER_S = 2.0
FANOUT_QUEUE = "bench_fanout"
FANOUT = os.environ.get("BENCH_DBOS_FANOUT", "queue")  # W2: "queue" (default) or "children"


class BenchFailure(Exception):
    pass


def define(DBOS):  # noqa: N803 - the DBOS class
    """Register the workflows and steps (before DBOS.launch()); returns them by name."""

    @DBOS.step()
    def add_one(x):
        return x + 1

    @DBOS.step()
    def now_ms():
        return time.time() * 1000

    @DBOS.workflow()
    def single(x):
        return add_one(x)

    @DBOS.workflow()
    def fan_out(n):
        if FANOUT == "children":
            handles = [DBOS.start_workflow(add_one, i) for i in range(n)]
        else:
            queue = DBOS.retrieve_queue(FANOUT_QUEUE)
            handles = [queue.enqueue(add_one, i) for i in range(n)]
        return sum(h.get_result() for h in handles)

    @DBOS.workflow()
    def sequence(n):
        acc = 0
        for _ in range(n):
            acc = add_one(acc)
        return acc

    @DBOS.workflow()
    def timer(i):
        DBOS.sleep(TIMER_S)
        return {"tag": i, "woke_ms": now_ms()}

    return {"single": single, "fan_out": fan_out, "sequence": sequence, "timer": timer}


def percentile(values, q):
    import math

    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def w1(DBOS, wf, n):  # noqa: N803
    t0 = time.perf_counter()
    handles = [DBOS.start_workflow(wf["single"], i) for i in range(n)]
    started = time.perf_counter()
    for i, handle in enumerate(handles):
        if (value := handle.get_result()) != i + 1:
            raise BenchFailure(f"single({i}) returned {value!r}")
    wall = time.perf_counter() - t0
    return {"value": n / wall, "unit": "orch/s", "wall_s": wall, "start_all_s": started - t0}


def w2(DBOS, wf, n):  # noqa: N803
    t0 = time.perf_counter()
    value = DBOS.start_workflow(wf["fan_out"], n).get_result()
    wall = time.perf_counter() - t0
    if value != n * (n + 1) // 2:
        raise BenchFailure(f"fan_out({n}) returned {value!r}")
    return {"value": wall, "unit": "s", "wall_s": wall}


def w3(DBOS, wf, n):  # noqa: N803
    t0 = time.perf_counter()
    handle = DBOS.start_workflow(wf["sequence"], n)
    value = handle.get_result()
    wall = time.perf_counter() - t0
    if value != n:
        raise BenchFailure(f"sequence({n}) returned {value!r}")
    steps = DBOS.list_workflow_steps(handle.workflow_id, load_output=False)
    if len(steps) != n:
        raise BenchFailure(f"sequence({n}) recorded {len(steps)} steps")
    return {"value": wall * 1000 / n, "unit": "ms/step", "wall_s": wall}


def w4(DBOS, wf, n):  # noqa: N803
    t0 = time.perf_counter()
    handles = [DBOS.start_workflow(wf["timer"], i) for i in range(n)]
    results = [h.get_result() for h in handles]
    wall = time.perf_counter() - t0
    lateness = []
    for i, (handle, value) in enumerate(zip(handles, results)):
        if not isinstance(value, dict) or value.get("tag") != i:
            raise BenchFailure(f"timer({i}) returned {value!r}")
        sleeps = [s for s in DBOS.list_workflow_steps(handle.workflow_id) if s["function_name"] == "DBOS.sleep"]
        if len(sleeps) != 1:
            raise BenchFailure(f"timer({i}) recorded {len(sleeps)} DBOS.sleep steps")
        wake_ms = float(sleeps[0]["output"]) * 1000
        # The wake-up time is taken after the step's start and a read of the system database (which may wait for a
        # lock on a busy machine): never less than 2 s after the start; a second more would be a wrong record.
        if not 0 <= wake_ms - sleeps[0]["started_at_epoch_ms"] - TIMER_S * 1000 < 1000:
            started = sleeps[0]["started_at_epoch_ms"]
            raise BenchFailure(f"timer({i}) wake-up {wake_ms} is not its start {started} + 2 s")
        late = value["woke_ms"] - wake_ms
        if late < 0:
            raise BenchFailure(f"timer({i}) woke {-late:.1f} ms EARLY")
        lateness.append(late)
    return {
        "value": percentile(lateness, 50),
        "unit": "ms late (p50)",
        "p99": percentile(lateness, 99),
        "min": min(lateness),
        "max": max(lateness),
        "wall_s": wall,
    }


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(workload: str, url: str, size: int, schema: str | None = None, handshake: bool = False) -> dict:
    from dbos import DBOS, DBOSConfig

    counter = StatementCounter.install()
    t0 = time.perf_counter()
    config: DBOSConfig = {"name": "bench", "system_database_url": url, "log_level": "WARNING"}
    if schema:
        config["dbos_system_schema"] = schema
    if os.environ.get("PGAPPNAME") and url.startswith("postgres"):
        # DBOS names its connections "dbos_transact"; production.py finds a measurement's PostgreSQL backends (for
        # their CPU time) by the application name it gives every process. Only the name changes: DBOS merges these
        # keyword arguments into its defaults (pool size 20, pre-ping, ...).
        config["db_engine_kwargs"] = {"connect_args": {"application_name": os.environ["PGAPPNAME"]}}
    DBOS(config=config)
    wf = define(DBOS)
    DBOS.launch()
    DBOS.register_queue(FANOUT_QUEUE)
    setup_s = time.perf_counter() - t0
    try:
        if handshake:
            print("READY", flush=True)
            sys.stdin.readline()
        stats0, cpu0 = counter.snapshot(), _cpu_s()
        result = WORKLOADS[workload](DBOS, wf, size)
        result["cpu_ms"] = (_cpu_s() - cpu0) * 1000
        result["sql"] = count_delta(stats0, counter.snapshot())
        result.update(engine="dbos", workload=workload, size=size, setup_s=setup_s)
        if workload == "W2":
            result["dbos_fanout"] = FANOUT
        print("MEASURED " + json.dumps(result), flush=True)
        if handshake:
            sys.stdin.readline()
    finally:
        t1 = time.perf_counter()
        DBOS.destroy()
    result["shutdown_s"] = time.perf_counter() - t1
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--url", required=True, help="DBOS system database URL (sqlite:///... or postgresql://...)")
    parser.add_argument("--schema", help="PostgreSQL schema of DBOS's system tables (dbos_system_schema)")
    parser.add_argument("--size", type=int)
    parser.add_argument("--handshake", action="store_true", help="READY / wait for stdin lines (production.py)")
    args = parser.parse_args(argv)
    size = args.size or DEFAULT_SIZES[args.workload]
    try:
        result = run(args.workload, args.url, size, args.schema, args.handshake)
    except Exception as exc:
        traceback.print_exc()
        print("RESULT " + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print("RESULT " + json.dumps({"ok": True, **result}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # DBOS's non-daemon background threads must not hold the exit up after destroy()


if __name__ == "__main__":
    sys.exit(main())
