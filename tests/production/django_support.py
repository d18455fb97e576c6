"""What the Django tests share: a fresh PostgreSQL database per test, subprocess environments for a project,
`manage.py` runs, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from .conftest import ROOT, Proc, _pg_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def databases() -> set[str]:
    """Every database's name on the test PostgreSQL server."""
    with _pg_engine().connect() as conn:
        return {r[0] for r in conn.execute(sa.text("SELECT datname FROM pg_database"))}


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, empty database for one test; it and its Django test database are dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = _pg_engine().execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with engine.connect() as conn:
            for db in (name, f"test_{name}"):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def project_env(project: Path, settings_prefix: str, **extra: str) -> dict[str, str]:
    """This process's environment without the project's own settings variables, the project on PYTHONPATH, then
    this checkout (so the project runs the duroxide_celery under test, not another installed copy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((settings_prefix, "DJANGO_SETTINGS_MODULE"))}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(project), str(ROOT)]), **extra)
    return env


def manage(
    project: Path, env: dict[str, str], *args: str, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`python manage.py ARGS` in the project; with `check`, a failure fails the test with its output."""
    done = subprocess.run(
        [sys.executable, str(project / "manage.py"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def run_pytest_django(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The project's own pytest-django run (its pytest.ini); fails the test with the output if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def worker_and_web(
    project: Path, prefix: str, env: dict[str, str], logs: Path, port: int, concurrency: int
) -> list[Proc]:
    """The project's `celery worker` (prefork) and `manage.py runserver` on 127.0.0.1:<port>, in that order."""
    worker_argv = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", str(concurrency)]
    worker_argv += ["-l", "INFO", "-n", f"{prefix}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    web_argv = [
        sys.executable,
        str(project / "manage.py"),
        "runserver",
        f"127.0.0.1:{port}",
        "--noreload",
        "--insecure",
    ]
    return [Proc("worker", worker_argv, env, logs / "worker.log"), Proc("web", web_argv, env, logs / "web.log")]
