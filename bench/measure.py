"""Cost accounting for the benchmarks: CPU time of every process involved and SQL statements per process.

- `StatementCounter`: SQLAlchemy event listeners (on the `Engine` class, so every engine of the process) counting
  statements (`before_cursor_execute`; an executemany counts once, its parameter sets go to `rows`), commits and
  rollbacks. `install_from_env()` (called by bench/prod_app.py in every worker and beat process) does it when
  BENCH_STATS_DIR is set, and a daemon thread writes the counts to `$BENCH_STATS_DIR/<pid>.json` (atomically, every
  50 ms when they changed), since the benchmark SIGKILLs its processes and no exit hook would run.
  Not counted: the raw `SELECT 1` ping a PostgreSQL pool connection gets after sitting idle for more than 1 s
  (duroxide_celery's providers), which bypasses SQLAlchemy.
- `CpuMeter`: user+system CPU over a measurement window of
  * this process (minus the meter's own sampling thread),
  * process trees started by the benchmark (a worker with its pool children): the sum over the root and its live
    descendants of their own times plus the times of their reaped children (cutime/cstime), so a child that exits
    during the window still counts, through its parent;
  * the PostgreSQL backends serving this benchmark's connections, found by `application_name` (every process of a
    measurement runs with PGAPPNAME set to one tag) in `pg_stat_activity`, sampled every 100 ms: a backend that
    exits between two samples loses its CPU after the last sample (the pools keep their connections, so few do);
    the server's background processes (WAL writer, checkpointer, autovacuum), which also work for us, are left out
    because the server is shared with other users; the whole server's delta (postmaster + children, including
    exited backends via cutime) is recorded as `pg_server_total_ms`, noisy when others use the server;
  * the Redis server (one process): exact when the benchmark runs its own server (the default), otherwise shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import psutil

STATS_DIR_ENV = "BENCH_STATS_DIR"


# -- statements ----------------------------------------------------------------------------------------------------
_TABLE = r'([\w."]+)'
_KIND_PATTERNS = [
    (re.compile(r"^\s*INSERT\s+INTO\s+" + _TABLE, re.I), "INSERT"),
    (re.compile(r"^\s*UPDATE\s+" + _TABLE, re.I), "UPDATE"),
    (re.compile(r"^\s*DELETE\s+FROM\s+" + _TABLE, re.I), "DELETE"),
    (re.compile(r"^\s*SELECT\b.*?\bFROM\s+" + _TABLE, re.I | re.S), "SELECT"),
    # The first table, not a function (`extract(epoch from clock_timestamp())`).
    (re.compile(r"^\s*WITH\b.*?\b(?:INTO|UPDATE|FROM)\s+" + _TABLE + r"\b(?!\()", re.I | re.S), "WITH"),
]


def statement_kind(statement: str) -> str:
    """`INSERT dx_history`, `SELECT dx_inbox`, `WITH dx_instances`, `BEGIN`: the verb and the first table."""
    for pattern, verb in _KIND_PATTERNS:
        match = pattern.match(statement)
        if match:
            table = match.group(1).replace('"', "").split(".")[-1]
            return f"{verb} {table}"
    words = statement.split(None, 1)
    return words[0].upper() if words else "?"


class StatementCounter:
    """Counts this process's SQL statements (also by kind: verb and first table), commits and rollbacks (every
    SQLAlchemy engine)."""

    _installed: StatementCounter | None = None

    def __init__(self) -> None:
        self.counts = {"statements": 0, "rows": 0, "commits": 0, "rollbacks": 0}
        self.kinds: dict[str, int] = {}
        self._kind_of: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def install(cls) -> StatementCounter:
        if cls._installed is not None:
            return cls._installed
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        counter = cls()

        def _execute(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool):
            kind = counter._kind_of.get(statement)
            if kind is None:
                kind = statement_kind(statement)
                if len(counter._kind_of) < 5000:
                    counter._kind_of[statement] = kind
            with counter._lock:
                counter.counts["statements"] += 1
                counter.counts["rows"] += len(parameters) if executemany and parameters else 1
                counter.kinds[kind] = counter.kinds.get(kind, 0) + 1

        def _commit(conn: Any) -> None:
            with counter._lock:
                counter.counts["commits"] += 1

        def _rollback(conn: Any) -> None:
            with counter._lock:
                counter.counts["rollbacks"] += 1

        event.listen(Engine, "before_cursor_execute", _execute)
        event.listen(Engine, "commit", _commit)
        event.listen(Engine, "rollback", _rollback)
        cls._installed = counter
        return counter

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "by_kind": dict(self.kinds)}

    def write_periodically(self, path: Path, interval: float = 0.05) -> None:
        def loop() -> None:
            last = None
            while True:
                now = self.snapshot()
                if now != last:
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(now))
                    os.replace(tmp, path)
                    last = now
                time.sleep(interval)

        threading.Thread(target=loop, name="bench-stats-writer", daemon=True).start()


def install_from_env() -> StatementCounter | None:
    """In a benchmark subprocess: count statements and publish them in $BENCH_STATS_DIR/<pid>.json (also in forked
    pool children, each under its own pid)."""
    directory = os.environ.get(STATS_DIR_ENV)
    if not directory:
        return None
    counter = StatementCounter.install()

    def start() -> None:
        counter.write_periodically(Path(directory) / f"{os.getpid()}.json")

    start()
    os.register_at_fork(after_in_child=start)  # a forked child counts on (its own copy) and writes its own file
    return counter


def read_stats_dir(directory: Path) -> dict[str, dict[str, int]]:
    """{file stem (pid): counts} of every process that wrote its counts there."""
    result = {}
    for file in Path(directory).glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            result[file.stem] = json.loads(file.read_text())
    return result


def stats_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The counts of every process file over the window, added up."""
    total: dict[str, Any] = {"statements": 0, "rows": 0, "commits": 0, "rollbacks": 0, "by_kind": {}}
    for key, counts in after.items():
        add_counts(total, count_delta(before.get(key, {}), counts))
    return total


def add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Add `part` into `total` (in place, also its by_kind) and return `total`."""
    for name, value in part.items():
        if name == "by_kind":
            kinds = total.setdefault("by_kind", {})
            for kind, n in value.items():
                kinds[kind] = kinds.get(kind, 0) + n
        else:
            total[name] = total.get(name, 0) + value
    return total


def count_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    for name, value in after.items():
        if name == "by_kind":
            base = before.get("by_kind", {})
            delta["by_kind"] = {k: n - base.get(k, 0) for k, n in value.items() if n - base.get(k, 0)}
        else:
            delta[name] = value - before.get(name, 0)
    return delta


# -- CPU -----------------------------------------------------------------------------------------------------------
def _own_cpu(proc: psutil.Process, with_children: bool = True) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    if with_children:
        total += t.children_user + t.children_system
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process tree: root and live descendants, each with its reaped children. Monotonic while the
    root lives (a descendant that exits moves its time into its parent's reaped-children times)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += _own_cpu(proc)
    return total


def find_postmaster() -> int | None:
    for proc in psutil.process_iter(["name", "ppid"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):
                parent = proc.parent()
                if parent is None or parent.name() not in ("postgres", "postmaster"):
                    return proc.pid
    return None


def find_redis_server(port: int) -> int | None:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "redis-server" and any(f":{port}" in a for a in proc.info["cmdline"] or []):
            return proc.pid
    return None


class CpuMeter:
    """CPU seconds over a window, per part (see the module docstring)."""

    def __init__(
        self,
        *,
        pg_dsn: str | None = None,
        pg_appname: str | None = None,
        redis_pid: int | None = None,
        include_self: bool = True,
        interval: float = 0.1,
    ):
        self.trees: dict[str, int] = {}
        self.pg_dsn = pg_dsn
        self.pg_appname = pg_appname
        self.redis_pid = redis_pid
        self.include_self = include_self
        self.interval = interval
        self.postmaster = find_postmaster() if pg_dsn else None
        self._start: dict[str, float] = {}
        self._backend_first: dict[int, float] = {}
        self._backend_last: dict[int, float] = {}
        self._sampler_cpu = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._conn: Any = None

    def add_tree(self, label: str, pid: int) -> None:
        self.trees[label] = pid

    def _fixed(self) -> dict[str, float]:
        values = {f"proc:{label}": tree_cpu(pid) for label, pid in self.trees.items()}
        if self.include_self:
            values["bench process"] = _own_cpu(psutil.Process(), with_children=False)
        if self.redis_pid:
            with contextlib.suppress(psutil.Error):
                values["redis-server"] = _own_cpu(psutil.Process(self.redis_pid), with_children=False)
        if self.postmaster:
            values["pg_server_total"] = tree_cpu(self.postmaster)
        return values

    def _sample_backends(self) -> None:
        if self._conn is None:
            return
        rows = self._conn.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s", (self.pg_appname,)
        ).fetchall()
        for pid, _ in rows:
            try:
                proc = psutil.Process(pid)
                cpu = _own_cpu(proc, with_children=False)
                born = proc.create_time()
            except psutil.Error:
                continue
            if pid not in self._backend_first:
                # Born during the window: all of its time is ours; else from its value at the window's start.
                self._backend_first[pid] = 0.0 if born >= self._t0 else cpu
            self._backend_last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            t = time.thread_time()
            with contextlib.suppress(Exception):
                self._sample_backends()
            self._sampler_cpu += time.thread_time() - t

    def start(self) -> None:
        if self.pg_dsn and self.pg_appname:
            import psycopg

            self._conn = psycopg.connect(self.pg_dsn, autocommit=True, application_name="bench-cpu-meter")
        self._t0 = time.time() - 0.05  # process create_time has ~10 ms resolution: a margin, not a gap
        self._sample_backends()
        self._start = self._fixed()
        self._thread = threading.Thread(target=self._loop, name="bench-cpu-meter", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """CPU milliseconds per part over the window, plus "total" (pg_server_total_ms is not in the total)."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        t = time.thread_time()
        with contextlib.suppress(Exception):
            self._sample_backends()
        end = self._fixed()
        sampler = self._sampler_cpu + time.thread_time() - t
        if self._conn is not None:
            self._conn.close()
        parts = {label: (end[label] - self._start.get(label, 0.0)) * 1000 for label in end}
        if "bench process" in parts:
            parts["bench process"] = max(0.0, parts["bench process"] - sampler * 1000)
        if self._backend_last:
            parts["postgres backends"] = 1000 * sum(
                self._backend_last[pid] - self._backend_first[pid] for pid in self._backend_last
            )
            parts["postgres backends (count)"] = len(self._backend_last)
        server = parts.pop("pg_server_total", None)
        parts["total"] = sum(v for k, v in parts.items() if k != "postgres backends (count)")
        if server is not None:
            parts["pg_server_total_ms"] = server
        return parts
