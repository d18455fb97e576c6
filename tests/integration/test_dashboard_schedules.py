"""The dashboard's schedules page through Flask's test client over the suite's store: the list (cadence, state,
next tick, last run linking to its instance), and its pause, resume and trigger actions (CSRF-checked, unknown
schedules 404)."""

from __future__ import annotations

import html
import re
from urllib.parse import unquote

import pytest

from duroxide_celery import Client

from .helpers import WAIT_MS

pytest.importorskip("flask", reason="the dashboard needs Flask (pip install -e '.[dev]')")

from duroxide_celery.dashboard import create_app  # noqa: E402
from duroxide_celery.dashboard.app import CSRF_COOKIE  # noqa: E402

#: 2030-01-01T00:00:00Z: far ahead of the real clock, so the runtime never fires these ticks itself.
BASE = 1893456000000


def _rows(page: str) -> dict[str, str]:
    return {
        html.unescape(m.group(1)): m.group(2)
        for m in re.finditer(r'<tr class="row" data-schedule="([^"]*)">(.*?)</tr>', page, re.S)
    }


def test_schedules_page_lists_and_acts(client: Client, runtime_factory) -> None:
    runtime_factory({"Echo": lambda ctx, value: value})
    client.create_schedule("nightly <&>", "Echo", cron="30 2 * * *", timezone="Europe/Paris", start_at=BASE)
    client.create_schedule("often", "Echo", {"secret": 1}, every_ms=60_000, start_at=BASE, paused=True)
    tc = create_app(client).test_client()

    page = tc.get("/schedules").get_data(as_text=True)
    rows = _rows(page)
    assert sorted(rows) == ["nightly <&>", "often"]
    assert "<code>30 2 * * *</code> Europe/Paris" in rows["nightly <&>"] and "active" in rows["nightly <&>"]
    assert "2030-01-01 01:30:00.000" in rows["nightly <&>"]  # 02:30 in Paris, UTC+1 in winter
    assert "every 60000 ms" in rows["often"] and "paused" in rows["often"]
    assert "secret" not in page  # inputs are payloads: never on this page
    assert 'id="nav-schedules"' in tc.get("/").get_data(as_text=True)

    csrf = tc.get_cookie(CSRF_COOKIE).value
    assert tc.post("/schedules/resume", data={"id": "often"}).status_code == 403  # no CSRF token
    resumed = tc.post("/schedules/resume", data={"id": "often", "csrf_token": csrf})
    assert resumed.status_code == 303 and client.get_schedule("often").paused is False
    paused = tc.post("/schedules/pause", data={"id": "nightly <&>", "csrf_token": csrf})
    assert paused.status_code == 303 and client.get_schedule("nightly <&>").paused is True

    triggered = tc.post("/schedules/trigger", data={"id": "often", "csrf_token": csrf})
    assert triggered.status_code == 303
    started = client.get_schedule("often").last_instance_id
    assert started.startswith("often@") and client.wait_for_orchestration(started, WAIT_MS).status == "Completed"
    listed = _rows(tc.get(triggered.headers["Location"]).get_data(as_text=True))["often"]
    link = re.search(r'<a href="([^"]*)">([^<]*)</a>', listed)
    assert (unquote(html.unescape(link.group(1))), link.group(2)) == (f"/instance?id={started}", started)
    assert tc.get(html.unescape(link.group(1))).status_code == 200  # the run's instance page

    assert tc.post("/schedules/pause", data={"id": "gone", "csrf_token": csrf}).status_code == 404
    assert tc.post("/schedules/explode", data={"id": "often", "csrf_token": csrf}).status_code == 404
    assert tc.post("/schedules/pause", data={"csrf_token": csrf}).status_code == 400
