"""Real-process production-mode tests: `celery worker` and `celery beat` subprocesses running examples/shop on
Redis or RabbitMQ and PostgreSQL, exactly as an operator would start them.

Isolation per test: a fresh PostgreSQL schema (SHOP_DATABASE_SCHEMA, dropped afterwards) and a unique queue
prefix (SHOP_QUEUE_PREFIX; the workers' `-Q` use it). Redis runs in a database index this session claims (an empty
one, marked with a key) and flushes at the start and the end; RabbitMQ queues and exchanges of the prefix are
deleted after each test. Every subprocess runs in its own process group and is killed (SIGKILL to the group) at
teardown, whatever the test did.

Services come from DUROXIDE_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test),
DUROXIDE_TEST_REDIS_URL (redis://127.0.0.1:6379) and DUROXIDE_TEST_AMQP_URL (amqp://guest:guest@127.0.0.1:5672//).
A missing service skips its tests loudly, or fails them when the CI variable is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from duroxide_celery import Client, PostgresProvider

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("DUROXIDE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DUROXIDE_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
AMQP_URL = os.environ.get("DUROXIDE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

#: Short thresholds so healing is quick: the sweep republishes what has waited 1 s, every 0.5 s.
RECOVERY_MS = 1000
RECOVERY_INTERVAL_MS = 500
#: Instance leases held by a killed orchestrator worker lapse after this long.
ORCHESTRATOR_LOCK_MS = 2000
#: Generous bound for starting a subprocess (importing Celery and the app) and for one test's whole run.
START_TIMEOUT_S = 30
WAIT_S = 90

_REDIS_CLAIM_KEY = "duroxide-celery:production-tests"


def _service_missing(what: str, exc: BaseException) -> None:
    """Fail (CI) or skip loudly (developer machine)."""
    reason = f"{what} is unreachable: {exc!s}".strip()
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI is set: the production tests need it)", pytrace=False)
    warnings.warn(reason, stacklevel=1)
    pytest.skip("!!! SKIPPED: " + reason)


def _pg_engine(schema: str | None = None) -> sa.Engine:
    args = {"options": f"-csearch_path={schema}"} if schema else {}
    return sa.create_engine(
        PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.NullPool, connect_args=args
    )


@pytest.fixture(scope="session")
def postgres() -> None:
    try:
        with _pg_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection problem means "not reachable"
        _service_missing(f"PostgreSQL at {PG_URL}", exc)


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database index for this session: an empty one, claimed with a key, flushed before and after."""
    import redis

    try:
        redis.Redis.from_url(f"{REDIS_URL}/0", socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        _service_missing(f"Redis at {REDIS_URL}", exc)
    claimed = None
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        if client.set(_REDIS_CLAIM_KEY, os.getpid(), nx=True, ex=3600):
            if client.dbsize() == 1:
                claimed = db
                break
            client.delete(_REDIS_CLAIM_KEY)  # someone else's data lives here: leave it alone
    if claimed is None:
        pytest.fail("no empty Redis database index (1-15) to run the production tests in")
    flush_redis(claimed)
    yield claimed
    redis.Redis.from_url(f"{REDIS_URL}/{claimed}").flushdb()


def flush_redis(db: int) -> None:
    """FLUSHDB (every message, binding and unacked entry gone), then re-mark the database as ours."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
    client.flushdb()
    client.set(_REDIS_CLAIM_KEY, os.getpid(), ex=3600)


@pytest.fixture(scope="session")
def rabbitmq() -> None:
    import socket

    from kombu import Connection

    # A RabbitMQ that has just started accepts TCP before it can open an AMQP connection: retry for a while when
    # the port answers at all; a refused port means it is not there.
    probe = Connection(AMQP_URL)
    try:
        socket.create_connection((probe.hostname, probe.port or 5672), timeout=2).close()
    except OSError as exc:
        _service_missing(f"RabbitMQ at {AMQP_URL}", exc)
    deadline = time.monotonic() + 20
    while True:
        try:
            with Connection(AMQP_URL, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
            return
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() > deadline:
                _service_missing(f"RabbitMQ at {AMQP_URL}", exc)
            time.sleep(0.5)


class Proc:
    """A celery subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        self._out = open(log, "ab")  # closed in kill()
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            if self.popen.poll() is not None:
                code = self.popen.returncode
                pytest.fail(f"{self.name} exited with {code} before logging {needle!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not log {needle!r} within {timeout_s} s:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group (a prefork worker's pool children die with it)."""
        if self.popen.poll() is None or _group_alive(self.pid):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
        deadline = time.monotonic() + 10
        while _group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._out.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(f"  [{self.name}] {line}" for line in self.text().splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True


class Cluster:
    """One test's production deployment: a schema, a queue prefix, celery subprocesses and a client."""

    def __init__(self, broker: str, broker_url: str, tmp_path: Path):
        tag = uuid.uuid4().hex[:12]
        self.broker = broker
        self.broker_url = broker_url
        self.prefix = f"dxp{tag}"
        self.schema = f"dxp_{tag}"
        self.dir = tmp_path
        self.procs: list[Proc] = []
        self.env = {
            **os.environ,
            "SHOP_BROKER_URL": broker_url,
            "SHOP_DATABASE_URL": PG_URL,
            "SHOP_DATABASE_SCHEMA": self.schema,
            "SHOP_QUEUE_PREFIX": self.prefix,
            "SHOP_RECOVERY_MS": str(RECOVERY_MS),
            "SHOP_RECOVERY_INTERVAL_MS": str(RECOVERY_INTERVAL_MS),
            "SHOP_ORCHESTRATOR_LOCK_MS": str(ORCHESTRATOR_LOCK_MS),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("DUROXIDE_FAULT_AFTER_COMMIT", None)
        self.provider = PostgresProvider.connect_with_schema(PG_URL, self.schema)
        _ = self.provider.store  # create the schema before several processes race to
        self.app = Celery(f"shop-test-{tag}", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
        if broker_url.startswith("amqp"):
            self.app.conf.broker_transport_options = {"confirm_publish": True}
        self.client = Client(self.provider, app=self.app, queue_prefix=self.prefix)
        self.db = _pg_engine(self.schema)

    # -- processes ----------------------------------------------------------------------------------------------
    def _celery(self, name: str, args: list[str], extra_env: dict[str, str] | None, app: str = "examples.shop") -> Proc:
        env = dict(self.env, **(extra_env or {}))
        argv = [sys.executable, "-m", "celery", "-A", app, *args]
        proc = Proc(name, argv, env, self.dir / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def worker(
        self,
        role: str,
        *,
        pool: str = "threads",
        concurrency: int = 4,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Proc:
        """A worker on `<prefix>.orchestrator` (role "orch"), `<prefix>.activities` (role "act") or both in one pool
        (role "both": it runs steps inline, tasks/inline.py)."""
        orchestrator, activities = f"{self.prefix}.orchestrator", f"{self.prefix}.activities"
        queue = {"orch": orchestrator, "act": activities, "both": f"{orchestrator},{activities}"}[role]
        node = f"{role}{len(self.procs)}-{self.prefix}@%h"
        proc = self._celery(
            f"worker-{role}",
            f"worker -Q {queue} -P {pool} -c {concurrency} -n {node} -l INFO".split()
            + ["--without-mingle", "--without-gossip", "--without-heartbeat"],
            env,
        )
        if wait:
            proc.wait_for_log(" ready.")
        return proc

    def beat(self, wait: bool = True, app: str = "examples.shop", env: dict[str, str] | None = None) -> Proc:
        schedule = self.dir / f"beat-schedule-{len(self.procs)}"
        proc = self._celery(
            "beat",
            ["beat", "-S", "duroxide_celery.beat:TimerScheduler", "-s", str(schedule), "-l", "INFO"],
            env,
            app,
        )
        if wait:
            proc.wait_for_log("beat: Starting")
        return proc

    def run(self, name: str, args: list[str], app: str, env: dict[str, str] | None = None) -> Proc:
        """Any `celery -A <app> ...` command, as an operator would type it."""
        return self._celery(name, args, env, app)

    def flower(self, port: int) -> Proc:
        """Flower on 127.0.0.1:`port`, its HTTP API open without auth (loopback only, for the test)."""
        proc = self._celery(
            "flower",
            ["flower", "--address=127.0.0.1", f"--port={port}", "--logging=info"],
            {"FLOWER_UNAUTHENTICATED_API": "true"},
        )
        proc.wait_for_log("Visit me at")
        return proc

    def standard(self, orch_pool: str = "threads", act_pool: str = "threads") -> tuple[Proc, Proc, Proc]:
        """An orchestrator worker, an activity worker and beat."""
        return self.worker("orch", pool=orch_pool), self.worker("act", pool=act_pool), self.beat()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.provider.dispose()
        self.db.dispose()
        with _pg_engine().begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        if self.broker == "rabbitmq":
            _delete_amqp_entities(self.prefix)

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    # -- store queries ------------------------------------------------------------------------------------------
    def sql(self, text: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(sa.text(text), params).all())

    def scalar(self, text: str, **params: Any) -> Any:
        with self.db.connect() as conn:
            return conn.execute(sa.text(text), params).scalar()

    def statuses(self, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        rows = self.sql(
            "SELECT instance_id, status, custom_status FROM dx_instances WHERE instance_id = ANY(:ids)", ids=list(ids)
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def diagnostics(self) -> str:
        counts = {
            table: self.scalar(f"SELECT count(*) FROM {table}") for table in ("dx_inbox", "dx_work_items", "dx_timers")
        }
        by_status = self.sql("SELECT status, count(*) FROM dx_instances GROUP BY status")
        return f"store: {counts}, instances by status: {dict(by_status)}\n{self.logs()}"

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
        """Poll until `predicate()` is truthy (returned); fail with the store's state and process logs."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{self.diagnostics()}")
            time.sleep(0.05)

    def wait_all_terminal(
        self, ids: list[str], timeout_s: float = WAIT_S, on_poll: Callable[[dict], None] | None = None
    ) -> None:
        """Wait until every instance is Completed or Failed; `on_poll(statuses)` runs each round (raise events)."""

        def done() -> bool:
            statuses = self.statuses(ids)
            if on_poll is not None:
                on_poll(statuses)
            return len(statuses) == len(ids) and all(s in ("Completed", "Failed") for s, _ in statuses.values())

        self.wait_for(done, f"{len(ids)} instances to finish", timeout_s)


def _delete_amqp_entities(prefix: str, suffixes: tuple[str, ...] = ("orchestrator", "activities")) -> None:
    """Delete the RabbitMQ queues and exchanges `<prefix>.<suffix>` a test declared."""
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=2) as conn:
        for name in (f"{prefix}.{suffix}" for suffix in suffixes):
            for op in ("queue_delete", "exchange_delete"):
                channel = conn.channel()  # a failed delete closes the channel: one per operation
                try:
                    getattr(channel, op)(name)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001
                        pass


@pytest.fixture
def redis_cluster(postgres: None, redis_db: int, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster("redis", f"{REDIS_URL}/{redis_db}", tmp_path)
    cluster.redis_db = redis_db  # type: ignore[attr-defined]
    yield cluster
    cluster.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def any_cluster(request: pytest.FixtureRequest, postgres: None, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "redis":
        db = request.getfixturevalue("redis_db")
        cluster = Cluster("redis", f"{REDIS_URL}/{db}", tmp_path)
    else:
        request.getfixturevalue("rabbitmq")
        cluster = Cluster("rabbitmq", AMQP_URL, tmp_path)
    yield cluster
    cluster.close()


# -- a real browser ------------------------------------------------------------------------------------------------
CHROMIUM = os.environ.get("DUROXIDE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DUROXIDE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium through Debian's chromium-driver (the Django admin's and the
    dashboard's page tests). A missing Chromium, chromedriver or selenium skips loudly, or fails when CI is set."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        _service_missing("selenium (pip install selenium)", exc)
    if missing:
        _service_missing(f"{' and '.join(missing)} (apt-get install -y chromium chromium-driver)", FileNotFoundError())
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
