"""The dashboard's pages and rules through Flask's test client over the suite's store (SQLite, or PostgreSQL with
DUROXIDE_TEST_DB=postgres), with an embedded runtime where workflows must run: list filters and keyset pages,
bad input (400 with a message, unknown instance 404), payloads hidden unless shown (and decoded once when shown),
token and callable authentication, CSRF on actions, the actions' answers, mounting under a prefix, and the CLI's
refusal to bind beyond loopback without a token. The real browser and server process: tests/production.
"""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from click.testing import CliRunner

from duroxide_celery import Client

from .helpers import WAIT_MS, wait_for_kind

flask = pytest.importorskip("flask", reason="the dashboard needs Flask (pip install -e '.[dev]')")

from duroxide_celery.cli import main  # noqa: E402
from duroxide_celery.dashboard import create_app, create_blueprint  # noqa: E402
from duroxide_celery.dashboard.app import CSRF_COOKIE  # noqa: E402

TOKEN = "s3cret-token-for-tests"


def _ids(page: bytes) -> list[str]:
    return [html.unescape(i) for i in re.findall(r'data-instance="([^"]*)"', page.decode())]


def _message(page: Any) -> str:
    if page.is_json:
        return page.json["error"]
    found = re.search(r'id="error-message">([^<]*)<', page.get_data(as_text=True))
    return html.unescape(found.group(1)) if found else ""


def _csrf(tc: Any) -> str:
    tc.get("/")
    return tc.get_cookie(CSRF_COOKIE).value


def test_list_filters_and_keyset_pages(client: Client) -> None:
    for i in range(7):
        client.start_orchestration(f"pg-{i}", "Paged", i)
    client.start_orchestration("other-1", "Other", None)
    client.start_orchestration_versioned("other-2", "Other", None, "2.0.0")
    tc = create_app(client).test_client()

    first = tc.get("/")
    assert first.status_code == 200
    assert re.search(r'id="count-running">Running <b>9</b>', first.get_data(as_text=True))
    assert sorted(_ids(first.data)) == sorted([f"pg-{i}" for i in range(7)] + ["other-1", "other-2"])
    assert _ids(tc.get("/?name=Other").data) == ["other-2", "other-1"]
    assert _ids(tc.get("/?version=2.0.0").data) == ["other-2"]
    assert _ids(tc.get("/?status=Completed").data) == []
    assert sorted(_ids(tc.get("/?q=pg-").data)) == [f"pg-{i}" for i in range(7)]
    assert _ids(tc.get("/?q=PG-").data) == []  # prefixes are case sensitive, as ids are
    assert _ids(tc.get("/?q=pg_").data) == []  # a LIKE wildcard in the prefix matches itself only
    assert _ids(tc.get("/?from=2000-01-01T00:00&to=2001-01-01T00:00").data) == []
    assert len(_ids(tc.get("/?from=2000-01-01T00:00:00").data)) == 9

    # Keyset pages of 3 over the 7 "pg-" instances: every id exactly once, then back with "newer".
    seen: list[str] = []
    url = "/?q=pg-&limit=3"
    pages = []
    while url:
        page = tc.get(url).get_data(as_text=True)
        pages.append(url)
        seen += _ids(page.encode())
        older = re.search(r'href="([^"]*)" id="older"', page)
        url = html.unescape(older.group(1)) if older else None
    assert sorted(seen) == [f"pg-{i}" for i in range(7)] and len(seen) == 7 and len(pages) == 3
    last = tc.get(pages[-1]).get_data(as_text=True)
    newer = html.unescape(re.search(r'href="([^"]*)" id="newer"', last).group(1))
    assert _ids(tc.get(newer).data) == seen[3:6]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/?status=Bogus", "status must be one of Running, Completed, Failed, got 'Bogus'"),
        ("/?limit=0", "limit must be between 1 and 500, got 0"),
        ("/?limit=ten", "limit must be an integer, got 'ten'"),
        ("/?from=yesterday", "from must be an ISO-8601 time or epoch milliseconds, got 'yesterday'"),
        ("/?from=2020-01-02T00:00&to=2020-01-01T00:00", "the time range is empty: 'from' must be before 'to'"),
        ("/?after=xyz", "after is not a page cursor of this dashboard"),
        ("/?name=%00", "name must not contain NUL characters (\\x00), got '\\x00'"),
        ("/?version=1.0%00", "version must not contain NUL characters (\\x00), got '1.0\\x00'"),
        ("/?q=a%00", "q must not contain NUL characters (\\x00), got 'a\\x00'"),
        ("/?after=WzEsICJhXHUwMDAwYiJd", "after is not a page cursor of this dashboard"),  # forged, with a NUL
        ("/instance", "give the instance id: ?id=..."),
        ("/api/instance?id=nobody", "no instance 'nobody'"),
        ("/instance?id=nobody", "no instance 'nobody'"),
        ("/instance?id=a%00b", "no instance 'a\\x00b'"),  # an id the store cannot hold names no instance
    ],
)
def test_bad_input_gets_a_precise_answer(client: Client, url: str, message: str) -> None:
    answer = create_app(client).test_client().get(url)
    assert answer.status_code == (404 if "id=" in url else 400)
    assert _message(answer) == message
    assert answer.is_json == url.startswith("/api/")


def test_payloads_hidden_unless_shown_and_decoded_once(runtime_factory, client: Client) -> None:
    def orch(ctx, card):
        ctx.set_kv_value("card", card["number"])
        got = yield ctx.schedule_activity("Charge", card)
        return {"receipt": got}

    runtime_factory({"Pay": orch}, {"Charge": lambda ctx, card: "paid " + card["number"]})
    client.start_orchestration("pay-1", "Pay", {"number": "4111-1111"})
    assert client.wait_for_orchestration("pay-1", WAIT_MS).status == "Completed"

    hidden = create_app(client).test_client().get("/instance?id=pay-1").get_data(as_text=True)
    assert "4111" not in hidden and "hidden (" in hidden
    assert "ActivityScheduled" in hidden and "Charge" in hidden  # names are code, always shown

    shown = create_app(client, show_payloads=True).test_client().get("/instance?id=pay-1").get_data(as_text=True)
    text = html.unescape(shown)
    assert '"number": "4111-1111"' in text  # the stored JSON, decoded once and pretty-printed
    assert '\\"number\\"' not in text  # never the JSON text shown as an escaped string
    assert '"receipt": "paid 4111-1111"' in text


def test_token_auth_bearer_and_login_form(client: Client) -> None:
    client.start_orchestration("auth-1", "Anything", None)
    tc = create_app(client, token=TOKEN).test_client()
    page = tc.get("/instance?id=auth-1")
    assert page.status_code == 302 and "/login?next=" in page.headers["Location"]
    api = tc.get("/api/instance?id=auth-1")
    assert api.status_code == 401 and api.json == {"error": "authentication required", "status": 401}
    assert tc.get("/", headers={"Authorization": "Bearer wrong-token-xx"}).status_code == 302
    assert tc.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200

    form = tc.get("/login")
    assert form.status_code == 200
    csrf = tc.get_cookie(CSRF_COOKIE).value
    assert tc.post("/login", data={"token": "nope", "csrf_token": csrf}).status_code == 401
    assert tc.post("/login", data={"token": TOKEN, "csrf_token": "forged"}).status_code == 403
    signed_in = tc.post("/login", data={"token": TOKEN, "csrf_token": csrf, "next": "/instance?id=auth-1"})
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == "/instance?id=auth-1"
    assert tc.get("/instance?id=auth-1").status_code == 200
    # An open redirect through next= is refused: it falls back to the dashboard's home.
    other = tc.post("/login", data={"token": TOKEN, "csrf_token": csrf, "next": "//evil.example/x"})
    assert other.headers["Location"] == "/"


def test_callable_auth(client: Client) -> None:
    app = create_app(client, auth=lambda request: request.headers.get("X-Role") == "ops")
    tc = app.test_client()
    assert tc.get("/").status_code == 401
    assert tc.get("/", headers={"X-Role": "ops"}).status_code == 200
    with pytest.raises(TypeError, match="auth must be a callable"):
        create_app(client, auth="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token must be a str of at least 8 characters"):
        create_app(client, token="short")


def test_actions_need_csrf_and_answer_precisely(runtime_factory, client: Client) -> None:
    def waiter(ctx, _):
        return (yield ctx.dequeue_event("jobs"))

    runtime_factory({"Waiter": waiter, "Quick": lambda ctx, x: x})
    client.start_orchestration("act-1", "Waiter", None)
    client.start_orchestration("act-done", "Quick", 5)
    wait_for_kind(client, "act-1", "QueueSubscribed")
    assert client.wait_for_orchestration("act-done", WAIT_MS).status == "Completed"
    tc = create_app(client).test_client()
    csrf = _csrf(tc)

    form = {"id": "act-1", "queue": "jobs", "data": '{"n": 1}'}
    assert tc.post("/instance/enqueue-event", data=form).status_code == 403  # no token
    assert tc.post("/instance/enqueue-event", data={**form, "csrf_token": "forged"}).status_code == 403
    cross = tc.post(
        "/instance/enqueue-event", data={**form, "csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and "not this site" in _message(cross)
    bad_json = tc.post("/instance/enqueue-event", data={**form, "data": "{nope", "csrf_token": csrf})
    assert bad_json.status_code == 400 and _message(bad_json).startswith("data is not valid JSON")
    done = tc.post("/instance/enqueue-event", data={**form, "csrf_token": csrf})
    assert done.status_code == 303 and "notice=message+enqueued" in done.headers["Location"]
    assert client.wait_for_orchestration("act-1", WAIT_MS).output == {"n": 1}

    finished = tc.post("/instance/raise-event", data={"id": "act-done", "name": "x", "csrf_token": csrf})
    assert finished.status_code == 409 and _message(finished) == "instance act-done is Completed: nothing was sent"
    unconfirmed = tc.post("/instance/delete", data={"id": "act-done", "csrf_token": csrf})
    assert unconfirmed.status_code == 400 and "confirm=delete" in _message(unconfirmed)

    client.start_orchestration("act-2", "Waiter", None)
    wait_for_kind(client, "act-2", "QueueSubscribed")
    running = tc.post("/instance/delete", data={"id": "act-2", "confirm": "delete", "csrf_token": csrf})
    assert running.status_code == 409 and "is still running" in _message(running)
    cancel = tc.post("/instance/cancel", data={"id": "act-2", "reason": "ops said so", "csrf_token": csrf})
    assert cancel.status_code == 303
    assert client.wait_for_orchestration("act-2", WAIT_MS).error == "canceled: ops said so"
    deleted = tc.post("/instance/delete", data={"id": "act-done", "confirm": "delete", "csrf_token": csrf})
    assert deleted.status_code == 303 and client.get_instance_info("act-done") is None
    assert tc.post("/instance/cancel", data={"id": "act-done", "csrf_token": csrf}).status_code == 404


def test_blueprint_mounted_under_a_prefix(client: Client) -> None:
    client.start_orchestration("mnt-1", "Anything", None)
    host = flask.Flask("host")
    host.register_blueprint(create_blueprint(client), url_prefix="/ops/workflows")
    page = host.test_client().get("/ops/workflows/").get_data(as_text=True)
    assert 'href="/ops/workflows/instance?id=mnt-1"' in page
    assert 'href="/ops/workflows/static/dashboard.css"' in page
    assert host.test_client().get("/ops/workflows/static/dashboard.js").status_code == 200


def test_cli_refuses_to_bind_beyond_loopback_without_a_token(provider: Any) -> None:
    result = CliRunner().invoke(main, ["--db", "sqlite:///unused.db", "dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--host 0.0.0.0 is reachable beyond this machine: set --token" in result.output


def test_wsgi_app_mounted_under_a_prefix_of_another_app(client: Client) -> None:
    """How README mounts it in any WSGI app: werkzeug's DispatcherMiddleware sets SCRIPT_NAME."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client as WsgiClient

    def other_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the host app"]

    client.start_orchestration("wsgi-1", "Anything", None)
    mounted = DispatcherMiddleware(other_app, {"/workflows": create_app(client)})
    browser = WsgiClient(mounted)
    assert browser.get("/").get_data() == b"the host app"
    page = browser.get("/workflows/instance", query_string={"id": "wsgi-1"}).get_data(as_text=True)
    assert 'class="brand" href="/workflows/"' in page and "/workflows/instance/raise-event" in page


def test_unknown_paths_and_methods(client: Client) -> None:
    tc = create_app(client).test_client()
    odd = "a/b&c d?e#f<g>"
    client.start_orchestration(odd, "Anything", None)
    page = tc.get("/", query_string={"q": "a/b&"}).get_data(as_text=True)
    link = html.unescape(re.search(r'href="(/instance\?id=[^"]*)"', page).group(1))
    assert tc.get(link).status_code == 200 and "a/b&amp;c d?e#f&lt;g&gt;" in tc.get(link).get_data(as_text=True)
    missing = tc.get("/no/such/page")
    assert missing.status_code == 404 and b"Instances" in missing.data
    assert tc.get("/instance/raise-event").status_code == 405  # actions are POST only


def test_payloads_and_actions_decided_per_request(runtime_factory, client: Client) -> None:
    """show_payloads and can_act as callables (how the Django admin mounts it: the user's permissions)."""
    runtime_factory({"Echo": lambda ctx, x: x})
    client.start_orchestration("per-1", "Echo", {"secret": "s-123"})
    assert client.wait_for_orchestration("per-1", WAIT_MS).status == "Completed"
    asked: list[str] = []

    def can_act(request: Any, action: str) -> bool:
        asked.append(action)
        return request.headers.get("X-Role") == "admin" and action != "delete"

    app = create_app(client, show_payloads=lambda request: request.headers.get("X-Role") == "admin", can_act=can_act)
    tc = app.test_client()
    csrf = _csrf(tc)
    admin = {"X-Role": "admin"}

    viewer = tc.get("/instance?id=per-1").get_data(as_text=True)
    assert "s-123" not in viewer and "payloads hidden" in viewer
    assert 'id="no-actions"' in viewer and "raise-event-form" not in viewer and "delete-form" not in viewer
    assert "s-123" not in str(tc.get("/api/instance?id=per-1").json["html"])
    shown = tc.get("/instance?id=per-1", headers=admin).get_data(as_text=True)
    assert "s-123" in shown and "payloads shown" in shown
    assert "raise-event-form" in shown and "cancel-form" in shown and "delete-form" not in shown
    assert "no-actions" not in shown
    assert "s-123" in str(tc.get("/api/instance?id=per-1", headers=admin).json["html"])

    refused = tc.post("/instance/cancel", data={"id": "per-1", "csrf_token": csrf})
    assert refused.status_code == 403 and _message(refused) == "you may not cancel here"
    delete = {"id": "per-1", "confirm": "delete", "csrf_token": csrf}
    assert tc.post("/instance/delete", data=delete, headers=admin).status_code == 403
    assert client.get_instance_info("per-1") is not None
    allowed = tc.post("/instance/raise-event", data={"id": "per-1", "name": "x", "csrf_token": csrf}, headers=admin)
    assert allowed.status_code == 409  # past the permission check: the instance is simply finished
    assert {"raise_event", "enqueue_event", "cancel", "delete"} <= set(asked)

    with pytest.raises(TypeError, match="show_payloads must be a bool or a callable"):
        create_app(client, show_payloads="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="can_act must be a callable"):
        create_app(client, can_act=True)  # type: ignore[arg-type]
