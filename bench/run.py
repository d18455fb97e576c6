"""Benchmark duroxide_celery (embedded) against duroxide and DBOS on the same workloads (see bench/README.md).

Every single run is a fresh subprocess (bench/workloads.py) with a fresh SQLite file in a fresh temp dir; the runs
interleave the engines (run 1 of W1 on every engine, then W2, ..., then run 2).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
ALL_WORKLOADS = ("W1", "W2", "W3", "W4")
ALL_ENGINES = ("duroxide", "celery", "dbos", "duroxide-pg", "celery-pg")
LABELS = {
    "duroxide": "duroxide 0.2.2, SQLite",
    "celery": "duroxide-celery embedded, SQLite",
    "dbos": "DBOS, SQLite",
    "duroxide-pg": "duroxide 0.2.2, PostgreSQL",
    "celery-pg": "duroxide-celery embedded, PostgreSQL",
    "celery-bulk": "duroxide-celery embedded SQLite, bulk",
    "celery-pg-bulk": "duroxide-celery embedded, PG, bulk",
}
#: `--bulk`: W1 on an embedded engine with its starts in one Client.start_orchestrations call (an extra row; the
#: plain rows keep measuring the per-call path).
BULK_ENGINES = {"celery-bulk": "celery", "celery-pg-bulk": "celery-pg"}
HIGHER_IS_BETTER = {"W1": True, "W2": False, "W3": False, "W4": False}
QUICK_SIZES = {"W1": 50, "W2": 100, "W3": 20, "W4": 10}
DESCRIPTIONS = {
    "W1": "orchestrations of one activity, started together",
    "W2": "activities fanned out by one orchestration (ctx.all)",
    "W3": "sequential activities in one orchestration",
    "W4": "orchestrations on a 2 s durable timer (lateness)",
}


def parse_tagged(stdout, tag):
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    return None


def tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])


def run_once(engine, workload, size, timeout, pg_url=None):
    """Run one workload once in a subprocess; return a dict with ok, value or error."""
    bulk = engine in BULK_ENGINES
    engine = BULK_ENGINES.get(engine, engine)
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-{workload}-") as tmp:
        cmd = [sys.executable, str(BENCH_DIR / "workloads.py"), "--engine", engine, "--workload", workload]
        cmd += ["--bulk"] if bulk else []
        cmd += ["--db", os.path.join(tmp, "bench.db")]
        if size:
            cmd += ["--size", str(size)]
        if pg_url and engine.endswith("-pg"):
            cmd += ["--pg-url", pg_url]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")])))
        t0 = time.perf_counter()
        # Own session, so a timeout kills the whole process group (engines may spawn worker processes).
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp, env=env, start_new_session=True
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stdout, stderr = hung_output(proc)
            measured = parse_tagged(stdout, "MEASURED")
            where = f"during shutdown, after measuring {measured['value']:.4g} {measured['unit']}" if measured else ""
            error = f"timed out after {timeout} s {where}".strip()
            return {"ok": False, "error": error, "stderr": tail(stderr, 40), "full_stderr": stderr}
        elapsed = time.perf_counter() - t0
    result = parse_tagged(stdout, "RESULT")
    if result is None:
        result = {"ok": False, "error": f"no RESULT line (exit code {proc.returncode})"}
    elif result["ok"] and proc.returncode != 0:
        result = {"ok": False, "error": f"exit code {proc.returncode} after a successful run"}
    if not result["ok"]:
        result["stderr"] = tail(stderr)
    result["process_s"] = elapsed
    return result


def hung_output(proc):
    """Have a hung child dump its thread stacks to stderr (faulthandler on SIGUSR1), then kill its process group."""
    try:
        os.kill(proc.pid, signal.SIGUSR1)
        return proc.communicate(timeout=2)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass  # communicate() keeps what it has read; collect it once the group is dead
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()


def summarize(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def print_failure(engine, workload, i, result):
    print(f"  !!! FAILED {engine} {workload} run {i}: {result['error']}", flush=True)
    for line in result.get("stderr", "").splitlines():
        print(f"  !!!   {line}")


def per_unit(result):
    """CPU ms, SQL statements and transactions per orchestration (W1, W4) or per step (W2, W3)."""
    size = result["size"]
    unit = {"cpu_ms": result["cpu_ms"] / size} if "cpu_ms" in result else {}
    sql = result.get("sql")
    if sql:
        unit["statements"] = sql["statements"] / size
        unit["transactions"] = (sql["commits"] + sql["rollbacks"]) / size
    return unit


def summarize_runs(workload, runs):
    ok = [r for r in runs if r["ok"]]
    if not ok:
        return None
    summary = summarize([r["value"] for r in ok])
    if workload == "W4":
        summary["p99"] = summarize([r["p99"] for r in ok])
    units = [per_unit(r) for r in ok]
    for key in units[0]:
        summary[f"per_unit_{key}"] = summarize([u[key] for u in units if key in u])
    kinds = sorted({k for r in ok for k in (r.get("sql") or {}).get("by_kind", {})})
    if kinds:
        summary["per_unit_statement_kinds"] = {
            k: statistics.median([r["sql"]["by_kind"].get(k, 0) / r["size"] for r in ok]) for k in kinds
        }
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per workload and engine (default 3)")
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated, default W1,W2,W3,W4")
    parser.add_argument(
        "--engines", default=",".join(ALL_ENGINES), help="comma-separated, default " + ",".join(ALL_ENGINES)
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per single run (default 300)")
    parser.add_argument("--size", type=int, help="override the size of every workload (default 500/1000/200/100)")
    parser.add_argument("--quick", action="store_true", help="1 run at sizes 50/100/20/10 (a smoke test)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL of the -pg engines (a fresh schema per run, dropped afterwards)",
    )
    parser.add_argument(
        "--bulk", action="store_true", help="also run W1 with one start_orchestrations call (extra celery rows)"
    )
    parser.add_argument("--json", metavar="FILE", help="write all results to FILE (default bench/results/<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [w for w in workloads if w not in ALL_WORKLOADS] + [e for e in engines if e not in ALL_ENGINES]
    if bad:
        parser.error(f"unknown workload/engine: {', '.join(bad)}")
    if args.bulk and "W1" in workloads:
        for bulk, base in BULK_ENGINES.items():
            if base in engines:
                engines.insert(engines.index(base) + 1, bulk)
    if "dbos" in engines and importlib.util.find_spec("dbos") is None:
        print("note: DBOS is not installed (`pip install dbos`): the DBOS peer is skipped", flush=True)
        engines.remove("dbos")
    if not args.json:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        args.json = str(BENCH_DIR / "results" / f"{stamp}-embedded.json")

    report = {"runs": args.runs, "timeout_s": args.timeout, "size": args.size, "python": sys.version, "results": {}}
    report["engines"] = {e: LABELS[e] for e in engines}
    report["ratios_celery_over_duroxide"] = {}
    failures = 0
    collected = {w: {e: [] for e in engines} for w in workloads}
    # Interleaved: run 1 of every workload and engine, then run 2, ... so all see the same machine conditions.
    for i in range(1, args.runs + 1):
        for workload in workloads:
            size = args.size or (QUICK_SIZES[workload] if args.quick else None)
            for engine in engines:
                if engine in BULK_ENGINES and workload != "W1":
                    continue  # the bulk rows are W1 only
                result = run_once(engine, workload, size, args.timeout, args.pg_url)
                collected[workload][engine].append(result)
                if result["ok"]:
                    extra = f", p99 {result['p99']:.1f}" if "p99" in result else ""
                    unit = per_unit(result)
                    cost = f"CPU {unit['cpu_ms']:.2f} ms" if "cpu_ms" in unit else ""
                    if "statements" in unit:
                        cost += f", {unit['statements']:.1f} stmts, {unit['transactions']:.1f} tx"
                    per = "orch" if workload in ("W1", "W4") else "step"
                    print(
                        f"  run {i} {workload} {engine:9} {result['value']:10.3f} {result['unit']}{extra}"
                        f"  (per {per}: {cost})",
                        flush=True,
                    )
                else:
                    failures += 1
                    print_failure(engine, workload, i, result)

    print(f"\n== {', '.join(f'{w}: {DESCRIPTIONS[w]}' for w in workloads)}")
    for workload in workloads:
        per_engine = report["results"].setdefault(workload, {})
        for engine in engines:
            runs = collected[workload][engine]
            if not runs:
                continue  # a bulk row outside W1
            summary = summarize_runs(workload, runs)
            unit = next((r["unit"] for r in runs if r["ok"]), None)
            per_engine[engine] = {"runs": runs, "summary": summary, "unit": unit}
            if summary:
                print(
                    f"  {workload} {engine:9} median {summary['median']:10.3f} {unit}"
                    f"  (min {summary['min']:.3f}, max {summary['max']:.3f}, {summary['n']}/{args.runs} ok)",
                    flush=True,
                )
            else:
                print(f"  {workload} {engine:9} NO SUCCESSFUL RUN", flush=True)
        ratio = print_ratio(workload, per_engine)
        if ratio is not None:
            report["ratios_celery_over_duroxide"][workload] = ratio
    print_table(report, engines)

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.json}")
    if failures:
        print(f"!!! {failures} run(s) FAILED", flush=True)
    return 1 if failures else 0


def _median(report, workload, engine, key=None):
    summary = (report["results"].get(workload, {}).get(engine) or {}).get("summary")
    if not summary:
        return None
    if key is None:
        return summary["median"]
    return summary[key]["median"] if key in summary else None


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def print_table(report, engines):
    """The issue's table (medians), the cost per W1 orchestration, and the embedded targets."""
    print("\n== medians (W1 orch/s higher is better; the others lower)")
    print(f"| {'system':37} | W1 orch/s | W2 s   | W3 ms/step | W4 late p50/p99 ms | W1 CPU ms/orch | W1 stmts/tx |")
    print(f"|{'-' * 39}|-----------|--------|------------|--------------------|----------------|-------------|")
    for engine in engines:
        w1, w2, w3 = _median(report, "W1", engine), _median(report, "W2", engine), _median(report, "W3", engine)
        w4 = f"{_fmt(_median(report, 'W4', engine), '.1f')} / {_fmt(_median(report, 'W4', engine, 'p99'), '.1f')}"
        cpu = _median(report, "W1", engine, "per_unit_cpu_ms")
        stmts = _median(report, "W1", engine, "per_unit_statements")
        tx = _median(report, "W1", engine, "per_unit_transactions")
        sql = f"{stmts:.1f} / {tx:.1f}" if stmts is not None else "n/a"
        print(
            f"| {LABELS[engine]:37} | {_fmt(w1, '.1f'):>9} | {_fmt(w2, '.2f'):>6} | {_fmt(w3, '.2f'):>10} | {w4:>18} "
            f"| {_fmt(cpu, '.2f'):>14} | {sql:>11} |"
        )
    print("  (CPU: the benchmark process, all threads, over the measured window, plus on PostgreSQL the backends")
    print("   serving it; SQL statements/transactions are counted through SQLAlchemy, so not for duroxide, whose")
    print("   store is in Rust)")
    for engine in engines:
        summary = (report["results"].get("W1", {}).get(engine) or {}).get("summary") or {}
        if summary.get("per_unit_statement_kinds"):
            top = sorted(summary["per_unit_statement_kinds"].items(), key=lambda kv: -kv[1])[:14]
            print(f"  W1 statements per orchestration, {LABELS[engine]}: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    print("\n== targets (issue 13), medians of this run")
    report["targets"] = []
    for name, ours, peer, limit, higher in (
        ("W1 embedded SQLite / duroxide SQLite (orch/s)", ("W1", "celery"), ("W1", "duroxide"), 1.0, True),
        ("W3 embedded SQLite / DBOS SQLite (ms/step)", ("W3", "celery"), ("W3", "dbos"), 1.0, False),
    ):
        a, b = _median(report, *ours), _median(report, *peer)
        if a is None or not b:
            print(f"  {name:50} —  (needs {ours[1]} and {peer[1]} {ours[0]})")
            continue
        value = a / b
        met = value >= limit if higher else value <= limit
        report["targets"].append({"target": name, "ratio": value, "limit": limit, "met": met})
        print(f"  {name:50} {value:6.3f}  ({'>=' if higher else '<='} {limit:g}: {'met' if met else 'NOT met'})")


def print_ratio(workload, per_engine):
    base = (per_engine.get("duroxide") or {}).get("summary")
    other = (per_engine.get("celery") or {}).get("summary")
    if not (base and other):
        return None
    ratio = other["median"] / base["median"]
    if HIGHER_IS_BETTER[workload]:
        verdict = "faster" if ratio >= 1 else "slower"
        factor = ratio if ratio >= 1 else 1 / ratio
        note = "higher is better"
    else:
        verdict = "faster" if ratio <= 1 else "slower"
        factor = 1 / ratio if ratio <= 1 else ratio
        note = "lower is better"
    print(
        f"  ratio {workload} duroxide_celery/duroxide = {ratio:.3f} ({note}): "
        f"duroxide_celery is {factor:.2f}x {verdict}"
    )
    return ratio


if __name__ == "__main__":
    sys.exit(main())
