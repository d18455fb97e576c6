"""A real Django project with duroxide-celery (tests/djangoproj, Celery's "First steps with Django" layout):
Django's own test runner on the test database, and the flow over HTTP with a real `runserver`, a real prefork
`celery worker` and `celery beat`, PostgreSQL and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import PG_URL, REDIS_URL, Proc
from .django_support import databases, free_port, fresh_database, manage, project_env, run_pytest_django

pytest.importorskip("django", reason="Django is not installed (pip install -e '.[dev]')")

PROJECT = Path(__file__).resolve().parents[1] / "djangoproj"


@pytest.fixture
def project_db(postgres: None) -> Iterator[str]:
    with fresh_database("djproj") as name:
        yield name


def _env(**extra: str) -> dict[str, str]:
    return project_env(PROJECT, "PROJ_", **extra)


def _manage(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return manage(PROJECT, env, *args, check=False, timeout=timeout)


def test_djangos_test_runner_runs_the_projects_workflow_tests_on_the_test_database(project_db: str) -> None:
    done = _manage(_env(PROJ_PG_NAME=project_db, PROJ_EAGER="1"), "test", "orders", "-v", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ran 8 tests" in done.stderr and "OK" in done.stderr, done.stderr
    # The store's pools closed before the runner dropped the test database: no leftover, no "being accessed".
    assert "being accessed by other users" not in done.stderr
    assert f"test_{project_db}" not in databases()


def test_pytest_django_users_get_the_workflow_harness_fixture(project_db: str) -> None:
    pytest.importorskip("pytest_django", reason="pytest-django is not installed (pip install -e '.[dev]')")
    done = run_pytest_django(PROJECT, _env(PROJ_PG_NAME=project_db))
    assert "1 passed" in done.stdout, done.stdout
    assert f"test_{project_db}" not in databases()


def test_an_order_flows_over_http_through_real_workers(project_db: str, redis_db: int, tmp_path: Path) -> None:
    prefix = f"dj{uuid.uuid4().hex[:8]}"
    env = _env(PROJ_PG_NAME=project_db, PROJ_BROKER_URL=f"{REDIS_URL}/{redis_db}", PROJ_QUEUE_PREFIX=prefix)
    for args in (("migrate", "--noinput"), ("duroxide", "migrate")):
        done = _manage(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    procs: list[Proc] = []
    try:
        worker = Proc(
            "worker",
            [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "2", "-l", "INFO"]
            + ["-n", f"{prefix}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat"],
            env,
            tmp_path / "worker.log",
        )
        procs.append(worker)
        port = free_port()
        web = Proc(
            "web",
            [sys.executable, str(PROJECT / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload"],
            env,
            tmp_path / "web.log",
        )
        procs.append(web)
        worker.wait_for_log(" ready.")
        web.wait_for_log("Quit the server")

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/orders/",
            data=json.dumps({"item": "lamp", "quantity": 3}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            created = json.load(response)
        order = created["order"]

        def status() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/orders/{order}/", timeout=30) as response:
                return json.load(response)

        deadline = time.monotonic() + 90
        seen = status()
        while seen["status"] != "Completed" and time.monotonic() < deadline:
            assert seen["status"] in ("Running", "NotFound"), seen
            time.sleep(0.1)
            seen = status()
        assert seen == {
            "status": "Completed",
            "output": {"order": order, "item": "lamp", "quantity": 3},
            "error": None,
        }, (
            seen,
            worker.tail(),
        )
        listed = _manage(env, "duroxide", "list", "--status", "Completed")
        assert listed.returncode == 0 and f"order-{order}" in listed.stdout.split(), listed.stdout + listed.stderr
        missing = _manage(env, "duroxide", "status", "no-such-order")
        assert missing.returncode == 1 and "no instance 'no-such-order'" in missing.stderr, missing.stderr
    finally:
        for proc in procs:
            proc.kill()


def test_the_store_lives_in_its_own_schema_next_to_djangos_tables(project_db: str) -> None:
    env = _env(PROJ_PG_NAME=project_db)
    for args in (("migrate", "--noinput"), ("duroxide", "migrate")):
        done = _manage(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    engine = sa.create_engine(
        PG_URL.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0] + "/" + project_db
    )
    try:
        with engine.connect() as conn:
            tables = {
                (r[0], r[1])
                for r in conn.execute(
                    sa.text(
                        "SELECT table_schema, table_name FROM information_schema.tables"
                        " WHERE table_schema IN ('public', 'duroxide')"
                    )
                )
            }
    finally:
        engine.dispose()
    assert ("public", "orders_order") in tables and ("public", "django_migrations") in tables
    assert ("duroxide", "dx_instances") in tables and ("duroxide", "dx_alembic_version") in tables
    assert not any(schema == "public" and name.startswith("dx_") for schema, name in tables)


def test_manage_py_duroxide_says_the_project_chooses_the_store_and_queues(tmp_path: Path) -> None:
    env = _env(PROJ_SQLITE=str(tmp_path / "db.sqlite3"))
    helped = _manage(env, "duroxide", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Usage: manage.py duroxide" in helped.stdout
    assert "settings.DUROXIDE" in helped.stdout and "`migrate` creates or upgrades" in helped.stdout
    for hidden in ("--queue-prefix", "--db", "--schema", "--broker", "--app"):
        assert hidden not in helped.stdout, hidden  # the project's settings choose them, not these options
    refused = _manage(env, "duroxide", "--db", "sqlite:////tmp/x.db", "list")
    assert refused.returncode != 0
    assert "--db cannot be given to manage.py duroxide: it works on the project's store" in refused.stderr
    assert "--app" not in refused.stderr  # the user typed no --app
