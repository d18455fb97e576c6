"""The durable workflows admin (duroxide_celery.contrib.django.admin) in a real browser: the Django test project
(tests/djangoproj) under `manage.py runserver`, PostgreSQL, a superuser made with `createsuperuser --noinput`, and
headless Chromium driven by Selenium through Debian's chromium-driver.

Workflows run on a real prefork `celery worker` (Redis): an order placed through the project's view, and
AwaitApproval instances started with `manage.py duroxide start`; the admin raises their "Approve" event, cancels
one, enqueues messages, prunes executions, deletes, and refuses users without the permissions. A missing
Chromium, chromedriver or selenium skips loudly, or fails when CI is set.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REDIS_URL, Proc
from .django_support import free_port, fresh_database, manage, project_env, worker_and_web

pytest.importorskip("django", reason="Django is not installed (pip install -e '.[dev]')")

PROJECT = Path(__file__).resolve().parents[1] / "djangoproj"
PASSWORD = "admin-test-password"
WAIT_S = 30


def _env(**extra: str) -> dict[str, str]:
    return project_env(PROJECT, "PROJ_", **extra)


def _manage(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return manage(PROJECT, env, *args, timeout=timeout)


@pytest.fixture
def project_db(postgres: None) -> Iterator[str]:
    with fresh_database("djadmin") as name:
        yield name


def _eventually(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - the page may be between loads
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class Admin:
    """The admin pages, through the browser."""

    def __init__(self, driver: Any, base: str):
        from selenium.webdriver.common.by import By

        self.driver, self.base, self.by = driver, base, By

    def get(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def link(self, text: str) -> Any:
        return self.driver.find_element(self.by.LINK_TEXT, text)

    def listed(self) -> dict[str, str]:
        """Instance id -> status of the rows of the instances list."""
        return {
            row.find_element(self.by.CSS_SELECTOR, ".field-instance_id").text: row.find_element(
                self.by.CSS_SELECTOR, ".field-status"
            ).text
            for row in self.find_all("tr.dx-instance")
        }

    def submit(self, form_id: str, **fields: str) -> None:
        form = self.find(f"#{form_id}")
        for name, value in fields.items():
            element = form.find_element(self.by.NAME, name)
            if element.get_attribute("type") == "checkbox":
                if element.is_selected() != bool(value):
                    element.click()
            else:
                element.clear()
                element.send_keys(value)
        form.find_element(self.by.CSS_SELECTOR, "input[type=submit]").click()

    def messages(self) -> str:
        return " ".join(m.text for m in self.find_all("ul.messagelist li"))


def test_the_admin_lists_shows_and_operates_workflow_instances_in_a_browser(
    project_db: str, redis_db: int, browser: Any, tmp_path: Path
) -> None:
    prefix = f"dja{uuid.uuid4().hex[:8]}"
    env = _env(PROJ_PG_NAME=project_db, PROJ_BROKER_URL=f"{REDIS_URL}/{redis_db}", PROJ_QUEUE_PREFIX=prefix)
    _manage(env, "migrate", "--noinput")
    _manage(env, "duroxide", "migrate")
    _manage(
        {**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        "createsuperuser",
        "--noinput",
        "--username",
        "admin",
        "--email",
        "admin@example.com",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = worker_and_web(PROJECT, prefix, env, tmp_path, port, concurrency=2)
    try:
        procs[0].wait_for_log(" ready.")
        procs[1].wait_for_log("Quit the server")
        _run_admin_scenario(env, base, Admin(browser, base), procs)
    finally:
        for proc in procs:
            proc.kill()


def _run_admin_scenario(env: dict[str, str], base: str, admin: Admin, procs: list[Proc]) -> None:
    # An order through the project's view.
    request = urllib.request.Request(
        f"{base}/orders/",
        data=json.dumps({"item": "lamp", "quantity": 3}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        order = json.load(response)["instance"]
    for instance in ("approve-1", "cancel-1", "approve-2"):
        started = _manage(env, "duroxide", "start", "AwaitApproval", "--id", instance, "--input", "7")
        assert started.stdout.split() == [instance], started.stdout

    # The admin is for logged-in staff only.
    with urllib.request.urlopen(f"{base}/admin/duroxide/instance/", timeout=30) as response:
        assert "/admin/login/" in response.url

    admin.get("/admin/login/?next=/admin/")
    admin.find("#id_username").send_keys("admin")
    admin.find("#id_password").send_keys(PASSWORD)
    admin.find("#login-form input[type=submit]").click()
    _eventually(lambda: admin.link("Workflow instances"), "the admin index")
    admin.link("Workflow instances").click()

    # The list: the completed order and the three waiting instances.
    def four_listed() -> dict[str, str] | None:
        admin.get("/admin/duroxide/instance/")
        listed = admin.listed()
        return listed if len(listed) == 4 and "Running" not in listed.get(order, "Running") else None

    listed = _eventually(four_listed, "four instances listed, the order done")
    assert listed == {order: "Completed", "approve-1": "Running", "cancel-1": "Running", "approve-2": "Running"}, (
        listed,
        [p.tail() for p in procs],
    )

    # Filter by status (the filter sidebar) and search by id.
    admin.link("Running (3)").click()
    _eventually(lambda: set(admin.listed()) == {"approve-1", "cancel-1", "approve-2"}, "the Running filter")
    admin.link("Completed (1)").click()
    _eventually(lambda: admin.listed() == {order: "Completed"}, "the Completed filter")
    admin.find("#changelist-filter-extra-actions a").click()  # clear all filters
    _eventually(lambda: len(admin.listed()) == 4, "all instances again")
    admin.link("AwaitApproval (3)").click()
    _eventually(lambda: set(admin.listed()) == {"approve-1", "cancel-1", "approve-2"}, "the orchestration filter")
    admin.link("Today").click()  # created today (and still AwaitApproval)
    _eventually(lambda: len(admin.listed()) == 3, "the created-today filter")
    admin.get("/admin/duroxide/instance/")
    search = admin.find("#searchbar")
    search.send_keys("APPROVE-1")  # case-insensitive, part of the id
    search.submit()
    _eventually(lambda: admin.listed() == {"approve-1": "Running"}, "the search by id")
    admin.get("/admin/duroxide/instance/?q=no-such-instance")
    assert admin.listed() == {} and "0 results" in admin.text("#result-count")

    # The order's page: status, output and its history table.
    admin.get("/admin/duroxide/instance/")
    admin.link(order).click()
    _eventually(lambda: admin.text("#dx-instance-id") == order, "the order's page")
    assert admin.text("#dx-status") == "Completed"
    assert '"item": "lamp"' in admin.text("#dx-output") or '"item":"lamp"' in admin.text("#dx-output")
    kinds = [cell.text for cell in admin.find_all("#dx-history td.dx-kind")]
    assert kinds[0] == "OrchestrationStarted" and "ActivityScheduled" in kinds and "ActivityCompleted" in kinds, kinds
    assert "OrchestrationCompleted" in kinds, kinds
    assert "ReserveStock" in admin.text("#dx-history")
    assert [n.text.split()[0] for n in admin.find_all("#dx-tree li.dx-node")] == [order]

    # The waiting instance: custom status and KV; an invalid JSON event is a form error (not a 500).
    admin.get("/admin/duroxide/instance/approve-1/change/")
    assert admin.text("#dx-status") == "Running"
    assert "waiting for approval" in admin.text("#dx-custom-status")
    assert [row.text.split()[:2] for row in admin.find_all("#dx-kv tr.dx-kv")] == [["order", "7"]]
    admin.submit("dx-raise-event", **{"raise_event-event_name": "Approve", "raise_event-data": '{"by": "ann"'})
    errors = _eventually(lambda: admin.text("#dx-raise-event .errorlist"), "the invalid JSON error")
    assert "Enter valid JSON" in errors, errors
    assert admin.text("#dx-status") == "Running"
    assert admin.find("#dx-raise-event textarea").get_attribute("value") == '{"by": "ann"'  # kept to correct it

    # A valid one (with markup in it, which must show as text): the instance completes with it.
    hostile = "<img src=x onerror=document.title='pwned'>"
    admin.submit(
        "dx-raise-event", **{"raise_event-event_name": "Approve", "raise_event-data": json.dumps({"by": hostile})}
    )
    _eventually(lambda: "Event 'Approve' raised on approve-1" in admin.messages(), "the raise-event message")

    def completed() -> bool:
        admin.get("/admin/duroxide/instance/approve-1/change/")
        return admin.text("#dx-status") == "Completed"

    _eventually(completed, "approve-1 to complete")
    assert hostile in admin.text("#dx-output")  # shown as text: escaped
    assert not admin.find_all("#dx-output img") and admin.driver.title != "pwned"
    assert "approved" in admin.text("#dx-custom-status")
    kinds = [cell.text for cell in admin.find_all("#dx-history td.dx-kind")]
    assert "ExternalEvent" in kinds, kinds
    assert not admin.find_all("#dx-raise-event")  # no signals for a finished instance

    # Cancel the other one: it ends Failed, with the cancellation as its error.
    admin.get("/admin/duroxide/instance/cancel-1/change/")
    admin.submit("dx-cancel", **{"cancel-reason": "not needed"})
    _eventually(lambda: "Cancellation requested for cancel-1" in admin.messages(), "the cancel message")

    def failed() -> bool:
        admin.get("/admin/duroxide/instance/cancel-1/change/")
        return admin.text("#dx-status") == "Failed"

    _eventually(failed, "cancel-1 to end Failed")
    assert "canceled: not needed" in admin.text("#dx-error")

    # Delete needs the confirmation box (required: the browser does not submit without it); then the instance is
    # gone from the list.
    assert admin.find("#dx-delete input[name='delete-confirm']").get_attribute("required") is not None
    admin.submit("dx-delete", **{"delete-confirm": "on"})
    _eventually(lambda: "Deleted cancel-1" in admin.messages(), "the delete message")
    assert set(admin.listed()) == {order, "approve-1", "approve-2"}
    admin.get("/admin/duroxide/instance/cancel-1/change/")
    assert "Not Found" in admin.driver.page_source

    _sub_orchestrations_queues_and_pruning(env, admin)
    _permissions(env, admin, order)


def _executions(admin: Admin) -> int:
    return len(admin.find_all("#dx-executions tr.dx-execution"))


def _sub_orchestrations_queues_and_pruning(env: dict[str, str], admin: Admin) -> None:
    _manage(env, "duroxide", "start", "InboxParent", "--id", "inbox-parent", "--input", '"inbox-child"')
    admin.get("/admin/duroxide/instance/inbox-parent/change/")
    nodes = [n.text for n in admin.find_all("#dx-tree li.dx-node")]
    assert [n.split()[0] for n in nodes] == ["inbox-parent", "inbox-child"], nodes
    admin.link("inbox-child").click()
    _eventually(lambda: admin.text("#dx-instance-id") == "inbox-child", "the child's page")
    assert admin.link("inbox-parent")  # the parent, linked
    # A long KV value: a short head; the whole behind "show all".

    def kv_written() -> bool:
        admin.get("/admin/duroxide/instance/inbox-child/change/")
        return bool(admin.find_all("#dx-kv details.dx-payload"))

    _eventually(kv_written, "the child's KV value", timeout=10)
    value = admin.find("#dx-kv details.dx-payload")
    assert "x" * 300 not in value.text
    value.find_element(admin.by.TAG_NAME, "summary").click()
    assert "x" * 300 + " after 0 messages" in value.find_element(admin.by.CSS_SELECTOR, "pre").text
    assert _executions(admin) == 1

    # Two queue messages: two more executions (continue-as-new).
    for n in (1, 2):
        admin.submit("dx-enqueue-event", **{"enqueue_event-queue_name": "items", "enqueue_event-data": str(n)})
        _eventually(lambda: "Message enqueued on 'items' of inbox-child" in admin.messages(), "the enqueue message")

        def executions(count: int = n + 1) -> bool:
            admin.get("/admin/duroxide/instance/inbox-child/change/")
            return _executions(admin) == count

        _eventually(executions, f"execution {n + 1}")
    assert "QueueEventDelivered" not in [c.text for c in admin.find_all("#dx-history td.dx-kind")]  # a new one

    admin.submit("dx-prune", **{"prune-keep_last": "1"})
    _eventually(lambda: "Pruned 2 executions" in admin.messages(), "the prune message")
    assert _executions(admin) == 1

    # Only a whole tree is deleted: the Client's refusal is a form error.
    admin.submit("dx-delete", **{"delete-confirm": "on", "delete-force": "on"})
    errors = _eventually(lambda: admin.text("#dx-delete .errorlist"), "the delete refusal")
    assert "Cannot delete sub-orchestration inbox-child" in errors, errors

    admin.submit("dx-enqueue-event", **{"enqueue_event-queue_name": "items", "enqueue_event-data": '"stop"'})

    def parent_completed() -> bool:
        admin.get("/admin/duroxide/instance/inbox-parent/change/")
        return admin.text("#dx-status") == "Completed"

    _eventually(parent_completed, "inbox-parent to complete")
    assert admin.text("#dx-output") == "2"


def _post_from_page(admin: Admin, path: str, body: str, csrf: bool = True) -> int:
    """POST with fetch() from the logged-in page, with or without the CSRF token; the HTTP status."""
    return admin.driver.execute_script(
        """
        const [path, body, csrf] = arguments;
        const cookie = document.cookie.split('; ').find(c => c.startsWith('csrftoken='));
        const headers = {'Content-Type': 'application/x-www-form-urlencoded'};
        if (csrf) headers['X-CSRFToken'] = cookie.split('=')[1];
        return fetch(path, {method: 'POST', headers, body, credentials: 'same-origin', redirect: 'manual'})
            .then(r => r.status);
        """,
        path,
        body,
        csrf,
    )


def _login(admin: Admin, username: str) -> None:
    admin.driver.delete_all_cookies()
    admin.get("/admin/login/?next=/admin/")
    admin.find("#id_username").send_keys(username)
    admin.find("#id_password").send_keys(PASSWORD)
    admin.find("#login-form input[type=submit]").click()
    _eventually(lambda: "/admin/login/" not in admin.driver.current_url, f"{username} to log in")


HIDDEN = "hidden (needs the view_payloads permission)"


def _body(admin: Admin, path: str) -> str:
    """A text/plain page (the raw view), as the browser shows it."""
    admin.get(path)
    return admin.text("body")


def _payloads_hidden(admin: Admin, order: str) -> str:
    """view_instance without view_payloads: the order's output, event data, the approval's custom status and KV
    value read HIDDEN on the pages and in the raw view; names, kinds and keys stay. The ActivityCompleted's id."""
    admin.get(f"/admin/duroxide/instance/{order}/change/")
    assert admin.find_all("#dx-payloads-hidden")
    assert "lamp" not in admin.driver.page_source
    assert admin.text("#dx-output") == HIDDEN
    assert "ReserveStock" in admin.text("#dx-history")  # the activity's name (metadata) stays
    rows = {r.find_element(admin.by.CSS_SELECTOR, "td.dx-kind").text: r for r in admin.find_all("tr.dx-event")}
    completed_id = rows["ActivityCompleted"].find_element(admin.by.TAG_NAME, "td").text
    assert HIDDEN in rows["ActivityCompleted"].text
    raw = f"/admin/duroxide/instance/{order}/raw/"
    assert _body(admin, raw + "?field=output") == HIDDEN
    event = _body(admin, raw + f"?execution=1&event={completed_id}")
    assert json.loads(event)["result"] == HIDDEN and "lamp" not in event, event
    admin.get("/admin/duroxide/instance/approve-1/change/")
    assert "pwned" not in admin.driver.page_source and "approved" not in admin.driver.page_source
    assert HIDDEN in admin.text("#dx-custom-status")
    assert [row.text.split()[:2] for row in admin.find_all("#dx-kv tr.dx-kv")] == [["order", "hidden"]]
    assert _body(admin, "/admin/duroxide/instance/approve-1/raw/?kv=order") == HIDDEN
    assert _body(admin, "/admin/duroxide/instance/approve-1/raw/?field=custom_status") == HIDDEN
    return completed_id


def _permissions(env: dict[str, str], admin: Admin, order: str) -> None:
    script = (
        "from django.contrib.auth.models import Permission, User\n"
        f"viewer = User.objects.create_user('viewer', password={PASSWORD!r}, is_staff=True)\n"
        "viewer.user_permissions.add(Permission.objects.get(content_type__app_label='duroxide', "
        "codename='view_instance'))\n"
        f"User.objects.create_user('nobody', password={PASSWORD!r}, is_staff=True)\n"
    )
    _manage(env, "shell", "-c", script)
    cancel = "_action=cancel&cancel-reason=x"

    # The superuser's POST without the CSRF token is refused.
    admin.get("/admin/duroxide/instance/approve-2/change/")
    assert _post_from_page(admin, "/admin/duroxide/instance/approve-2/change/", cancel, csrf=False) == 403

    # view_instance: the pages, without action forms; a POST is refused.
    _login(admin, "viewer")
    admin.get("/admin/duroxide/instance/")
    assert "approve-2" in admin.listed()
    admin.get("/admin/duroxide/instance/approve-2/change/")
    assert admin.text("#dx-status") == "Running"
    assert not admin.find_all("#dx-actions form")
    assert "You may view this instance, not change it." in admin.text("#dx-actions")
    assert _post_from_page(admin, "/admin/duroxide/instance/approve-2/change/", cancel) == 403
    admin.get("/admin/duroxide/instance/approve-2/change/")
    assert admin.text("#dx-status") == "Running"
    completed_id = _payloads_hidden(admin, order)

    # With duroxide.view_payloads as well: the payloads, on the page and in the raw view.
    grant = (
        "from django.contrib.auth.models import Permission, User\n"
        "User.objects.get(username='viewer').user_permissions.add(Permission.objects.get("
        "content_type__app_label='duroxide', codename='view_payloads'))\n"
    )
    _manage(env, "shell", "-c", grant)
    admin.get(f"/admin/duroxide/instance/{order}/change/")
    assert '"item":"lamp"' in admin.text("#dx-output") and not admin.find_all("#dx-payloads-hidden")
    assert HIDDEN not in admin.driver.page_source
    raw = f"/admin/duroxide/instance/{order}/raw/"
    assert '"item":"lamp"' in _body(admin, raw + "?field=output")
    assert json.loads(_body(admin, raw + f"?execution=1&event={completed_id}"))["result"].find("lamp") > 0
    admin.get("/admin/duroxide/instance/approve-1/change/")
    assert "approved" in admin.text("#dx-custom-status")
    assert [row.text.split()[:2] for row in admin.find_all("#dx-kv tr.dx-kv")] == [["order", "7"]]

    # A staff user without the permission sees nothing.
    _login(admin, "nobody")
    admin.get("/admin/duroxide/instance/")
    assert "403 Forbidden" in admin.driver.page_source
    admin.get("/admin/duroxide/instance/approve-2/change/")
    assert "403 Forbidden" in admin.driver.page_source
