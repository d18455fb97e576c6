"""The dashboard's Flask blueprint: instance list, instance page, live JSON, schedules, and actions through the Client.

Security rules it keeps:
- payloads (inputs, outputs, event data, KV values, results, errors, custom status) are hidden unless the
  operator passed show_payloads=True (or a callable that says so for this request);
- actions are refused (403) when `can_act(request, action)` says no;
- with `auth` (a callable) or `token`, every page but the login form and the static files needs it;
- every POST carries a CSRF token that matches its cookie (double submit: the blueprint keeps no server session,
  so it works mounted in any app without touching that app's secret key or session), and an Origin header,
  when the browser sends one, must be this host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, abort, jsonify, redirect, render_template, request, url_for
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from ..client import Client
from ..errors import CannotDeleteSubOrchestration, InstanceNotFound, InstanceStillRunning, ScheduleNotFound
from ..providers import dashboard_reads as reads
from ..providers.waits import read_history
from ..replay.limits import check_storable
from ..types import TERMINAL_STATUSES
from . import present

#: Statuses an instance row can have (the list's status filter).
LIST_STATUSES = ("Running", "Completed", "Failed")
DEFAULT_PAGE = 50
MAX_PAGE = 500
TOKEN_COOKIE = "duroxide_dashboard_auth"
CSRF_COOKIE = "duroxide_dashboard_csrf"
#: Status counts are a GROUP BY over every instance: one per this many seconds is plenty for a page.
COUNTS_TTL_S = 2.0

AuthCallable = Callable[[Any], bool]
#: `can_act(request, action) -> bool`, action one of ACTIONS.
ActCallable = Callable[[Any, str], bool]
#: The actions (their endpoint names), as `can_act` is asked about them.
ACTIONS = ("raise_event", "enqueue_event", "cancel", "delete")


class BadInput(ValueError):
    """Bad input from the browser: answered 400 with this message."""


def create_blueprint(
    client: Client,
    *,
    show_payloads: bool | AuthCallable = False,
    auth: AuthCallable | None = None,
    token: str | None = None,
    name: str = "duroxide_dashboard",
    can_act: ActCallable | None = None,
) -> Blueprint:
    """The dashboard as a blueprint, for `app.register_blueprint(bp, url_prefix="/workflows")` in a Flask app.

    show_payloads: show inputs, outputs, event data, KV values and errors (hidden by default); or
      `show_payloads(request) -> bool`, decided per request (e.g. by the user's permissions).
    auth: `auth(request) -> bool`, checked on every request (your login, your roles).
    token: a shared secret: `Authorization: Bearer <token>`, or the login form, which sets a cookie.
    With both, either one admits a request; with neither, the dashboard is open to whoever reaches it.
    can_act: `can_act(request, action) -> bool` for each of ACTIONS: a refused action is a 403 and its form is
      not shown (default: whoever is admitted may act)."""
    if not isinstance(client, Client):
        raise TypeError(f"the dashboard needs a duroxide_celery.Client, got {type(client).__name__}")
    if auth is not None and not callable(auth):
        raise TypeError(f"auth must be a callable taking the request and returning a bool, got {auth!r}")
    if not isinstance(show_payloads, bool) and not callable(show_payloads):
        raise TypeError(f"show_payloads must be a bool or a callable taking the request, got {show_payloads!r}")
    if can_act is not None and not callable(can_act):
        raise TypeError(f"can_act must be a callable taking the request and an action, got {can_act!r}")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValueError("token must be a str of at least 8 characters")
    bp = Blueprint(name, __name__, template_folder="templates", static_folder="static", static_url_path="/static")
    store = client._store
    session_value = (
        hmac.new(token.encode(), b"duroxide-dashboard-session", hashlib.sha256).hexdigest() if token else None
    )
    counts_cache: dict[str, Any] = {"at": 0.0, "counts": {}}

    def payloads_shown() -> bool:
        return bool(show_payloads(request)) if callable(show_payloads) else show_payloads

    def may(action: str) -> bool:
        return can_act is None or bool(can_act(request, action))

    def authenticated() -> bool:
        if auth is None and token is None:
            return True
        if auth is not None and auth(request):
            return True
        if token is not None:
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
                return True
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            if session_value and hmac.compare_digest(cookie.encode(), session_value.encode()):
                return True
        return False

    @bp.before_request
    def _guard() -> Any:
        endpoint = (request.endpoint or "").rsplit(".", 1)[-1]
        if endpoint in ("login", "static"):
            return None
        if not authenticated():
            wants_html = request.method == "GET" and not _is_api()
            if token is not None and wants_html:
                return redirect(url_for(".login", next=request.full_path))
            return _error(401, "authentication required", json_body=not wants_html)
        if request.method == "POST":
            _check_csrf()
            if endpoint in ACTIONS and not may(endpoint):
                return _error(403, f"you may not {endpoint.replace('_', ' ')} here")
        return None

    @bp.after_request
    def _headers(response: Response) -> Response:
        if not request.cookies.get(CSRF_COOKIE) and response.mimetype == "text/html":
            response.set_cookie(
                CSRF_COOKIE, _csrf_token(), httponly=True, samesite="Strict", path=_cookie_path(), secure=_secure()
            )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        # Defense in depth behind Jinja's escaping: scripts only from the dashboard's own static file.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        )
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @bp.errorhandler(BadInput)
    def _bad(exc: BadInput) -> Response:
        return _error(400, str(exc), json_body=_is_api())

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return _error(exc.code or 500, exc.description or exc.name, json_body=_is_api())

    @bp.errorhandler(InstanceNotFound)
    def _gone(exc: InstanceNotFound) -> Response:
        return _error(404, str(exc), json_body=_is_api())  # deleted while the page was being read

    @bp.context_processor
    def _context() -> dict[str, Any]:
        return {
            "csrf_token": _csrf_token(),
            "fmt_ms": present.fmt_ms,
            "show_payloads": payloads_shown(),
            "may": may,
            "auth_on": auth is not None or token is not None,
        }

    # -- pages --------------------------------------------------------------------------------------------------
    @bp.route("/")
    def index() -> Any:
        query, limit, after, before = _list_args()
        page = reads.list_instances(store, query, limit=limit, after=after, before=before)
        now = time.monotonic()
        if now - counts_cache["at"] > COUNTS_TTL_S:
            counts_cache.update(at=now, counts=reads.status_counts(store))
        counts = counts_cache["counts"]
        args = {k: v for k, v in request.args.items() if k not in ("after", "before", "notice") and v}
        return render_template(
            "duroxide_dashboard/list.html",
            page=page,
            rows=page.rows,
            counts=counts,
            total=sum(counts.values()),
            statuses=LIST_STATUSES,
            args=args,
            next_url=url_for(".index", **args, after=_cursor_text(page.next_cursor)) if page.next_cursor else None,
            prev_url=url_for(".index", **args, before=_cursor_text(page.prev_cursor)) if page.prev_cursor else None,
            notice=request.args.get("notice"),
        )

    @bp.route("/instance")
    def instance() -> Any:
        context = _instance_context()
        return render_template("duroxide_dashboard/instance.html", **context, notice=request.args.get("notice"))

    @bp.route("/api/instance")
    def instance_json() -> Any:
        context = _instance_context()
        fragments = {
            part: render_template(f"duroxide_dashboard/_{part}.html", **context)
            for part in ("summary", "waits", "timeline", "history", "kv", "tree")
        }
        return jsonify(
            {
                "instance_id": context["info"].instance_id,
                "status": context["info"].status,
                "terminal": context["info"].status in TERMINAL_STATUSES,
                "event_count": context["history_total"],
                "updated_at": context["info"].updated_at,
                "html": fragments,
            }
        )

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        target = _safe_next(request.values.get("next"))
        if token is None:
            return redirect(target)
        message = None
        if request.method == "POST":
            _check_csrf()
            given = request.form.get("token", "")
            if hmac.compare_digest(given.encode(), token.encode()):
                response = redirect(target)
                # Lax: a link from a ticket or a chat opens the page signed in; every POST still needs the CSRF token.
                response.set_cookie(
                    TOKEN_COOKIE, session_value or "", httponly=True, samesite="Lax", path=_cookie_path(),
                    secure=_secure(),
                )  # fmt: skip
                return response
            message = "wrong token"
        status = 401 if message else 200
        return render_template("duroxide_dashboard/login.html", next=target, message=message), status

    # -- actions ------------------------------------------------------------------------------------------------
    @bp.route("/instance/raise-event", methods=["POST"])
    def raise_event() -> Any:
        info = _running_instance()
        name = _required("name", "event name")
        client.raise_event(info.instance_id, name, _json_field("data"))
        return _back(info.instance_id, f"event {name!r} raised")

    @bp.route("/instance/enqueue-event", methods=["POST"])
    def enqueue_event() -> Any:
        info = _running_instance()
        name = _required("queue", "queue name")
        client.enqueue_event(info.instance_id, name, _json_field("data"))
        return _back(info.instance_id, f"message enqueued on {name!r}")

    @bp.route("/instance/cancel", methods=["POST"])
    def cancel() -> Any:
        info = _running_instance()
        client.cancel_instance(info.instance_id, request.form.get("reason") or "canceled from the dashboard")
        return _back(info.instance_id, "cancel requested")

    @bp.route("/instance/delete", methods=["POST"])
    def delete() -> Any:
        info = _instance_or_404(_form_id())
        if request.form.get("confirm") != "delete":
            raise BadInput("deleting needs confirm=delete (the form's confirmation)")
        try:
            result = client.delete_instance(info.instance_id, force=request.form.get("force") == "on")
        except (InstanceStillRunning, CannotDeleteSubOrchestration) as exc:
            return _error(409, str(exc))
        except InstanceNotFound as exc:
            return _error(404, str(exc))
        notice = f"deleted {info.instance_id} ({result.instances_deleted} instance(s))"
        return redirect(url_for(".index", notice=notice), code=303)

    # -- schedules ----------------------------------------------------------------------------------------------
    @bp.route("/schedules")
    def schedules() -> Any:
        return render_template(
            "duroxide_dashboard/schedules.html", schedules=client.list_schedules(), notice=request.args.get("notice")
        )

    @bp.route("/schedules/<action>", methods=["POST"])
    def schedule_action(action: str) -> Any:
        schedule_id = _required("id", "the schedule id")
        try:
            if action == "pause":
                client.pause_schedule(schedule_id)
                notice = f"schedule {schedule_id} paused"
            elif action == "resume":
                client.resume_schedule(schedule_id)
                notice = f"schedule {schedule_id} resumed"
            elif action == "trigger":
                started = client.trigger_schedule(schedule_id)
                notice = f"started {started}" if started else f"schedule {schedule_id}: its overlap policy held the run"
            else:
                abort(404, f"no schedule action {action!r}")
        except ScheduleNotFound as exc:
            return _error(404, str(exc))
        return redirect(url_for(".schedules", notice=notice), code=303)

    # -- helpers ------------------------------------------------------------------------------------------------
    def _instance_context() -> dict[str, Any]:
        show = payloads_shown()
        instance_id = request.args.get("id")
        if not instance_id:
            raise BadInput("give the instance id: ?id=...")
        info = _instance_or_404(instance_id, include_waits=True)
        execution = _int_arg("execution", 1, 2**31 - 1)
        executions = client.list_executions(instance_id)
        if execution is None:
            execution = info.current_execution_id
        elif execution not in executions:
            abort(404, f"instance {instance_id} has no execution {execution}")
        status = client.get_status(instance_id)
        with store.read() as conn:
            events = read_history(conn, instance_id, execution)
        running = info.status not in TERMINAL_STATUSES
        now = int(time.time() * 1000)
        tree_ids = client.get_instance_tree(instance_id).all_ids
        tree_rows = reads.instance_rows(store, tree_ids)
        raw_output = store.get_instance(instance_id) or {}
        return {
            "info": info,
            "status": status,
            "waits": info.waits,
            "execution": execution,
            "executions": executions,
            "history": present.history_rows(events[: present.MAX_HISTORY_ROWS], show),
            "history_total": len(events),
            "timeline": present.timeline(events, now, running and execution == info.current_execution_id),
            "kv": [
                {**row, "shown": present.show_value(row["value"], show)} for row in reads.kv_entries(store, instance_id)
            ],
            "tree": _tree(instance_id, tree_ids, tree_rows),
            "custom_status": present.show_value(status.custom_status, show),
            "output": present.show_json_text(raw_output.get("output"), show) if info.status == "Completed" else None,
            "error": present.show_value(status.error, show),
            "running": running,
        }

    def _instance_or_404(instance_id: str, include_waits: bool = False) -> Any:
        try:
            info = client.get_instance_info(instance_id, include_waits=include_waits)
        except (TypeError, ValueError) as exc:
            raise BadInput(str(exc)) from None
        if info is None:
            abort(404, f"no instance {instance_id!r}")
        return info

    def _running_instance() -> Any:
        info = _instance_or_404(_form_id())
        if info.status in TERMINAL_STATUSES:
            abort(409, f"instance {info.instance_id} is {info.status}: nothing was sent")
        return info

    def _back(instance_id: str, notice: str) -> Any:
        return redirect(url_for(".instance", id=instance_id, notice=notice), code=303)

    return bp


def create_app(
    client: Client,
    *,
    show_payloads: bool | AuthCallable = False,
    auth: AuthCallable | None = None,
    token: str | None = None,
    can_act: ActCallable | None = None,
) -> Flask:
    """A WSGI app serving only the dashboard (at /), for `duroxide-celery dashboard`, any WSGI server, or
    mounting under a prefix in another framework (werkzeug's DispatcherMiddleware)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024  # event data posted through a form
    app.register_blueprint(
        create_blueprint(client, show_payloads=show_payloads, auth=auth, token=token, can_act=can_act)
    )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        # Outside the blueprint (an unknown path): no page template, whose links are relative to the blueprint.
        code = exc.code or 500
        if _is_api():
            return _error(code, exc.description or exc.name, json_body=True)
        text = escape(exc.description or exc.name)
        return Response(f"<!doctype html><title>{code}</title><p>{text}</p><p><a href='/'>Instances</a></p>", code)

    return app


# -- request parsing (module level: they read only the request) ---------------------------------------------------
def _error(code: int, message: str, json_body: bool = False) -> Response:
    if json_body:
        response = jsonify({"error": message, "status": code})
    else:
        response = Response(render_template("duroxide_dashboard/error.html", code=code, message=message))
    response.status_code = code
    return response


def _is_api() -> bool:
    return request.path.rstrip("/").endswith("/api/instance")


def _csrf_token() -> str:
    """The CSRF token of this browser (its cookie), or a new one the response sets."""
    current = request.cookies.get(CSRF_COOKIE)
    if current:
        return current
    if not hasattr(request, "_duroxide_csrf"):
        request._duroxide_csrf = secrets.token_urlsafe(32)  # type: ignore[attr-defined]
    return request._duroxide_csrf  # type: ignore[attr-defined]


def _check_csrf() -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = request.form.get("csrf_token", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), given.encode()):
        abort(403, "CSRF check failed: reload the page and submit the form again")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        abort(403, f"CSRF check failed: request from {origin}, not this site")


def _cookie_path() -> str:
    return url_for(".index")


def _secure() -> bool:
    return request.scheme == "https"


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host) may be a redirect target after login."""
    home = url_for(".index")
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return home
    return target


def _form_id() -> str:
    instance_id = request.form.get("id")
    if not instance_id:
        raise BadInput("the form has no instance id")
    return instance_id


def _required(field: str, what: str) -> str:
    value = request.form.get(field, "").strip()
    if not value:
        raise BadInput(f"{what} must not be empty")
    return value


def _json_field(field: str) -> Any:
    text = request.form.get(field, "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{field} is not valid JSON: {exc}") from None


def _int_arg(name: str, low: int, high: int) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadInput(f"{name} must be between {low} and {high}, got {value}")
    return value


def _time_arg(name: str) -> int | None:
    """A time filter: epoch ms, or an ISO-8601 time (a datetime-local input's value; UTC unless it has an
    offset)."""
    text = request.args.get(name, "").strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{name} must be an ISO-8601 time or epoch milliseconds, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _text_arg(name: str) -> str | None:
    """A text filter; text the store cannot hold (a NUL) is a 400 here, never a database error (500) on PostgreSQL."""
    text = request.args.get(name, "").strip() or None
    if text is not None:
        try:
            check_storable(text, name)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    return text


def _cursor_text(cursor: reads.Cursor | None) -> str | None:
    if cursor is None:
        return None
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).decode().rstrip("=")


def _cursor_arg(name: str) -> reads.Cursor | None:
    text = request.args.get(name)
    if not text:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        created, instance_id = value
        if isinstance(created, bool) or not isinstance(created, int) or not isinstance(instance_id, str):
            raise TypeError
        check_storable(instance_id, name)  # a forged cursor with a NUL: this 400, not PostgreSQL's error (500)
    except (ValueError, TypeError):
        raise BadInput(f"{name} is not a page cursor of this dashboard") from None
    return created, instance_id


def _list_args() -> tuple[reads.InstanceQuery, int, reads.Cursor | None, reads.Cursor | None]:
    status = request.args.get("status") or None
    if status is not None and status not in LIST_STATUSES:
        raise BadInput(f"status must be one of {', '.join(LIST_STATUSES)}, got {status!r}")
    created_from, created_to = _time_arg("from"), _time_arg("to")
    if created_from is not None and created_to is not None and created_from >= created_to:
        raise BadInput("the time range is empty: 'from' must be before 'to'")
    query = reads.InstanceQuery(
        status=status,
        name=_text_arg("name"),
        version=_text_arg("version"),
        created_from=created_from,
        created_to=created_to,
        id_prefix=_text_arg("q"),
    )
    limit = _int_arg("limit", 1, MAX_PAGE) or DEFAULT_PAGE
    after, before = _cursor_arg("after"), _cursor_arg("before")
    if after is not None and before is not None:
        raise BadInput("give after or before, not both")
    return query, limit, after, before


def _tree(root: str, ids: list[str], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The tree's members depth first from the root, each with its depth (for indentation)."""
    children: dict[str | None, list[str]] = {}
    for i in ids:
        if i != root and i in rows:
            children.setdefault(rows[i]["parent_instance_id"], []).append(i)
    out: list[dict[str, Any]] = []

    def visit(instance_id: str, depth: int) -> None:
        row = rows.get(instance_id)
        out.append({"instance_id": instance_id, "depth": depth, "row": row})
        for child in sorted(children.get(instance_id, []), key=lambda c: (rows[c]["created_at"], c)):
            visit(child, depth + 1)

    visit(root, 0)
    return out
