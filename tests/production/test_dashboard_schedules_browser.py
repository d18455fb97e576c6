"""The dashboard's schedules page in a real browser: `python -m duroxide_celery.cli dashboard` serving a SQLite
store, headless Chromium through Selenium, and an embedded Runtime in this process on the same file running what
the page triggers (the dashboard has no broker: the runtime's recovery sweep, tuned short, delivers the start).

Checks: the list from the header link, pause from the page (the row then says paused and offers resume), trigger
(a notice names the started instance, whose page the last-run link opens and which completes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from duroxide_celery import Client, Runtime, RuntimeOptions, SqliteProvider

from .conftest import ROOT, Proc
from .test_dashboard_browser import _eventually, _free_port

pytest.importorskip("flask", reason="the dashboard needs Flask (pip install -e '.[dev]')")
pytest.importorskip("waitress", reason="the dashboard needs waitress (pip install -e '.[dev]')")

#: 2030-01-01T00:00:00Z: the schedules' ticks stay ahead of the real clock; only the page's trigger starts a run.
BASE = 1893456000000


def test_schedules_page_pauses_and_triggers(browser: Any, tmp_path: Path) -> None:
    import urllib.request

    from selenium.webdriver.common.by import By

    db = tmp_path / "sched.db"
    provider = SqliteProvider.open(f"sqlite:///{db}")
    runtime = Runtime(provider, RuntimeOptions(recovery_interval_ms=200, recovery_threshold_ms=300))
    runtime.register_orchestration("Echo", lambda ctx, value: value)
    runtime.start()
    client = Client(provider)
    client.create_schedule("hourly", "Echo", "tick", every_ms=3_600_000, start_at=BASE)
    client.create_schedule("daily", "Echo", cron="0 6 * * *", timezone="Asia/Tokyo", start_at=BASE, paused=True)
    port = _free_port()
    dashboard = None
    try:
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
        dashboard = Proc("dashboard", argv, {**os.environ, "PYTHONPATH": str(ROOT)}, tmp_path / "dashboard.log")
        base = f"http://127.0.0.1:{port}"
        _eventually(lambda: urllib.request.urlopen(base + "/", timeout=2).status == 200, "the dashboard to serve")

        browser.get(base + "/")
        browser.find_element(By.ID, "nav-schedules").click()
        _eventually(lambda: browser.current_url.endswith("/schedules"), "the schedules page")

        def row(schedule_id: str) -> Any:
            return browser.find_element(By.CSS_SELECTOR, f'tr.row[data-schedule="{schedule_id}"]')

        assert {r.get_attribute("data-schedule") for r in browser.find_elements(By.CSS_SELECTOR, "tr.row")} == {
            "hourly",
            "daily",
        }
        assert row("daily").find_element(By.CSS_SELECTOR, "td.state").text == "paused"
        assert "2030-01-01 21:00:00.000" in row("daily").text  # the first 06:00 in Tokyo (UTC+9) after start_at

        row("hourly").find_element(By.CSS_SELECTOR, "button.pause").click()
        _eventually(lambda: browser.find_element(By.ID, "notice").text == "schedule hourly paused", "the pause notice")
        assert row("hourly").find_element(By.CSS_SELECTOR, "td.state").text == "paused"
        assert row("hourly").find_elements(By.CSS_SELECTOR, "button.resume")
        assert client.get_schedule("hourly").paused is True

        row("hourly").find_element(By.CSS_SELECTOR, "button.trigger").click()
        notice = _eventually(lambda: browser.find_element(By.ID, "notice").text.startswith("started "), "trigger")
        assert notice
        started = browser.find_element(By.ID, "notice").text.removeprefix("started ")
        assert started.startswith("hourly@") and client.get_schedule("hourly").last_instance_id == started
        assert client.wait_for_orchestration(started, 30_000).output == "tick"
        row("hourly").find_element(By.LINK_TEXT, started).click()
        _eventually(lambda: browser.find_element(By.ID, "status").text == "Completed", "the run's instance page")
    finally:
        if dashboard is not None:
            dashboard.kill()
        runtime.shutdown(timeout_ms=2000)
        provider.dispose()
