"""Benchmark duroxide_celery against duroxide on the same workloads (see bench/README.md).

Every single run is a fresh subprocess (bench/workloads.py) with a fresh SQLite file in a fresh temp dir.
"""

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
ALL_WORKLOADS = ("W1", "W2", "W3")
ALL_ENGINES = ("duroxide", "celery")
HIGHER_IS_BETTER = {"W1": True, "W2": False, "W3": False}
DESCRIPTIONS = {
    "W1": "orchestrations of one activity, started together",
    "W2": "activities fanned out by one orchestration (ctx.all)",
    "W3": "sequential activities in one orchestration",
}


def parse_tagged(stdout, tag):
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    return None


def tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])


def run_once(engine, workload, size, timeout):
    """Run one workload once in a subprocess; return a dict with ok, value or error."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-{workload}-") as tmp:
        cmd = [sys.executable, str(BENCH_DIR / "workloads.py"), "--engine", engine, "--workload", workload]
        cmd += ["--db", os.path.join(tmp, "bench.db")]
        if size:
            cmd += ["--size", str(size)]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per workload and engine (default 3)")
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated, default W1,W2,W3")
    parser.add_argument("--engines", default=",".join(ALL_ENGINES), help="comma-separated, default duroxide,celery")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per single run (default 300)")
    parser.add_argument("--size", type=int, help="override the size of every workload (default 500/1000/200)")
    parser.add_argument("--json", metavar="FILE", help="write all results to FILE")
    args = parser.parse_args(argv)
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [w for w in workloads if w not in ALL_WORKLOADS] + [e for e in engines if e not in ALL_ENGINES]
    if bad:
        parser.error(f"unknown workload/engine: {', '.join(bad)}")

    report = {"runs": args.runs, "timeout_s": args.timeout, "size": args.size, "python": sys.version, "results": {}}
    report["ratios_celery_over_duroxide"] = {}
    failures = 0
    for workload in workloads:
        better = "higher" if HIGHER_IS_BETTER[workload] else "lower"
        print(f"== {workload}: {DESCRIPTIONS[workload]} ({better} is better)", flush=True)
        per_engine = report["results"].setdefault(workload, {})
        for engine in engines:
            runs = []
            for i in range(1, args.runs + 1):
                result = run_once(engine, workload, args.size, args.timeout)
                runs.append(result)
                if result["ok"]:
                    print(f"  {engine:9} run {i}: {result['value']:10.3f} {result['unit']}", flush=True)
                else:
                    failures += 1
                    print_failure(engine, workload, i, result)
            values = [r["value"] for r in runs if r["ok"]]
            summary = summarize(values) if values else None
            unit = next((r["unit"] for r in runs if r["ok"]), None)
            per_engine[engine] = {"runs": runs, "summary": summary, "unit": unit}
            if summary:
                print(
                    f"  {engine:9} median {summary['median']:10.3f} {unit}"
                    f"  (min {summary['min']:.3f}, max {summary['max']:.3f}, {summary['n']}/{args.runs} ok)",
                    flush=True,
                )
            else:
                print(f"  {engine:9} NO SUCCESSFUL RUN", flush=True)
        ratio = print_ratio(workload, per_engine)
        if ratio is not None:
            report["ratios_celery_over_duroxide"][workload] = ratio

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json}")
    if failures:
        print(f"!!! {failures} run(s) FAILED", flush=True)
    return 1 if failures else 0


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
