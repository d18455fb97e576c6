"""Production-mode benchmark: duroxide_celery with separate `celery worker`/`celery beat` processes on Redis and
PostgreSQL, against its peers in the same interleaved run: a plain Celery canvas (prefork -c 2, and threads -c 8
as an extra row) on the same broker, and DBOS on PostgreSQL (see bench/README.md).

    python bench/production.py --runs 3
    python bench/production.py --quick          # W1-W4 at small sizes, 1 run: a smoke test of the harness
    python bench/production.py --bulk           # plus a W1 row whose starts go through one start_orchestrations

Every single measurement (one workload, one engine, one run) gets a fresh deployment: its own Redis server (or the
shared one's broker and result databases flushed, with --shared-redis), a fresh PostgreSQL schema (dropped
afterwards), and new worker/beat subprocesses, each in its own process group and SIGKILLed (group) when the
measurement ends, whatever happened. Besides each workload's figure it records the CPU time of every process
involved and the SQL statements and transactions over the measured window (bench/measure.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

import sqlalchemy as sa  # noqa: E402
from celery import Celery, chain, chord, group  # noqa: E402

from bench.measure import (  # noqa: E402
    CpuMeter,
    StatementCounter,
    add_counts,
    count_delta,
    find_redis_server,
    read_stats_dir,
    stats_delta,
)
from bench.workloads import BenchFailure, check  # noqa: E402
from duroxide_celery import Client, OperationTimedOut, PostgresProvider  # noqa: E402

ALL_WORKLOADS = ("W1", "W2", "W3", "W4")
ALL_ENGINES = ("duroxide", "duroxide-shared", "canvas", "canvas-threads", "dbos")
LABELS = {
    "duroxide": "duroxide_celery",
    "duroxide-shared": "duroxide shared",
    "canvas": "celery canvas",
    "canvas-threads": "canvas threads",
    "dbos": "DBOS postgres",
    "duroxide-bulk": "duroxide bulk",
}
#: Rows of the issue's table (bench/README.md says what each deployment is).
TABLE_LABELS = {
    "duroxide": "duroxide-celery production",
    "duroxide-shared": "duroxide-celery production, 2 workers x both queues",
    "canvas": "Celery canvas, prefork -c 2 (not durable)",
    "canvas-threads": "Celery canvas, threads -c 8 (not durable)",
    "dbos": "DBOS, PostgreSQL",
    "duroxide-bulk": "duroxide-celery production, W1 bulk start",
}
#: `--bulk`: W1 on the duroxide deployment with its starts in one Client.start_orchestrations call (the plain
#: "duroxide" row keeps measuring the per-call path).
BULK_ENGINE = "duroxide-bulk"
DEPLOYED_AS = {BULK_ENGINE: "duroxide"}
DEFAULT_SIZES = {"W1": 500, "W2": 1000, "W3": 200, "W4": 100}
QUICK_SIZES = {"W1": 50, "W2": 100, "W3": 20, "W4": 10}
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


class PrivateRedis:
    """A redis-server of this measurement alone (127.0.0.1, a free port, no persistence): its CPU time and command
    count are exactly this measurement's."""

    def __init__(self, logdir: Path, tag: str):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        self._log = open(logdir / f"redis-{tag}.log", "ab")  # noqa: SIM115 - closed in kill()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise BenchFailure(f"private redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._log.close()


def redis_commands(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


class Deployment:
    """One measurement's processes and connections; `close()` always kills every process and drops the schema."""

    def __init__(self, engine: str, cfg: argparse.Namespace, logdir: Path, workload: str, size: int):
        self.engine = engine
        self.workload = workload
        self.size = size
        self.cfg = cfg
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.tag = uuid.uuid4().hex[:10]
        self.appname = f"bench-{self.tag}"
        self.schema: str | None = None
        self.provider: PostgresProvider | None = None
        self.client: Client | None = None
        self.app: Celery | None = None
        self.redis: PrivateRedis | None = None
        self.dbos: subprocess.Popen | None = None
        self.broker_url = cfg.broker_url
        self.result_url = cfg.result_url
        self.stats_dir = logdir / f"stats-{self.tag}"
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        self.counter = StatementCounter.install()  # this process's statements (the duroxide Client)
        self.meter: CpuMeter | None = None
        self.cost: dict[str, Any] | None = None
        self._window: tuple[dict, dict, int | None] | None = None
        self.profilers: list[subprocess.Popen] = []
        self._saved_appname = os.environ.get("PGAPPNAME")
        self.env: dict[str, str] = {}

    # -- setup ------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.engine == "dbos":
            self.broker_url = self.result_url = None  # DBOS uses no Redis
        elif self.cfg.shared_redis:
            prepare_redis(self.cfg)
        else:
            self.redis = PrivateRedis(self.logdir, self.tag)
            self.broker_url, self.result_url = (
                f"{self.redis.url}/{self.cfg.broker_db}",
                f"{self.redis.url}/{self.cfg.result_db}",
            )
        # Every PostgreSQL connection of this measurement (driver, workers, beat, DBOS) carries this name, so the CPU
        # meter finds its backends.
        os.environ["PGAPPNAME"] = self.appname
        self.env = {
            **os.environ,
            "BENCH_BROKER_URL": self.broker_url or "",
            "BENCH_RESULT_BACKEND": self.result_url or "",
            "BENCH_DATABASE_URL": self.cfg.pg_url,
            "BENCH_STATS_DIR": str(self.stats_dir),
            "PGAPPNAME": self.appname,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")])),
        }
        if self.engine in ("duroxide", "duroxide-shared"):
            self.schema = f"bench_{self.tag}"
            self.env["BENCH_DATABASE_SCHEMA"] = self.schema
            self.provider = PostgresProvider.connect_with_schema(self.cfg.pg_url, self.schema)
            _ = self.provider.store  # create the schema before three processes race to
            self.app = Celery(f"bench-driver-{self.tag}", broker=self.broker_url, set_as_current=False)
            self.app.conf.update(
                task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True
            )
            self.client = Client(self.provider, app=self.app)
            pool = os.environ.get("BENCH_POOL", "threads")
            if self.engine == "duroxide":  # the issue's deployment: turns and activities in separate workers
                nodes = [
                    self._worker("orch", "bench.prod_app", "duroxide.orchestrator", pool, self.cfg.orch_concurrency),
                    self._worker("act", "bench.prod_app", "duroxide.activities", pool, self.cfg.act_concurrency),
                ]
            else:  # as many processes and threads, each worker on both queues: steps run inline (tasks/inline.py)
                both = "duroxide.orchestrator,duroxide.activities"
                threads = (self.cfg.orch_concurrency + self.cfg.act_concurrency) // 2
                nodes = [self._worker(f"both{i}", "bench.prod_app", both, pool, threads) for i in (1, 2)]
            beat = self._celery(
                "beat",
                "bench.prod_app",
                ["beat", "-S", "duroxide_celery.beat:TimerScheduler", "-s", str(self.logdir / f"beat-{self.tag}")],
                "INFO",
            )
            self._wait_ready(nodes)
            beat.wait_for_log("beat: Starting", START_TIMEOUT_S)
        elif self.engine == "dbos":
            self.schema = f"dbos_{self.tag}"
            argv = [sys.executable, str(BENCH_DIR / "dbos_bench.py"), "--workload", self.workload]
            argv += ["--url", self.cfg.pg_url, "--schema", self.schema, "--size", str(self.size)]
            argv += ["--handshake"]
            self._dbos_log = open(self.logdir / f"dbos-{self.tag}.log", "ab")  # noqa: SIM115 - closed in close()
            self.dbos = subprocess.Popen(
                argv,
                cwd=REPO_DIR,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._dbos_log,
                text=True,
                start_new_session=True,
            )
            line = self._dbos_line(START_TIMEOUT_S)
            if line.strip() != "READY":
                raise BenchFailure(f"DBOS process said {line!r} instead of READY:\n{self.dbos_log_tail()}")
        else:
            self.app = Celery(
                f"bench-canvas-driver-{self.tag}",
                broker=self.broker_url,
                backend=self.result_url,
                set_as_current=False,
            )
            self.app.conf.update(
                task_serializer="json",
                result_serializer="json",
                accept_content=["json"],
                task_default_queue=CANVAS_QUEUE,
                broker_connection_retry_on_startup=True,
            )
            if self.engine == "canvas":
                node = self._worker("canvas", "bench.prod_app:canvas", CANVAS_QUEUE, "prefork", self.cfg.canvas_prefork)
            else:
                node = self._worker(
                    "canvas", "bench.prod_app:canvas", CANVAS_QUEUE, "threads", self.cfg.canvas_concurrency
                )
            self._wait_ready([node])

    def _dbos_line(self, timeout_s: float) -> str:
        """The DBOS process's next stdout line (within timeout_s)."""
        import selectors

        assert self.dbos is not None and self.dbos.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.dbos.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise RunTimeout(f"the DBOS process said nothing within {timeout_s:g} s:\n{self.dbos_log_tail()}")
        line = self.dbos.stdout.readline()
        if not line:
            raise BenchFailure(f"the DBOS process exited (code {self.dbos.wait()}):\n{self.dbos_log_tail()}")
        return line

    def dbos_log_tail(self, lines: int = 25) -> str:
        text = (self.logdir / f"dbos-{self.tag}.log").read_text(errors="replace")
        return "\n".join(f"[dbos] {line}" for line in text.splitlines()[-lines:])

    def _celery(self, name: str, module: str, args: list[str], loglevel: str) -> Proc:
        argv = [sys.executable, "-m", "celery", "-q", "-A", module, *args, "-l", loglevel]
        proc = Proc(name, argv, self.env, self.logdir / f"{name}-{self.tag}.log")
        self.procs.append(proc)
        return proc

    def _worker(self, role: str, module: str, queue: str, pool: str, concurrency: int) -> str:
        node = f"{role}-{self.tag}@bench"
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

    # -- the measured window ----------------------------------------------------------------------------------------
    def begin_window(self) -> None:
        """Start the cost accounting (CPU of every process, statements, Redis commands) right before the workload."""
        redis_pid = None
        if self.redis is not None:
            redis_pid = self.redis.pid
        elif self.broker_url is not None:
            redis_pid = find_redis_server(self.cfg.redis_port)
        self.meter = CpuMeter(pg_dsn=self.cfg.pg_url, pg_appname=self.appname, redis_pid=redis_pid)
        for proc in self.procs:
            self.meter.add_tree(proc.name, proc.popen.pid)
        if self.dbos is not None:
            self.meter.add_tree("dbos", self.dbos.pid)
        redis_cmds = redis_commands(self.broker_url) if self.broker_url else None
        self._window = (self.counter.snapshot(), read_stats_dir(self.stats_dir), redis_cmds)
        if self.cfg.profile:
            self._start_profilers()
        self.meter.start()

    def _start_profilers(self) -> None:
        """py-spy on every worker, beat and DBOS process over the window (--profile DIR): collapsed stacks of the
        active threads (idle ones are left out), without pausing the process, in DIR/<run>-<engine>-<process>.txt."""
        targets = [(proc.name, proc.popen.pid) for proc in self.procs]
        if self.dbos is not None:
            targets.append(("dbos", self.dbos.pid))
        directory = Path(self.cfg.profile)
        directory.mkdir(parents=True, exist_ok=True)
        for name, pid in targets:
            out = directory / f"{self.workload}-{self.engine}-{self.tag}-{name}.txt"
            argv = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
            argv += ["--rate", "200", "--gil", "--nolineno", "--nonblocking", "--subprocesses"]
            log = open(self.logdir / f"py-spy-{name}-{self.tag}.log", "ab")  # noqa: SIM115 - the child keeps it
            self.profilers.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        time.sleep(1.0)  # py-spy attaches within a few hundred ms; the window starts after that

    def _stop_profilers(self) -> None:
        for prof in self.profilers:
            with contextlib.suppress(ProcessLookupError):
                prof.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for prof in self.profilers:
            try:
                prof.wait(timeout=30)
            except subprocess.TimeoutExpired:
                prof.kill()
        self.profilers = []

    def end_window(self, sql: dict[str, int] | None = None) -> None:
        """Stop the accounting (once; the workloads call it as soon as their figure is taken, before any checks).
        `sql`: statements the engine counted itself (the DBOS process)."""
        if self.meter is None or self.cost is not None:
            return
        time.sleep(0.15)  # the processes' statement files are written every 50 ms
        cpu = self.meter.stop()
        self._stop_profilers()
        own0, files0, redis0 = self._window
        counts = stats_delta(files0, read_stats_dir(self.stats_dir))
        client = count_delta(own0, self.counter.snapshot())
        if sql:
            add_counts(client, sql)
        total = add_counts(add_counts({}, counts), client)
        redis_cmds = redis_commands(self.broker_url) - redis0 - 1 if redis0 is not None else 0  # minus the 1st INFO
        self.cost = {
            "cpu_ms": cpu,
            "sql": total,
            "sql_client": client,
            "redis_commands": redis_cmds,
            "redis_shared": self.redis is None and self.broker_url is not None,
        }

    # -- teardown ---------------------------------------------------------------------------------------------------
    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def logs(self) -> str:
        text = "\n".join(p.tail() for p in self.procs)
        if self.dbos is not None:
            text += "\n" + self.dbos_log_tail()
        return text

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
        if self.meter is not None and self.cost is None:
            with contextlib.suppress(Exception):
                self.meter.stop()
        self._stop_profilers()
        for proc in self.procs:
            try:
                proc.kill()
            except Exception as exc:  # noqa: BLE001 - kill the others anyway
                errors.append(f"kill {proc.name}: {exc}")
        if self.dbos is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.dbos.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.dbos.wait(timeout=10)
            for stream in (self.dbos.stdin, self.dbos.stdout):
                with contextlib.suppress(Exception):
                    stream.close()
            self._dbos_log.close()
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.app.close()
        # Canvas results unsubscribe from the result backend when they are collected, and the driver app's backend
        # holds the pending ones: drop the app and collect now, while this measurement's Redis still runs, not
        # during a later measurement (where they would retry against the killed server and stall the driver).
        self.app = self.client = None
        gc.collect()
        if self.provider is not None:
            self.provider.dispose()
        if self._saved_appname is None:
            os.environ.pop("PGAPPNAME", None)
        else:
            os.environ["PGAPPNAME"] = self._saved_appname
        if self.schema is not None:
            try:
                engine = _pg_engine(self.cfg.pg_url)
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
                engine.dispose()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"drop schema {self.schema}: {exc}")
        if self.redis is not None:
            self.redis.kill()
        elif self.cfg.shared_redis and self.broker_url is not None:
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


def dx_w1(d: Deployment, n: int, deadline: Deadline, bulk: bool = False) -> dict[str, Any]:
    """W1: n single-activity orchestrations, started one call each (the figure issue 13 judges) or, `bulk`, in one
    Client.start_orchestrations call (one transaction, one batch of wake-ups)."""
    client = d.client
    ids = [f"w1-{i}" for i in range(n)]
    t0 = time.perf_counter()
    if bulk:
        client.start_orchestrations([(instance_id, "Single", i) for i, instance_id in enumerate(ids)])
    else:
        for i, instance_id in enumerate(ids):
            client.start_orchestration(instance_id, "Single", i)
    started = time.perf_counter()
    for i, instance_id in enumerate(ids):
        check(_wait(client, instance_id, deadline), i + 1, instance_id)
    wall = time.perf_counter() - t0
    d.end_window()
    return {"value": n / wall, "unit": "orch/s", "wall_s": wall, "start_all_s": started - t0}


def dx_w2(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    t0 = time.perf_counter()
    d.client.start_orchestration("w2", "FanOut", n)
    check(_wait(d.client, "w2", deadline), n * (n + 1) // 2, "w2")
    wall = time.perf_counter() - t0
    d.end_window()
    _check_activity_history(d.client, "w2", n)
    return {"value": wall, "unit": "s", "wall_s": wall}


def dx_w3(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    t0 = time.perf_counter()
    d.client.start_orchestration("w3", "Sequence", n)
    check(_wait(d.client, "w3", deadline), n, "w3")
    wall = time.perf_counter() - t0
    d.end_window()
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
    d.end_window()
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
    d.end_window()
    if values != [i + 1 for i in range(n)]:
        raise BenchFailure(f"group results wrong: {values[:10]}... ({len(values)} values)")
    return {"value": n / wall, "unit": "orch/s", "wall_s": wall, "start_all_s": started - t0}


def cv_w2(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    sig = d.app.signature
    t0 = time.perf_counter()
    result = chord([sig(ADD_ONE, args=(i,)) for i in range(n)], app=d.app)(sig(TOTAL))
    value = _get(result, deadline)
    wall = time.perf_counter() - t0
    d.end_window()
    if value != n * (n + 1) // 2:
        raise BenchFailure(f"chord result {value!r}, expected {n * (n + 1) // 2}")
    return {"value": wall, "unit": "s", "wall_s": wall}


def cv_w3(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    sig = d.app.signature
    t0 = time.perf_counter()
    result = chain(sig(ADD_ONE, args=(0,)), *[sig(ADD_ONE) for _ in range(n - 1)]).apply_async()
    value = _get(result, deadline)
    wall = time.perf_counter() - t0
    d.end_window()
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
    d.end_window()
    return _lateness_result(lateness, wall)


# -- DBOS (bench/dbos_bench.py in its own process, started and launched by Deployment.start) -----------------------
def dbos_run(d: Deployment, n: int, deadline: Deadline) -> dict[str, Any]:
    """Any workload: the DBOS process runs the one it was started for (on "go"), prints MEASURED, then waits."""
    assert d.dbos is not None and d.dbos.stdin is not None
    d.dbos.stdin.write("go\n")
    d.dbos.stdin.flush()
    while True:
        line = d._dbos_line(deadline.remaining())
        if line.startswith("MEASURED "):
            break
        if line.startswith("RESULT "):
            raise BenchFailure(f"DBOS run failed: {line[7:].strip()}\n{d.dbos_log_tail()}")
    measured = json.loads(line[len("MEASURED ") :])
    d.end_window(sql=measured.pop("sql", None))
    d.dbos.stdin.write("exit\n")
    d.dbos.stdin.flush()
    for key in ("engine", "workload", "size"):
        measured.pop(key, None)
    measured["dbos_self_cpu_ms"] = measured.pop("cpu_ms", None)  # its own getrusage: a cross-check of the meter
    measured["dbos_setup_s"] = measured.pop("setup_s", None)
    return measured


WORKLOADS = {
    "duroxide": {"W1": dx_w1, "W2": dx_w2, "W3": dx_w3, "W4": dx_w4},
    "duroxide-shared": {"W1": dx_w1, "W2": dx_w2, "W3": dx_w3, "W4": dx_w4},
    "canvas": {"W1": cv_w1, "W2": cv_w2, "W3": cv_w3, "W4": cv_w4},
    "canvas-threads": {"W1": cv_w1, "W2": cv_w2, "W3": cv_w3, "W4": cv_w4},
    "dbos": {"W1": dbos_run, "W2": dbos_run, "W3": dbos_run, "W4": dbos_run},
    BULK_ENGINE: {"W1": partial(dx_w1, bulk=True)},
}


# -- driver --------------------------------------------------------------------------------------------------------
def _on_alarm(signum: int, frame: Any) -> None:
    raise RunTimeout("per-run timeout (SIGALRM backstop)")


def run_once(engine: str, workload: str, size: int, cfg: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    """One measurement in a fresh deployment; returns {"ok": True, value, unit, ...} or {"ok": False, error, logs}."""
    deployment = Deployment(DEPLOYED_AS.get(engine, engine), cfg, logdir, workload, size)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(cfg.timeout + START_TIMEOUT_S + 30))  # backstop if a call blocks past the deadline
    try:
        deployment.start()
        setup_s = time.perf_counter() - t0
        deployment.begin_window()
        result = WORKLOADS[engine][workload](deployment, size, Deadline(cfg.timeout))
        deployment.end_window()  # no-op if the workload did (as soon as its figure was taken)
        result["cost"] = deployment.cost
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


def per_unit_cost(result: dict[str, Any], workload: str, size: int) -> dict[str, float] | None:
    """A successful run's cost per orchestration (W1, W4), per step (W2, W3: per activity) or per task (canvas)."""
    cost = result.get("cost")
    if not cost:
        return None
    sql = cost["sql"]
    return {
        "cpu_ms": cost["cpu_ms"]["total"] / size,
        "statements": sql.get("statements", 0) / size,
        "transactions": (sql.get("commits", 0) + sql.get("rollbacks", 0)) / size,
        "client_statements": cost["sql_client"].get("statements", 0) / size,
        "redis_commands": cost["redis_commands"] / size,
    }


def summarize_runs(workload: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["ok"]]
    summary: dict[str, Any] = {}
    if ok:
        summary["value"] = summarize([r["value"] for r in ok])
        if workload == "W4":
            summary["p99"] = summarize([r["p99"] for r in ok])
        costs = [c for r in ok if (c := per_unit_cost(r, workload, r["size"]))]
        for key in costs[0] if costs else []:
            summary[f"per_unit_{key}"] = summarize([c[key] for c in costs])
        kinds = sorted({k for r in ok if r.get("cost") for k in r["cost"]["sql"].get("by_kind", {})})
        summary["per_unit_statement_kinds"] = {
            k: statistics.median([r["cost"]["sql"]["by_kind"].get(k, 0) / r["size"] for r in ok if r.get("cost")])
            for k in kinds
        }
        parts = sorted({k for r in ok if r.get("cost") for k in r["cost"]["cpu_ms"]})
        summary["cpu_ms_parts"] = {
            k: statistics.median([r["cost"]["cpu_ms"].get(k, 0) for r in ok if r.get("cost")]) for k in parts
        }
    return summary


def _median(report: dict[str, Any], workload: str, engine: str, key: str = "value") -> float | None:
    summary = report["results"].get(workload, {}).get(engine, {}).get("summary") or {}
    return summary[key]["median"] if key in summary else None


def _runs(report: dict[str, Any], workload: str, engine: str) -> list[dict[str, Any]]:
    return [r for r in report["results"].get(workload, {}).get(engine, {}).get("runs", []) if r.get("ok")]


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(report: dict[str, Any], workloads: list[str], engines: list[str], runs: int) -> None:
    """The issue's table (medians over the runs), then the cost of one W1 orchestration, then the targets."""
    print(f"\n== medians over {runs} run(s) (W1 orch/s higher is better; the others lower)", flush=True)
    print(f"| {'system':42} | W1 orch/s | W2 s   | W3 ms/step | W4 late p50/p99 ms |")
    print(f"|{'-' * 44}|-----------|--------|------------|--------------------|")
    for engine in engines:
        w1 = _fmt(_median(report, "W1", engine), ".1f")
        w2 = _fmt(_median(report, "W2", engine), ".2f")
        w3 = _fmt(_median(report, "W3", engine), ".2f")
        p50, p99 = _median(report, "W4", engine), _median(report, "W4", engine, "p99")
        w4 = f"{_fmt(p50, '.1f')} / {_fmt(p99, '.1f')}"
        print(f"| {TABLE_LABELS[engine]:42} | {w1:>9} | {w2:>6} | {w3:>10} | {w4:>18} |")

    print("\n== cost per W1 orchestration (canvas: per task; DBOS: per workflow), medians over the runs", flush=True)
    print(f"| {'system':42} | CPU ms | SQL stmts (client) | SQL tx | Redis cmds |")
    print(f"|{'-' * 44}|--------|--------------------|--------|------------|")
    for engine in engines:
        cpu = _median(report, "W1", engine, "per_unit_cpu_ms")
        stmts = _median(report, "W1", engine, "per_unit_statements")
        client = _median(report, "W1", engine, "per_unit_client_statements")
        tx = _median(report, "W1", engine, "per_unit_transactions")
        cmds = _median(report, "W1", engine, "per_unit_redis_commands")
        sql = f"{_fmt(stmts, '.1f')} ({_fmt(client, '.1f')})" if stmts else "—"
        tx_text = _fmt(tx, ".1f") if tx else "—"
        cpu_text, cmds_text = _fmt(cpu, ".2f"), _fmt(cmds, ".1f")
        print(f"| {TABLE_LABELS[engine]:42} | {cpu_text:>6} | {sql:>18} | {tx_text:>6} | {cmds_text:>10} |")
    if any(r.get("cost", {}).get("redis_shared") for e in engines for r in _runs(report, "W1", e)):
        print("  (--shared-redis: the Redis CPU and command counts include the other users of that server)")
    for engine in engines:
        parts = (report["results"].get("W1", {}).get(engine, {}).get("summary") or {}).get("cpu_ms_parts")
        if parts:
            skip = ("total", "pg_server_total_ms", "postgres backends (count)")
            text = ", ".join(f"{k} {v:.0f}" for k, v in parts.items() if k not in skip)
            if "postgres backends (count)" in parts:
                text += f" ({parts['postgres backends (count)']:.0f} backends)"
            server = parts.get("pg_server_total_ms")
            server_text = f"; whole PostgreSQL server (shared) {server:.0f}" if server is not None else ""
            print(f"  W1 CPU ms, {LABELS[engine]}: {text}{server_text}")

    for engine in engines:
        kinds = (report["results"].get("W1", {}).get(engine, {}).get("summary") or {}).get("per_unit_statement_kinds")
        if kinds:
            top = sorted(kinds.items(), key=lambda kv: -kv[1])[:14]
            print(f"  W1 statements per orchestration, {LABELS[engine]}: " + ", ".join(f"{k} {v:.2f}" for k, v in top))

    print("\n== targets (issue 13), medians of this run", flush=True)
    targets = []

    def ratio(name: str, ours: float | None, peer: float | None, limit: float, higher: bool, peer_name: str):
        if ours is None or peer is None or not peer:
            print(f"  {name:58} —  (needs {peer_name})")
            return
        value = ours / peer
        met = value >= limit if higher else value <= limit
        targets.append({"target": name, "ratio": value, "limit": limit, "met": met})
        print(f"  {name:58} {value:6.3f}  ({'>=' if higher else '<='} {limit:g}: {'met' if met else 'NOT met'})")

    for ours, row in (("duroxide", "production"), ("duroxide-shared", "shared workers")):
        if not any(ours in (report["results"].get(w) or {}) for w in ALL_WORKLOADS):
            continue
        # (workload, what, peer engine, limit, higher is better): issue 13's ratio targets.
        for workload, what, peer, limit, higher in (
            ("W1", "canvas prefork (orch/s)", "canvas", 1.0, True),
            ("W3", "DBOS PostgreSQL (ms/step)", "dbos", 1.0, False),
            ("W2", "canvas prefork chord (s)", "canvas", 0.8, False),
        ):
            name = f"{workload} {row} / {what}"
            peer_name = f"{ours} and {peer} {workload}"
            ratio(name, _median(report, workload, ours), _median(report, workload, peer), limit, higher, peer_name)
        for key, limit in (("value", 10.0), ("p99", 30.0)):
            late = _median(report, "W4", ours, key)
            name = f"W4 {row} lateness {'p50' if key == 'value' else 'p99'} (ms)"
            if late is None:
                print(f"  {name:58} —  (needs {ours} W4)")
            else:
                met = late <= limit
                targets.append({"target": name, "value": late, "limit": limit, "met": met})
                print(f"  {name:58} {late:6.1f}  (<= {limit:g} ms: {'met' if met else 'NOT met'})")
        cpu_ours, cpu_canvas = (
            _median(report, "W1", ours, "per_unit_cpu_ms"),
            _median(report, "W1", "canvas", "per_unit_cpu_ms"),
        )
        if cpu_ours is not None and cpu_canvas:
            name = f"W1 CPU ms per orchestration ({row}) / canvas per task"
            print(f"  {name:58} {cpu_ours / cpu_canvas:6.2f}  (cost)")
    report["targets"] = targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per workload and engine (default 3)")
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated, default W1,W2,W3,W4")
    parser.add_argument(
        "--engines", default=",".join(ALL_ENGINES), help="comma-separated, default " + ",".join(ALL_ENGINES)
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per single run, setup excluded (300)")
    parser.add_argument("--size", type=int, help="override the size of every workload (default 500/1000/200/100)")
    parser.add_argument("--quick", action="store_true", help="1 run at sizes 50/100/20/10 (a smoke test)")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument(
        "--shared-redis",
        action="store_true",
        help="use the Redis server at --redis-url instead of a private redis-server per measurement",
    )
    parser.add_argument("--broker-db", type=int, default=9, help="Redis database of the broker (default 9)")
    parser.add_argument("--result-db", type=int, default=10, help="Redis database of canvas results (default 10)")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--orch-concurrency", type=int, default=4, help="orchestrator worker threads (4)")
    parser.add_argument("--act-concurrency", type=int, default=8, help="activity worker threads (8)")
    parser.add_argument("--canvas-prefork", type=int, default=2, help="canvas prefork worker processes (2)")
    parser.add_argument("--canvas-concurrency", type=int, default=8, help="canvas-threads worker threads (8)")
    parser.add_argument("--logs", metavar="DIR", help="keep the worker/beat logs in DIR (default: a temp dir)")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy every worker/beat/DBOS process over the window into DIR (then bench/profile_summary.py DIR)",
    )
    parser.add_argument(
        "--bulk",
        action="store_true",
        help="also run W1 with its starts in one Client.start_orchestrations call (an extra row)",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write every run and the summary to FILE (default bench/results/<time>-production.json)",
    )
    cfg = parser.parse_args(argv)
    if cfg.quick:
        cfg.runs = 1
    workloads = [w.strip().upper() for w in cfg.workloads.split(",") if w.strip()]
    engines = [e.strip() for e in cfg.engines.split(",") if e.strip()]
    bad = [w for w in workloads if w not in ALL_WORKLOADS] + [e for e in engines if e not in ALL_ENGINES]
    if bad:
        parser.error(f"unknown workload/engine: {', '.join(bad)}")
    if cfg.broker_db == cfg.result_db:
        parser.error("--broker-db and --result-db must differ")
    if cfg.bulk and "W1" in workloads and "duroxide" in engines:
        engines.insert(engines.index("duroxide") + 1, BULK_ENGINE)
    if "dbos" in engines and not _dbos_available():
        print("note: DBOS is not installed (`pip install dbos`): the DBOS peer is skipped", flush=True)
        engines.remove("dbos")
    if not cfg.shared_redis and not shutil.which("redis-server"):
        print("note: no redis-server on PATH: using the shared Redis at --redis-url", flush=True)
        cfg.shared_redis = True
    redis_url = cfg.redis_url.rstrip("/")
    cfg.redis_port = int(redis_url.rsplit(":", 1)[-1]) if redis_url.rsplit(":", 1)[-1].isdigit() else 6379
    cfg.broker_url = f"{redis_url}/{cfg.broker_db}"
    cfg.result_url = f"{redis_url}/{cfg.result_db}"
    if not cfg.json:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        cfg.json = str(BENCH_DIR / "results" / f"{stamp}-production.json")
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


def _dbos_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("dbos") is not None


def _run_all(cfg: argparse.Namespace, workloads: list[str], engines: list[str], logdir: Path) -> int:
    redis_text = f"shared Redis {cfg.redis_url}" if cfg.shared_redis else "a private redis-server per measurement"
    print(
        f"broker and canvas results on {redis_text}, store {cfg.pg_url} (fresh schema per run); "
        f"duroxide workers -P threads -c {cfg.orch_concurrency} (turns) / -c {cfg.act_concurrency} (activities) + "
        f"beat TimerScheduler; canvas worker -P prefork -c {cfg.canvas_prefork} (canvas-threads: -P threads "
        f"-c {cfg.canvas_concurrency}); DBOS in its own process on PostgreSQL (fresh schema per run)",
        flush=True,
    )
    report: dict[str, Any] = {
        "runs": cfg.runs,
        "timeout_s": cfg.timeout,
        "python": sys.version,
        "cpus": os.cpu_count(),
        "engines": {e: TABLE_LABELS[e] for e in engines},
        "results": {},
    }
    collected = {w: {e: [] for e in engines} for w in workloads}
    failures = 0
    for run in range(1, cfg.runs + 1):
        for workload in workloads:
            size = cfg.size or (QUICK_SIZES if cfg.quick else DEFAULT_SIZES)[workload]
            for engine in engines:
                if workload not in WORKLOADS[engine]:
                    continue  # the bulk row is W1 only
                print(f"  run {run} {workload} {LABELS[engine]:16} ", end="", flush=True)
                result = run_once(engine, workload, size, cfg, logdir)
                collected[workload][engine].append(result)
                if result["ok"]:
                    extra = f", p99 {result['p99']:.1f}" if "p99" in result else ""
                    context = f"wall {result['wall_s']:.2f} s, load {result['load']:.1f}"
                    unit = per_unit_cost(result, workload, size)
                    if unit:
                        context += (
                            f"; per {'orch' if workload in ('W1', 'W4') else 'step'}: CPU {unit['cpu_ms']:.2f} ms, "
                            f"{unit['statements']:.1f} stmts, {unit['transactions']:.1f} tx, "
                            f"{unit['redis_commands']:.1f} redis cmds"
                        )
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
            unit = ok[0]["unit"] if ok else None
            per_engine[engine] = {"runs": runs, "summary": summarize_runs(workload, runs), "unit": unit}
    print_table(report, workloads, engines, cfg.runs)
    loads = [r["load"] for w in collected.values() for runs in w.values() for r in runs if r["ok"]]
    cpus = os.cpu_count() or 1
    if loads and max(loads) > cpus:
        print(
            f"  note: the 1-minute load average reached {max(loads):.1f} on {cpus} CPUs during the runs: "
            "other processes competed with the workers, so the wall-clock figures are noisy (CPU ms are steadier)",
            flush=True,
        )

    Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {cfg.json}")
    if failures:
        print(f"\n!!! {failures} run(s) FAILED (see above)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
