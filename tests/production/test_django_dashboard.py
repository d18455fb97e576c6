"""The web dashboard under Django's admin (duroxide_celery.contrib.django.dashboard) in a real browser: the Django
test project (tests/djangoproj) under `manage.py runserver`, PostgreSQL, a prefork `celery worker` on Redis, and
headless Chromium.

One server and one browser session: an anonymous visitor is sent to the admin's login; a staff user with
`view_instance` only finds "Workflow dashboard" in the admin index, sees the list and an instance page with its
payloads hidden and no actions, and is refused an action (403) even with a valid dashboard CSRF token; the live
view's polls pass through the admin (payloads hidden in its JSON too); a staff user without any workflow
permission is refused the dashboard; POSTs without the dashboard's token or from another origin are refused
(Django's CSRF middleware is not what protects the mounted view); the superuser follows the admin's "Open in the
dashboard" link, sees the payloads and raises the event that completes the instance. The WSGI adapter's own
cases: tests/djangoproj/orders/dashboard_mount_checks.py, run here by its path with pytest-django.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REDIS_URL
from .django_support import free_port, fresh_database, worker_and_web
from .test_django_admin import PASSWORD, PROJECT, Admin, _env, _eventually, _login, _manage

pytest.importorskip("django", reason="Django is not installed (pip install -e '.[dev]')")
pytest.importorskip("flask", reason="the dashboard needs Flask (pip install -e '.[dev]')")

DASHBOARD = "/admin/duroxide/dashboard/"
SECRET = "card-4111-secret"  # the instance's input: a payload only view_payloads may see

USERS = f"""
from django.contrib.auth.models import Permission, User
User.objects.create_superuser('admin', 'admin@example.com', {PASSWORD!r})
viewer = User.objects.create_user('viewer', password={PASSWORD!r}, is_staff=True)
viewer.user_permissions.add(Permission.objects.get(content_type__app_label='duroxide', codename='view_instance'))
User.objects.create_user('nobody', password={PASSWORD!r}, is_staff=True)
assert Permission.objects.filter(content_type__app_label='duroxide', codename='view_payloads').exists()
"""


@pytest.fixture
def project_db(postgres: None) -> Iterator[str]:
    with fresh_database("djdash") as name:
        yield name


def test_the_wsgi_adapter_in_the_projects_own_pytest_django_suite(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "orders/dashboard_mount_checks.py"],
        cwd=PROJECT,
        env=_env(PROJ_SQLITE=str(tmp_path / "unused.sqlite3")),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0 and done.stdout.splitlines()[-1].startswith("4 passed"), done.stdout + done.stderr


def _post(base: str, path: str, form: dict[str, str], cookies: dict[str, str], origin: str) -> tuple[int, str]:
    """A form POST outside the browser, with the browser's cookies: (status, body)."""
    request = urllib.request.Request(
        base + path,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), "Origin": origin},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _fetch_get(admin: Admin, path: str) -> list[Any]:
    """GET with fetch() from the signed-in page: [status, text]."""
    return admin.driver.execute_script(
        "return fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text().then(t => [r.status, t]));",
        path,
    )


def _fetch_post(admin: Admin, path: str, body: str) -> list[Any]:
    """POST with fetch() from the signed-in page (same origin, the browser's cookies): [status, text]."""
    return admin.driver.execute_script(
        """
        const [path, body] = arguments;
        return fetch(path, {method: 'POST', body, credentials: 'same-origin', redirect: 'manual',
                            headers: {'Content-Type': 'application/x-www-form-urlencoded'}})
            .then(r => r.text().then(t => [r.status, t]));
        """,
        path,
        body,
    )


def test_the_dashboard_under_the_admin_with_djangos_login_and_permissions(
    project_db: str, redis_db: int, browser: Any, tmp_path: Path
) -> None:
    prefix = f"djd{uuid.uuid4().hex[:8]}"
    env = _env(PROJ_PG_NAME=project_db, PROJ_BROKER_URL=f"{REDIS_URL}/{redis_db}", PROJ_QUEUE_PREFIX=prefix)
    _manage(env, "migrate", "--noinput")
    _manage(env, "duroxide", "migrate")
    _manage(env, "shell", "-c", USERS)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = worker_and_web(PROJECT, prefix, env, tmp_path, port, concurrency=1)
    try:
        started = _manage(env, "duroxide", "start", "AwaitApproval", "--id", "approve-1", "--input", f'"{SECRET}"')
        assert started.stdout.split() == ["approve-1"], started.stdout
        procs[0].wait_for_log(" ready.")
        procs[1].wait_for_log("Quit the server")
        _scenario(base, Admin(browser, base))
    except BaseException:
        print(*(f"--- {p.name}:\n{p.text()[-3000:]}" for p in procs), sep="\n")
        raise
    finally:
        for proc in procs:
            proc.kill()


def _all_text(admin: Admin, css: str) -> str:
    """An element's text, including collapsed <details> (Selenium's .text is only what is visible)."""
    return admin.find(css).get_attribute("textContent")


def _scenario(base: str, admin: Admin) -> None:
    # Anonymous: the admin's login, which comes back to the dashboard.
    with urllib.request.urlopen(base + DASHBOARD + "instance?id=approve-1", timeout=30) as response:
        assert response.status == 200 and "/admin/login/?next=" in response.url, response.url
        assert urllib.parse.quote(DASHBOARD + "instance?id=approve-1", safe="/") in response.url

    # Staff with view_instance: the admin index links the dashboard; payloads hidden, no actions.
    _login(admin, "viewer")
    admin.get("/admin/")
    admin.link("Workflow dashboard").click()
    _eventually(lambda: admin.find_all("tr[data-instance='approve-1']"), "approve-1 in the dashboard's list")
    assert admin.driver.current_url == base + DASHBOARD
    assert admin.text("header .hint") == "payloads hidden"
    admin.link("approve-1").click()
    _eventually(lambda: admin.text("#status") == "Running", "the instance page")
    assert SECRET not in admin.driver.page_source
    assert "waiting for approval" not in admin.driver.page_source  # custom status is a payload too
    assert "AwaitApproval" in admin.text("#summary")  # names are shown
    assert admin.find_all("#no-actions") and not admin.find_all("#actions form")
    # The live view polls its JSON through the admin too (it marks #live with the status it read), payloads hidden.
    _eventually(lambda: admin.find("#live").get_attribute("data-status") == "Running", "the live view's first poll")
    status, text = _fetch_get(admin, DASHBOARD + "api/instance?id=approve-1")
    assert status == 200 and '"status":"Running"' in text.replace(" ", "") and SECRET not in text, (status, text)
    csrf = admin.driver.get_cookie("duroxide_dashboard_csrf")
    assert csrf and csrf["httpOnly"] and csrf["path"] == DASHBOARD and csrf["sameSite"] == "Strict"
    body = f"csrf_token={csrf['value']}&id=approve-1&name=Approve"
    status, text = _fetch_post(admin, DASHBOARD + "instance/raise-event", body)
    assert status == 403 and "you may not raise event here" in text, (status, text)

    # Staff without a workflow permission: no dashboard in the index, and 403 at its address.
    _login(admin, "nobody")
    admin.get("/admin/")
    assert not admin.find_all(f"a[href='{DASHBOARD}']")
    admin.get(DASHBOARD)
    assert "403 Forbidden" in admin.driver.page_source

    # The superuser, from the admin's instance page: payloads shown.
    _login(admin, "admin")
    admin.get("/admin/duroxide/instance/approve-1/change/")
    admin.find("#dx-dashboard-link").click()
    _eventually(lambda: admin.text("#status") == "Running", "the dashboard's instance page")
    assert admin.driver.current_url == base + DASHBOARD + "instance?id=approve-1"
    assert admin.text("header .hint") == "payloads shown"
    assert SECRET in _all_text(admin, "#history") and "waiting for approval" in _all_text(admin, "#summary")

    # The dashboard's own CSRF protects its POSTs (Django's middleware is not applied to them).
    cookies = {c["name"]: c["value"] for c in admin.driver.get_cookies()}
    form = {"id": "approve-1", "name": "Approve", "data": '{"by": "mallory"}'}
    status, text = _post(base, DASHBOARD + "instance/raise-event", form, cookies, base)
    assert status == 403 and "CSRF check failed" in text, (status, text)
    token = {**form, "csrf_token": cookies["duroxide_dashboard_csrf"]}
    status, text = _post(base, DASHBOARD + "instance/raise-event", token, cookies, "http://evil.example")
    assert status == 403 and "not this site" in text, (status, text)

    # The event raised from the dashboard's form completes the instance (the page shows it: the live view, or the
    # redirect's page if the worker was quicker).
    admin.find("#raise-event-form input[name=name]").send_keys("Approve")
    admin.find("#raise-event-form input[name=data]").send_keys('{"by": "ann"}')
    admin.find("#raise-event-form button").click()
    _eventually(lambda: "event 'Approve' raised" in admin.text("#notice"), "the raise-event notice")
    _eventually(lambda: admin.text("#status") == "Completed", "approve-1 to complete")
    summary = _all_text(admin, "#summary")
    assert '"by": "ann"' in summary and "approved" in summary, summary
    assert "ExternalEvent" in admin.text("#history") and '"by": "ann"' in _all_text(admin, "#history")
    assert "mallory" not in _all_text(admin, "#history")  # the refused POSTs sent nothing
