"""examples/django end to end, as its README runs it: PostgreSQL, Redis, a prefork `celery worker`, `celery beat`
with durable timers and `runserver`. An order placed through one view and approved through another is paid; one
nobody approves is cancelled by its durable timer; the admin lists both with their histories. The example's own
test suite passes under Django's runner and leaves no test database behind."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REDIS_URL, Proc
from .django_support import databases, free_port, fresh_database, manage, project_env, run_pytest_django

pytest.importorskip("django", reason="Django is not installed (pip install -e '.[dev]')")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"
PASSWORD = "example-admin-password"


@pytest.fixture
def shop_db(postgres: None) -> Iterator[str]:
    with fresh_database("shopsite") as name:
        yield name


def _env(**extra: str) -> dict[str, str]:
    return project_env(EXAMPLE, "SHOP_", **extra)


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return manage(EXAMPLE, env, *args)


def test_the_examples_own_tests_pass_under_djangos_runner(shop_db: str) -> None:
    done = _manage(_env(SHOP_DB_NAME=shop_db), "test", "-v", "2")
    assert "Ran 4 tests" in done.stderr and "\nOK" in done.stderr, done.stderr
    assert f"test_{shop_db}" not in databases()


def test_the_examples_tests_pass_under_pytest_django(shop_db: str) -> None:
    pytest.importorskip("pytest_django", reason="pytest-django is not installed (pip install -e '.[dev]')")
    done = run_pytest_django(EXAMPLE, _env(SHOP_DB_NAME=shop_db))
    assert "4 passed" in done.stdout, done.stdout
    assert f"test_{shop_db}" not in databases()


class Browser:
    """An HTTP client with cookies, logged into the admin like a person would (CSRF token from the form)."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode()

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with self.opener.open(request, timeout=30) as response:
            return json.load(response)

    def login(self, user: str, password: str) -> None:
        form = self.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
        assert token, form[:500]
        data = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": token.group(1), "username": user, "password": password, "next": "/admin/"}
        ).encode()
        request = urllib.request.Request(self.base + "/admin/login/", data=data, headers={"Referer": self.base})
        with self.opener.open(request, timeout=30) as response:
            assert "Log out" in response.read().decode() or "logout" in response.url, "admin login failed"


def test_orders_flow_through_views_workers_beat_and_the_admin(shop_db: str, redis_db: int, tmp_path: Path) -> None:
    env = _env(
        SHOP_DB_NAME=shop_db,
        SHOP_BROKER_URL=f"{REDIS_URL}/{redis_db}",
        SHOP_QUEUE_PREFIX=f"ex{uuid.uuid4().hex[:8]}",
        SHOP_APPROVAL_TIMEOUT_MS="3000",
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
    )
    _manage(env, "migrate", "--noinput")
    _manage(env, "duroxide", "migrate")
    _manage(env, "shell", "-c", "from orders.models import Product; Product.objects.create(sku='lamp', stock=10)")
    _manage(env, "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
    port = free_port()
    celery = [sys.executable, "-m", "celery", "-A", "shopsite"]
    procs = [
        Proc(
            "worker",
            [*celery, "worker", "-P", "prefork", "-c", "2", "-l", "INFO", "-n", f"ex-{port}@%h"]
            + ["--without-mingle", "--without-gossip", "--without-heartbeat"],
            env,
            tmp_path / "worker.log",
        ),
        Proc(
            "beat",
            [*celery, "beat", "-S", "duroxide_celery.beat:TimerScheduler", "-s", str(tmp_path / "beat"), "-l", "INFO"],
            env,
            tmp_path / "beat.log",
        ),
        Proc(
            "web",
            [sys.executable, str(EXAMPLE / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload"],
            env,
            tmp_path / "web.log",
        ),
    ]
    try:
        procs[0].wait_for_log(" ready.")
        procs[1].wait_for_log("beat: Starting")
        procs[2].wait_for_log("Quit the server")
        web = Browser(f"http://127.0.0.1:{port}")

        approved = web.post_json("/orders/", {"sku": "lamp", "quantity": 2, "card": "4242-4242"})["order"]
        ignored = web.post_json("/orders/", {"sku": "lamp", "quantity": 1, "card": "4242-4242"})["order"]

        def detail(order: int) -> dict[str, Any]:
            return json.loads(web.get(f"/orders/{order}/"))

        def wait(predicate: Any, what: str) -> dict[str, Any]:
            deadline = time.monotonic() + 90
            while True:
                state = predicate()
                if state:
                    return state
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(p.tail() for p in procs))
                time.sleep(0.1)

        wait(lambda: detail(approved)["step"] == "awaiting approval", "the order to await approval")
        web.post_json(f"/orders/{approved}/approve/", {"approved": True})
        paid = wait(lambda: (d := detail(approved))["workflow"] == "Completed" and d, "the approved order to finish")
        assert (paid["status"], paid["output"]["status"]) == ("paid", "paid"), paid
        assert paid["output"]["receipt"] == "charged 2 x lamp"
        cancelled = wait(lambda: (d := detail(ignored))["workflow"] == "Completed" and d, "the timer to cancel")
        assert cancelled["output"] == {"order": ignored, "status": "cancelled", "reason": "not approved in time"}

        web.login("admin", PASSWORD)
        listing = web.get("/admin/duroxide/instance/?status=Completed")
        assert f"order-{approved}" in listing and f"order-{ignored}" in listing, listing[:2000]
        page = web.get(f"/admin/duroxide/instance/order-{ignored}/change/")
        for kind in ("ActivityScheduled", "TimerCreated", "TimerFired", "OrchestrationCompleted"):
            assert kind in page, f"{kind} missing from the admin's history table"
    finally:
        for proc in procs:
            proc.kill()
