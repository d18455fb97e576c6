"""The dashboard (issue 15 part 2) in a real browser: `python -m duroxide_celery.cli dashboard` serving a SQLite
store, headless Chromium through Selenium, and an embedded Runtime in this process on the same file running the
workflows (a finished, a failed and a waiting instance).

One dashboard process and one browser session check: the list and its status filter, the instance page's SVG
timeline (a bar per activity, the failure in red), the raise-event action completing a waiting instance, and
the live view turning Running into Completed without a reload. Screenshots of the list and an instance page go to
tests/artifacts/ (ignored by git). The dashboard has no broker, so the runtime's recovery sweep (tuned short
here) delivers the event: the database is the truth.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from duroxide_celery import Client, Runtime, RuntimeOptions, SqliteProvider

from .conftest import ROOT, Proc

pytest.importorskip("flask", reason="the dashboard needs Flask (pip install -e '.[dev]')")
pytest.importorskip("waitress", reason="the dashboard needs waitress (pip install -e '.[dev]')")

ARTIFACTS = ROOT / "tests" / "artifacts"
WAIT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eventually(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the page may be between loads
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_dashboard_lists_draws_acts_and_updates_live(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    gate = threading.Event()

    def order(ctx, x):
        total = yield ctx.schedule_activity("Price", x)
        ctx.set_kv_value("total", str(total))
        approval = yield ctx.wait_for_event("approve")
        yield ctx.schedule_activity("Ship", approval)
        return {"total": total, "approval": approval}

    def broken(ctx, x):
        yield ctx.schedule_activity("Price", x)
        return (yield ctx.schedule_activity("Explode", x))

    def explode(ctx, x):
        raise RuntimeError("card declined")

    def ship(ctx, approval):
        gate.wait(WAIT_S)  # the test lets it finish once the page is watching
        return "shipped"

    db = tmp_path / "dash.db"
    provider = SqliteProvider.open(f"sqlite:///{db}")
    runtime = Runtime(provider, RuntimeOptions(recovery_interval_ms=200, recovery_threshold_ms=300))
    runtime.register_orchestration("Order", order)
    runtime.register_orchestration("Broken", broken)
    for name, fn in (("Price", lambda ctx, x: x * 10), ("Explode", explode), ("Ship", ship)):
        runtime.register_activity(name, fn)
    runtime.start()
    port = _free_port()
    dashboard = None
    try:
        client = Client(provider)
        client.start_orchestration("done-1", "Order", 1)
        client.start_orchestration("fail-1", "Broken", 2)
        client.start_orchestration("wait-1", "Order", 3)
        _eventually(lambda: "ExternalSubscribed" in [e.kind for e in client.read_execution_history("done-1", 1)], "")
        client.raise_event("done-1", "approve", "yes")
        gate.set()
        assert client.wait_for_orchestration("done-1", 15_000).status == "Completed"
        gate.clear()
        assert client.wait_for_orchestration("fail-1", 15_000).status == "Failed"
        _eventually(lambda: client.get_waits("wait-1").events, "wait-1 to wait for its event")

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [
            sys.executable,
            "-m",
            "duroxide_celery.cli",
            "--db",
            f"sqlite:///{db}",
            "dashboard",
            "--port",
            str(port),
        ]
        dashboard = Proc("dashboard", argv, env, tmp_path / "dashboard.log")
        base = f"http://127.0.0.1:{port}"
        _eventually(lambda: urllib.request.urlopen(base + "/", timeout=2).status == 200, "the dashboard to serve")
        ARTIFACTS.mkdir(exist_ok=True)

        # The list: all three, then only the failed one through the status filter.
        browser.get(base + "/")
        ids = {r.get_attribute("data-instance") for r in browser.find_elements(By.CSS_SELECTOR, "tr.row")}
        assert ids == {"done-1", "fail-1", "wait-1"}
        assert browser.find_element(By.ID, "count-failed").text.split() == ["Failed", "1"]
        browser.save_screenshot(str(ARTIFACTS / "dashboard-list.png"))
        browser.find_element(By.CSS_SELECTOR, "#status-filter option[value=Failed]").click()
        browser.find_element(By.ID, "apply-filters").click()
        _eventually(lambda: "status=Failed" in browser.current_url, "the filtered list")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.row")
        assert [r.get_attribute("data-instance") for r in rows] == ["fail-1"]

        # The failed instance's timeline marks its failed activity in red.
        browser.find_element(By.LINK_TEXT, "fail-1").click()
        _eventually(lambda: browser.find_elements(By.ID, "timeline-svg"), "the timeline")
        failed = browser.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.bar.activity.failed")
        assert len(failed) == 1
        assert browser.find_element(By.ID, "status").text == "Failed"

        # The waiting one: a bar per activity so far, the event it waits on, payloads hidden by default.
        browser.get(f"{base}/instance?id=wait-1")
        bars = browser.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.bar.activity")
        assert [b.get_attribute("data-state") for b in bars] == ["ok"]
        assert "event approve" in browser.find_element(By.ID, "waits").text
        # Compare whole cells: the row's update time may contain the digits of the hidden value.
        kv_cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#kv td")]
        assert any(cell.startswith("hidden (") for cell in kv_cells) and "30" not in kv_cells, kv_cells
        browser.save_screenshot(str(ARTIFACTS / "dashboard-instance.png"))

        # Raise the event through the form; the page it lands on then follows the instance without a reload.
        form = browser.find_element(By.ID, "raise-event-form")
        form.find_element(By.NAME, "name").send_keys("approve")
        form.find_element(By.NAME, "data").send_keys('{"by": "ops"}')
        form.find_element(By.TAG_NAME, "button").click()
        _eventually(lambda: "raised" in browser.find_element(By.ID, "notice").text, "the action's notice")
        browser.execute_script("window.__sameDocument = 'yes'")
        _eventually(
            lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.bar.activity.pending"),
            "the Ship activity, pending, drawn by the live view",
        )
        assert browser.find_element(By.ID, "status").text == "Running"
        gate.set()
        _eventually(lambda: browser.find_element(By.ID, "status").text == "Completed", "the live view's Completed")
        assert browser.execute_script("return window.__sameDocument") == "yes"  # no reload happened
        states = [b.get_attribute("data-state") for b in browser.find_elements(By.CSS_SELECTOR, "rect.bar.activity")]
        assert states == ["ok", "ok"]
        assert client.get_status("wait-1").output == {"total": 30, "approval": {"by": "ops"}}
        browser.save_screenshot(str(ARTIFACTS / "dashboard-instance-completed.png"))
    finally:
        gate.set()
        if dashboard is not None:
            dashboard.kill()
        runtime.shutdown(timeout_ms=2000)
        provider.dispose()
