"""Production-mode benchmark: duroxide_celery with separate `celery worker`/`celery beat` processes on Redis and
PostgreSQL, against a plain Celery canvas peer on the same broker (see bench/README.md).

    python bench/production.py --runs 3

Every single measurement (one workload, one engine, one run) gets a fresh deployment: the Redis broker and result
databases flushed, a fresh PostgreSQL schema (dropped afterwards), and new worker/beat subprocesses, each in its own
process group and SIGKILLed (group) when the measurement ends, whatever happened.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

import sqlalchemy as sa  # noqa: E402
from celery import Celery, chain, chord, group  # noqa: E402

from bench.workloads import BenchFailure, check  # noqa: E402
from duroxide_celery import Client, OperationTimedOut, PostgresProvider  # noqa: E402

ALL_WORKLOADS = ("W1", "W2", "W3", "W4")
ALL_ENGINES = ("duroxide", "canvas")
LABELS = {"duroxide": "duroxide_celery", "canvas": "celery canvas"}
DEFAULT_SIZES = {"W1": 500, "W2": 1000, "W3": 200, "W4": 100}
DESCRIPTIONS = {
    "W1": "one-activity orchestrations started together (canvas: a group of one-task calls)",
    "W2": "activities fanned out by one orchestration with ctx.all (canvas: a chord + summing callback)",
    "W3": "sequential activities in one orchestration (canvas: a chain)",
    "W4": "2 s timers right after start: firing lateness (canvas: countdown=2 tasks, start - ETA)",
}
UNITS = {"W1": "orch/s", "W2": "s", "W3": "ms/step", "W4": "ms late (p50)"}
HIGHER_IS_BETTER = {"W1": True, "W2": False, "W3": False, "W4": False}
TIMER_MS = 2000  # bench/prod_app.py's Timer orchestration; the canvas W4 countdown
CANVAS_QUEUE = "bench.canvas"
ADD_ONE, TOTAL, STARTED_AT = "bench.canvas.add_one", "bench.canvas.total", "bench.canvas.started_at"
#: Key the production tests (tests/production/conftest.py) use to claim an empty Redis database: never flush one.
TESTS_CLAIM_KEY = "duroxide-celery:production-tests"
BENCH_CLAIM_KEY = "duroxide-celery:bench-production"
START_TIMEOUT_S = 60
LOG_NOTABLE = re.compile(r": (INFO|WARNING|ERROR|CRITICAL)/|Traceback|Error\b")
BEAT_ROUTINE = re.compile(r"beat: Starting|Scheduler: Sending due task")
#: Celery's warning about running as root (this benchmark's containers do).
LOG_NOISE = ("SecurityWarning", "absolutely not recommended", "_warn_or_raise_security_error")


class RunTimeout(Exception):
    """The per-run timeout expired."""


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise RunTimeout(f"timed out after {self.seconds:g} s")
        return left

    def remaining_ms(self) -> int:
        return max(1, int(self.remaining() * 1000))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): p99 of 100 samples is the 99th smallest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- processes -----------------------------------------------------------------------------------------------------
class Proc:
    """A celery subprocess in its own process group (session), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in kill()
        self.popen = subprocess.Popen(
            argv, cwd=REPO_DIR, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(f"[{self.name}] {line}" for line in self.text().splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchFailure(f"{self.name} exited with code {self.popen.returncode}:\n{self.tail()}")

    def wait_for_log(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchFailure(f"{self.name} did not log {needle!r} within {timeout_s} s:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group, then reap."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_alive(self.popen.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._out.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Deployment:
    """One measurement's processes and connections; `close()` always kills every process and drops the schema."""

    def __init__(self, engine: str, cfg: argparse.Namespace, logdir: Path):
        self.engine = engine
        self.cfg = cfg
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.tag = uuid.uuid4().hex[:10]
        self.schema: str | None = None
        self.provider: PostgresProvider | None = None
        self.client: Client | None = None
        self.app: Celery | None = None
        self.env = {
            **os.environ,
            "BENCH_BROKER_URL": cfg.broker_url,
            "BENCH_RESULT_BACKEND": cfg.result_url,
            "BENCH_DATABASE_URL": cfg.pg_url,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")])),
        }

    # -- setup ------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        prepare_redis(self.cfg)
        if self.engine == "duroxide":
            self.schema = f"bench_{self.tag}"
            self.env["BENCH_DATABASE_SCHEMA"] = self.schema
            self.provider = PostgresProvider.connect_with_schema(self.cfg.pg_url, self.schema)
            _ = self.provider.store  # create the schema before three processes race to
            self.app = Celery(f"bench-driver-{self.tag}", broker=self.cfg.broker_url, set_as_current=False)
            self.app.conf.update(
                task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True
            )
            self.client = Client(self.provider, app=self.app)
            nodes = [
                self._worker("orch", "bench.prod_app", "duroxide.orchestrator", self.cfg.orch_concurrency),
                self._worker("act", "bench.prod_app", "duroxide.activities", self.cfg.act_concurrency),
            ]
            beat = self._celery(
                "beat",
                "bench.prod_app",
                ["beat", "-S", "duroxide_celery.beat:TimerScheduler", "-s", str(self.logdir / f"beat-{self.tag}")],
                "INFO",
            )
            self._wait_ready(nodes)
            beat.wait_for_log("beat: Starting", START_TIMEOUT_S)
        else:
            self.app = Celery(
                f"bench-canvas-driver-{self.tag}",
                broker=self.cfg.broker_url,
                backend=self.cfg.result_url,
                set_as_current=False,
            )
            self.app.conf.update(
                task_serializer="json",
                result_serializer="json",
                accept_content=["json"],
                task_default_queue=CANVAS_QUEUE,
                broker_connection_retry_on_startup=True,
            )
            node = self._worker("canvas", "bench.prod_app:canvas", CANVAS_QUEUE, self.cfg.canvas_concurrency)
            self._wait_ready([node])

    def _celery(self, name: str, module: str, args: list[str], loglevel: str) -> Proc:
        argv = [sys.executable, "-m", "celery", "-q", "-A", module, *args, "-l", loglevel]
        proc = Proc(name, argv, self.env, self.logdir / f"{name}-{self.tag}.log")
        self.procs.append(proc)
        return proc

    def _worker(self, role: str, module: str, queue: str, concurrency: int) -> str:
        node = f"{role}-{self.tag}@bench"
        pool = os.environ.get("BENCH_POOL", "threads")
        args = ["worker", "-Q", queue, "-P", pool, "-c", str(concurrency), "-n", node]
        args += ["--without-mingle", "--without-gossip"]
        self._celery(f"worker-{role}", module, args, os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"))
        return node

    def _wait_ready(self, nodes: list[str]) -> None:
        """Until every worker answers a broadcast ping (consumers started, queues bound)."""
        assert self.app is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        missing = set(nodes)
        while missing:
            for proc in self.procs:
                proc.check_alive()
            if time.monotonic() > deadline:
                raise BenchFailure(
                    f"workers {sorted(missing)} did not answer ping in {START_TIMEOUT_S} s\n{self.logs()}"
                )
            replies = self.app.control.ping(destination=sorted(missing), timeout=0.5) or []
            for reply in replies:
                missing -= set(reply)

    # -- teardown ---------------------------------------------------------------------------------------------------
    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    def notable_log_lines(self) -> list[str]:
        """Log lines worth a look after a successful run: duroxide_celery's INFO notes (workers run at WARNING, so
        those come from its loggers: recovery sweep republishing, dropped outcomes, history reloads), warnings,
        errors and tracebacks; minus Celery's start-up noise."""
        notable = []
        for proc in self.procs:
            for line in proc.text().splitlines():
                if any(noise in line for noise in LOG_NOISE):
                    continue
                if LOG_NOTABLE.search(line) and not (proc.name == "beat" and BEAT_ROUTINE.search(line)):
                    notable.append(f"[{proc.name}] {line}")
        return notable

    def close(self) -> None:
        errors = []
        for proc in self.procs:
            try:
                proc.kill()
            except Exception as exc:  # noqa: BLE001 - kill the others anyway
                errors.append(f"kill {proc.name}: {exc}")
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.app.close()
        if self.provider is not None:
            self.provider.dispose()
        if self.schema is not None:
            try:
                engine = _pg_engine(self.cfg.pg_url)
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
                engine.dispose()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"drop schema {self.schema}: {exc}")
        try:
            prepare_redis(self.cfg)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"flush redis: {exc}")
        if errors:
            print("  !!! cleanup problems: " + "; ".join(errors), flush=True)


def _pg_engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.NullPool)


def prepare_redis(cfg: argparse.Namespace) -> None:
    """Flush the broker and result databases and mark them as the benchmark's (so the production tests, which claim
    an empty database, leave them alone). Refuses a database the production tests have claimed."""
    import redis

    for url in dict.fromkeys([cfg.broker_url, cfg.result_url]):
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        if client.exists(TESTS_CLAIM_KEY):
            client.close()
            raise BenchFailure(f"{url} is claimed by a production test session; choose another --broker-db/--result-db")
        client.flushdb()
        client.set(BENCH_CLAIM_KEY, os.getpid(), ex=3600)
        client.close()


# -- duroxide_celery workloads -------------------------------------------------------------------------------------
def _wait(client: Client, instance_id: str, deadline: Deadline):
    try:
        return client.wait_for_orchestration(instance_id, deadline.remaining_ms())
    except OperationTimedOut:
        raise RunTimeout(f"timed out after {deadline.seconds:g} s waiting for {instance_id}") from None


def _check_activity_history(client: Client, instance_id: str, n: int) -> None:
    """Exactly n activities scheduled and n completed, each step answered once."""
    events = client.read_execution_history(instance_id, 1)
    kinds = Counter(e.kind for e in events)
    answered = Counter(e.source_event_id for e in events if e.kind == "ActivityCompleted")
    if kinds["ActivityScheduled"] != n or kinds["ActivityCompleted"] != n or len(answered) != n:
        raise BenchFailure(
            f"{instance_id}: history has {kinds['ActivityScheduled']} ActivityScheduled, "
            f"{kinds['ActivityCompleted']} ActivityCompleted for {len(answered)} steps; expected {n} of each"
        )


def dx_w1(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    client = d.client
    ids = [f"w1-{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, instance_id in enumerate(ids):
        client.start_orchestration(instance_id, "Single", i)
    started = time.perf_counter()
    for i, instance_id in enumerate(ids):
        check(_wait(client, instance_id, deadline), i + 1, instance_id)
    wall = time.perf_counter() - t0
    return {"value": n / wall, "unit": "orch/s", "wall_s": wall, "start_all_s": started - t0}


def dx_w2(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    t0 = time.perf_counter()
    d.client.start_orchestration("w2", "FanOut", n)
    check(_wait(d.client, "w2", deadline), n * (n + 1) // 2, "w2")
    wall = time.perf_counter() - t0
    _check_activity_history(d.client, "w2", n)
    return {"value": wall, "unit": "s", "wall_s": wall}


def dx_w3(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    t0 = time.perf_counter()
    d.client.start_orchestration("w3", "Sequence", n)
    check(_wait(d.client, "w3", deadline), n, "w3")
    wall = time.perf_counter() - t0
    _check_activity_history(d.client, "w3", n)
    return {"value": wall * 1000 / n, "unit": "ms/step", "wall_s": wall}


def dx_w4(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    client = d.client
    ids = [f"w4-{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, instance_id in enumerate(ids):
        client.start_orchestration(instance_id, "Timer", i)
    for i, instance_id in enumerate(ids):
        check(_wait(client, instance_id, deadline), i, instance_id)
    wall = time.perf_counter() - t0
    lateness = []
    for instance_id in ids:
        events = client.read_execution_history(instance_id, 1)
        created = [e for e in events if e.kind == "TimerCreated"]
        fired = [e for e in events if e.kind == "TimerFired"]
        if len(created) != 1 or len(fired) != 1:
            raise BenchFailure(f"{instance_id}: {len(created)} TimerCreated, {len(fired)} TimerFired (expected 1 each)")
        fire_at = json.loads(created[0].data)["fire_at_ms"]
        created_at = created[0].timestamp_ms
        if fire_at - created_at != TIMER_MS:
            raise BenchFailure(f"{instance_id}: timer fire_at_ms {fire_at} is not created {created_at} + {TIMER_MS}")
        late = fired[0].timestamp_ms - fire_at
        if late < 0:
            raise BenchFailure(f"{instance_id}: timer fired {-late} ms EARLY (TimerFired at {fired[0].timestamp_ms})")
        lateness.append(late)
    return _lateness_result(lateness, wall)


def _lateness_result(lateness: list[float], wall: float) -> dict[str, Any]:
    return {
        "value": percentile(lateness, 50),
        "unit": "ms late (p50)",
        "p99": percentile(lateness, 99),
        "min": min(lateness),
        "max": max(lateness),
        "wall_s": wall,
    }


# -- plain Celery canvas workloads ---------------------------------------------------------------------------------
def _get(result: Any, deadline: Deadline) -> Any:
    from celery.exceptions import TimeoutError as CeleryTimeout

    try:
        return result.get(timeout=deadline.remaining(), interval=0.005)
    except CeleryTimeout:
        raise RunTimeout(f"timed out after {deadline.seconds:g} s waiting for {result!r}") from None


def cv_w1(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    sig = d.app.signature
    t0 = time.perf_counter()
    result = group(sig(ADD_ONE, args=(i,)) for i in range(n)).apply_async()
    started = time.perf_counter()
    values = _get(result, deadline)
    wall = time.perf_counter() - t0
    if values != [i + 1 for i in range(n)]:
        raise BenchFailure(f"group results wrong: {values[:10]}... ({len(values)} values)")
    return {"value": n / wall, "unit": "orch/s", "wall_s": wall, "start_all_s": started - t0}


def cv_w2(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    sig = d.app.signature
    t0 = time.perf_counter()
    result = chord([sig(ADD_ONE, args=(i,)) for i in range(n)], app=d.app)(sig(TOTAL))
    value = _get(result, deadline)
    wall = time.perf_counter() - t0
    if value != n * (n + 1) // 2:
        raise BenchFailure(f"chord result {value!r}, expected {n * (n + 1) // 2}")
    return {"value": wall, "unit": "s", "wall_s": wall}


def cv_w3(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    sig = d.app.signature
    t0 = time.perf_counter()
    result = chain(sig(ADD_ONE, args=(0,)), *[sig(ADD_ONE) for _ in range(n - 1)]).apply_async()
    value = _get(result, deadline)
    wall = time.perf_counter() - t0
    if value != n:
        raise BenchFailure(f"chain result {value!r}, expected {n}")
    return {"value": wall * 1000 / n, "unit": "ms/step", "wall_s": wall}


def cv_w4(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    task = d.app.signature(STARTED_AT)
    t0 = time.perf_counter()
    intended: dict[int, float] = {}
    results = []
    for i in range(n):
        intended[i] = time.time() * 1000 + TIMER_MS  # Celery's ETA is now + countdown, taken just after this
        results.append(task.clone(args=(i,)).apply_async(countdown=TIMER_MS / 1000))
    lateness = []
    for i, result in enumerate(results):
        value = _get(result, deadline)
        if not isinstance(value, dict) or value.get("tag") != i:
            raise BenchFailure(f"countdown task {i} returned {value!r}")
        late = value["started_ms"] - intended[i]
        if late < 0:
            raise BenchFailure(f"countdown task {i} started {-late:.1f} ms EARLY")
        lateness.append(late)
    wall = time.perf_counter() - t0
    return _lateness_result(lateness, wall)


WORKLOADS = {
    "duroxide": {"W1": dx_w1, "W2": dx_w2, "W3": dx_w3, "W4": dx_w4},
    "canvas": {"W1": cv_w1, "W2": cv_w2, "W3": cv_w3, "W4": cv_w4},
}


# -- driver --------------------------------------------------------------------------------------------------------
def _on_alarm(signum: int, frame: Any) -> None:
    raise RunTimeout("per-run timeout (SIGALRM backstop)")


def run_once(engine: str, workload: str, size: int, cfg: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    """One measurement in a fresh deployment; returns {"ok": True, value, unit, ...} or {"ok": False, error, logs}."""
    deployment = Deployment(engine, cfg, logdir)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(cfg.timeout + START_TIMEOUT_S + 30))  # backstop if a call blocks past the deadline
    try:
        deployment.start()
        setup_s = time.perf_counter() - t0
        result = WORKLOADS[engine][workload](deployment, size, Deadline(cfg.timeout))
        deployment.check_alive()  # a worker that crashed during the run is a failure even if the figures came out
        result["log_notes"] = deployment.notable_log_lines()
        result.update(ok=True, setup_s=setup_s, size=size, load=max(load, os.getloadavg()[0]))
        return result
    except Exception as exc:  # noqa: BLE001 - every failure (BenchFailure, RunTimeout, ...) is reported, not raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "logs": deployment.logs()}
    finally:
        signal.alarm(0)
        deployment.close()


def summarize(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio_text(workload: str, ours: float, peer: float) -> str:
    ratio = ours / peer if peer else math.inf
    better = ratio >= 1 if HIGHER_IS_BETTER[workload] else ratio <= 1
    factor = max(ratio, 1 / ratio) if ratio else math.inf
    return f"{ratio:8.3f}  ({LABELS['duroxide']} {factor:.1f}x {'better' if better else 'worse'})"


def print_summary(report: dict[str, Any], workloads: list[str], engines: list[str], runs: int) -> None:
    print(f"\n== medians over {runs} run(s)", flush=True)
    header = f"  {'figure':34}" + "".join(f"{LABELS[e]:>18}" for e in engines)
    if len(engines) == 2:
        header += f"  {'ratio ' + LABELS['duroxide'] + '/' + LABELS['canvas']}"
    print(header)
    for workload in workloads:
        per_engine = report["results"][workload]
        unit = next((per_engine[e]["unit"] for e in engines if per_engine[e]["unit"]), UNITS[workload])
        figures = [("value", f"{workload} {unit}")]
        if workload == "W4":
            figures.append(("p99", f"{workload} ms late (p99)"))
        for key, label in figures:
            medians = {}
            line = f"  {label + (' (higher better)' if HIGHER_IS_BETTER[workload] else ''):34}"
            for engine in engines:
                summary = per_engine[engine]["summary"].get(key)
                if summary:
                    medians[engine] = summary["median"]
                    line += f"{summary['median']:18.3f}"
                else:
                    line += f"{'FAILED':>18}"
            if len(medians) == 2:
                line += "  " + ratio_text(workload, medians["duroxide"], medians["canvas"])
            print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per workload and engine (default 3)")
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated, default W1,W2,W3,W4")
    parser.add_argument("--engines", default=",".join(ALL_ENGINES), help="comma-separated, default duroxide,canvas")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per single run, setup excluded (300)")
    parser.add_argument("--size", type=int, help="override the size of every workload (default 500/1000/200/100)")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--broker-db", type=int, default=9, help="Redis database of the broker (default 9)")
    parser.add_argument("--result-db", type=int, default=10, help="Redis database of canvas results (default 10)")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--orch-concurrency", type=int, default=4, help="orchestrator worker threads (4)")
    parser.add_argument("--act-concurrency", type=int, default=8, help="activity worker threads (8)")
    parser.add_argument("--canvas-concurrency", type=int, default=8, help="canvas worker threads (8)")
    parser.add_argument("--logs", metavar="DIR", help="keep the worker/beat logs in DIR (default: a temp dir)")
    parser.add_argument("--json", metavar="FILE", help="write every run and the summary to FILE")
    cfg = parser.parse_args(argv)
    workloads = [w.strip().upper() for w in cfg.workloads.split(",") if w.strip()]
    engines = [e.strip() for e in cfg.engines.split(",") if e.strip()]
    bad = [w for w in workloads if w not in ALL_WORKLOADS] + [e for e in engines if e not in ALL_ENGINES]
    if bad:
        parser.error(f"unknown workload/engine: {', '.join(bad)}")
    if cfg.broker_db == cfg.result_db:
        parser.error("--broker-db and --result-db must differ")
    redis_url = cfg.redis_url.rstrip("/")
    cfg.broker_url = f"{redis_url}/{cfg.broker_db}"
    cfg.result_url = f"{redis_url}/{cfg.result_db}"
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` kills its process groups.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda s, f: sys.exit(128 + s))

    with contextlib.ExitStack() as stack:
        if cfg.logs:
            logdir = Path(cfg.logs)
            logdir.mkdir(parents=True, exist_ok=True)
        else:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-production-")))
        return _run_all(cfg, workloads, engines, logdir)


def _run_all(cfg: argparse.Namespace, workloads: list[str], engines: list[str], logdir: Path) -> int:
    print(
        f"broker {cfg.broker_url}, canvas results {cfg.result_url}, store {cfg.pg_url} (fresh schema per run); "
        f"duroxide workers -P threads -c {cfg.orch_concurrency} (turns) / -c {cfg.act_concurrency} (activities) + "
        f"beat TimerScheduler; canvas worker -P threads -c {cfg.canvas_concurrency}",
        flush=True,
    )
    report: dict[str, Any] = {"runs": cfg.runs, "timeout_s": cfg.timeout, "python": sys.version, "results": {}}
    collected = {w: {e: [] for e in engines} for w in workloads}
    failures = 0
    for run in range(1, cfg.runs + 1):
        for workload in workloads:
            size = cfg.size or DEFAULT_SIZES[workload]
            for engine in engines:
                print(f"  run {run} {workload} {LABELS[engine]:16} ", end="", flush=True)
                result = run_once(engine, workload, size, cfg, logdir)
                collected[workload][engine].append(result)
                if result["ok"]:
                    extra = f", p99 {result['p99']:.1f}" if "p99" in result else ""
                    context = f"wall {result['wall_s']:.2f} s, load {result['load']:.1f}"
                    print(f"{result['value']:10.3f} {result['unit']}{extra}  ({context})", flush=True)
                    notes = result["log_notes"]
                    for line in notes[:10]:
                        print(f"      ! {line}", flush=True)
                    if len(notes) > 10:
                        print(f"      ! ... {len(notes) - 10} more notable log lines", flush=True)
                else:
                    failures += 1
                    print(f"\n  !!! FAILED run {run} {workload} {LABELS[engine]}: {result['error']}", flush=True)
                    for line in result.get("logs", "").splitlines()[-60:]:
                        print(f"  !!!   {line}", flush=True)

    for workload in workloads:
        per_engine = report["results"].setdefault(workload, {})
        for engine in engines:
            runs = collected[workload][engine]
            ok = [r for r in runs if r["ok"]]
            summary = {}
            if ok:
                summary["value"] = summarize([r["value"] for r in ok])
                if workload == "W4":
                    summary["p99"] = summarize([r["p99"] for r in ok])
            unit = ok[0]["unit"] if ok else None
            per_engine[engine] = {"runs": runs, "summary": summary, "unit": unit}
    print_summary(report, workloads, engines, cfg.runs)
    loads = [r["load"] for w in collected.values() for runs in w.values() for r in runs if r["ok"]]
    cpus = os.cpu_count() or 1
    if loads and max(loads) > cpus:
        print(
            f"  note: the 1-minute load average reached {max(loads):.1f} on {cpus} CPUs during the runs: "
            "other processes competed with the workers, so the figures are noisy",
            flush=True,
        )

    if cfg.json:
        Path(cfg.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {cfg.json}")
    if failures:
        print(f"\n!!! {failures} run(s) FAILED (see above)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
