"""A plain `pip install .` (no extras, no dev packages) in a fresh virtualenv runs a production-mode workflow on
Redis and on RabbitMQ: a real `celery -A app worker` from that venv, a Client(provider, app=app) start, and the
CLI's `--app`. The venv is built once for both brokers.

The virtualenv has no system site packages, and everything runs from a directory outside the checkout, so only
what pip installed from pyproject's dependencies is importable. pip reaches the package index (or its cache).
The checkout is copied first, so the build leaves nothing (egg-info, build/) in the working tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import AMQP_URL, REDIS_URL, ROOT, _delete_amqp_entities

#: pip may download the dependencies (celery, SQLAlchemy, psycopg, ...) when its cache is cold.
INSTALL_TIMEOUT_S = 240
START_TIMEOUT_S = 60
WAIT_MS = 60_000

APP = """
import os
import sys

from celery import Celery

from duroxide_celery import Runtime, RuntimeOptions, SqliteProvider

app = Celery("pkgapp", broker=os.environ["PKG_BROKER_URL"])
app.conf.broker_connection_retry_on_startup = True
if app.conf.broker_url.startswith("amqp"):
    app.conf.broker_transport_options = {"confirm_publish": True}
options = RuntimeOptions(queue_prefix=os.environ["PKG_PREFIX"], worker_node_id=os.environ["PKG_NODE"])
runtime = Runtime(SqliteProvider.open(os.environ["PKG_DB"]), options, app=app)


def greet(ctx, name):
    return (yield ctx.schedule_activity("Hello", name))


def hello(ctx, name):
    return {"greeting": f"hello {name}", "prefix": sys.prefix}


runtime.register_orchestration("Greet", greet)
runtime.register_activity("Hello", hello)
"""

DRIVER = """
import json
import sys

from duroxide_celery import Client
from pkgapp import app, runtime

client = Client(runtime.provider, app=app)
client.start_orchestration("client-1", "Greet", "client")
out = {}
for instance_id in ("client-1", sys.argv[1]):
    result = client.wait_for_orchestration(instance_id, int(sys.argv[2]))
    out[instance_id] = {"status": result.status, "output": result.output, "error": result.error}
print(json.dumps(out))
"""


class Worker:
    """`celery -A pkgapp worker` from the venv, in its own process group, killed with it at teardown."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.log = log
        self._out = open(log, "ab")  # closed in kill()
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while " ready." not in self.text():
            if self.popen.poll() is not None:
                pytest.fail(f"the worker exited with {self.popen.returncode} before it was ready:\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the worker was not ready within {START_TIMEOUT_S} s:\n{self.text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # a prefork worker's pool children die with it
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        self._out.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site packages) with `pip install <copy of the checkout>`."""
    tmp_path = tmp_path_factory.mktemp("packaging")
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks", "*.db*"
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        env=_clean_env(),
    )
    assert install.returncode == 0, f"pip install . failed:\n{install.stdout}\n{install.stderr}"
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, env=_clean_env())
    assert check.returncode == 0, f"pip check: {check.stdout}{check.stderr}"
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would let the checkout or the test's own packages leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith(("DUROXIDE_", "CELERY_"))
    }
    env.update(PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1", **extra)
    return env


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """(broker URL, queue prefix, worker node id); RabbitMQ's queues and exchanges are deleted afterwards."""
    prefix, node = f"dxpkg{uuid.uuid4().hex[:10]}", f"pkg-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        yield f"{REDIS_URL}/{request.getfixturevalue('redis_db')}", prefix, node
        return
    request.getfixturevalue("rabbitmq")
    yield AMQP_URL, prefix, node
    _delete_amqp_entities(prefix, ("orchestrator", "activities", f"sessions.{node}"))


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 2 * START_TIMEOUT_S + 60)
def test_plain_pip_install_runs_a_workflow(
    venv: Path, broker: tuple[str, str, str], tmp_path: Path, workers: list[Worker]
) -> None:
    broker_url, prefix, node = broker
    bin_dir = venv / "bin"
    python = bin_dir / "python"

    # Only the venv's packages: no dev dependencies, and duroxide_celery from the install, not the checkout.
    probe = subprocess.run(
        [str(python), "-c", "import duroxide_celery, sys; print(duroxide_celery.__file__); print(sys.prefix)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        check=True,
    )
    module_file, venv_prefix = probe.stdout.splitlines()
    assert Path(module_file).is_relative_to(venv) and Path(venv_prefix) == venv
    for dev_only in ("pytest", "duroxide", "flower"):
        missing = subprocess.run([str(python), "-c", f"import {dev_only}"], capture_output=True, env=_clean_env())
        assert missing.returncode != 0, f"{dev_only} is importable in the fresh venv"

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "pkgapp.py").write_text(APP)
    (app_dir / "driver.py").write_text(DRIVER)
    db = tmp_path / "store.db"
    env = _clean_env(
        PKG_BROKER_URL=broker_url,
        PKG_DB=str(db),
        PKG_PREFIX=prefix,
        PKG_NODE=node,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )

    # The schema, with the installed CLI (the console script) and the app's Runtime.
    upgrade = subprocess.run(
        [str(bin_dir / "duroxide-celery"), "--app", "pkgapp", "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=app_dir,
        env=env,
        timeout=START_TIMEOUT_S,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert db.is_file()

    worker = Worker(
        [
            str(bin_dir / "celery"),
            "-A",
            "pkgapp",
            "worker",
            # Only this test's engine queues: the broker's shared `celery` queue may hold other tests' messages.
            "-Q",
            f"{prefix}.orchestrator,{prefix}.activities",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "INFO",
            "-n",
            f"{node}@%h",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ],
        env,
        app_dir,
        tmp_path / "worker.log",
    )
    workers.append(worker)
    worker.wait_ready()

    # No beat runs here, so no recovery sweep: these complete only because the wake-ups went out on the broker.
    started = subprocess.run(
        [str(bin_dir / "duroxide-celery"), "--app", "pkgapp", "start", "Greet", "--id", "cli-1", "--input", '"cli"'],
        capture_output=True,
        text=True,
        cwd=app_dir,
        env=env,
        timeout=START_TIMEOUT_S,
    )
    assert (started.returncode, started.stdout, started.stderr) == (0, "cli-1\n", "")
    driven = subprocess.run(
        [str(python), "driver.py", "cli-1", str(WAIT_MS)],
        capture_output=True,
        text=True,
        cwd=app_dir,
        env=env,
        timeout=WAIT_MS / 1000 + START_TIMEOUT_S,
    )
    assert driven.returncode == 0, f"{driven.stderr}\nworker log:\n{worker.text()}"
    results = json.loads(driven.stdout.strip().splitlines()[-1])
    for instance_id, name in (("client-1", "client"), ("cli-1", "cli")):
        result = results[instance_id]
        assert result["status"] == "Completed", (instance_id, result, worker.text())
        # The activity ran in the worker, in the fresh venv.
        assert result["output"] == {"greeting": f"hello {name}", "prefix": str(venv)}

    status = subprocess.run(
        [str(bin_dir / "duroxide-celery"), "--app", "pkgapp", "status", "cli-1", "--json"],
        capture_output=True,
        text=True,
        cwd=app_dir,
        env=env,
        timeout=START_TIMEOUT_S,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "Completed"
    assert "Traceback" not in worker.text()
