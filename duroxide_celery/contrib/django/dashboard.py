"""The web dashboard (`duroxide_celery.dashboard`) under Django's admin, at `/admin/duroxide/dashboard/`.

Django decides who gets in; the dashboard, a Flask WSGI app built once per process on the project's Client, serves
the pages. `call_wsgi` hands it each request as a WSGI call (the request's environ with SCRIPT_NAME and PATH_INFO
moved to the mount point, the body Django read, the Django request itself for the per-request decisions) and
turns its answer (status, headers, cookies, body) into an HttpResponse.

Who may do what (superusers may do everything):
- the pages: active staff (the admin site's login) with `duroxide.view_instance` or `duroxide.change_instance`;
- payloads (inputs, outputs, event data, KV values, errors, custom status): `duroxide.view_payloads`;
- raise event, enqueue event, cancel: `duroxide.change_instance`; delete: `duroxide.delete_instance`.

CSRF: the mounted view is exempt from Django's CsrfViewMiddleware (the dashboard's forms carry the dashboard's
token, not Django's). The dashboard checks every POST itself: a double-submit token (an HttpOnly, SameSite=Strict
cookie on the dashboard's path, echoed by each form) and, when the browser sends one, the Origin header against
the host (Django's validated `get_host()`). Django's session cookie is SameSite=Lax by default, so a cross-site
POST does not even arrive signed in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.http.request import RawPostDataException

#: Where the Django request travels in the environ handed to the dashboard (its callables read it there).
ENVIRON_KEY = "duroxide_celery.django.request"
#: Response headers not copied: hop-by-hop ones, what Django computes itself, and cookies (copied as cookies).
_NOT_COPIED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "set-cookie",
    }
)

_lock = threading.Lock()
_app: Any = None


def enabled() -> bool:
    """settings.DUROXIDE['DASHBOARD']: None (the default) means on when Flask (the `dashboard` extra) is
    installed; True requires it."""
    import importlib.util

    from django.core.exceptions import ImproperlyConfigured

    from . import conf

    wanted = conf.load().dashboard
    installed = importlib.util.find_spec("flask") is not None
    if wanted and not installed:
        raise ImproperlyConfigured(
            "settings.DUROXIDE['DASHBOARD'] is True but Flask is not installed: "
            "pip install 'duroxide-celery[dashboard]'"
        )
    return installed if wanted is None else wanted


def may_see(user: Any) -> bool:
    """Active staff with a permission to view workflow instances."""
    return bool(
        user.is_active
        and user.is_staff
        and (user.has_perm("duroxide.view_instance") or user.has_perm("duroxide.change_instance"))
    )


def may_see_payloads(user: Any) -> bool:
    return bool(user.has_perm("duroxide.view_payloads"))


def may_act(user: Any, action: str) -> bool:
    """`delete` needs duroxide.delete_instance; raise_event, enqueue_event and cancel duroxide.change_instance."""
    return bool(user.has_perm("duroxide.delete_instance" if action == "delete" else "duroxide.change_instance"))


def _user(flask_request: Any) -> Any:
    """The Django user behind a request to the dashboard; None if it did not come through Django."""
    django_request = flask_request.environ.get(ENVIRON_KEY)
    return getattr(django_request, "user", None)


def dashboard_app() -> Any:
    """The dashboard's WSGI app on the project's Client, built at first use, once per process. Outside a
    request that came through Django (no user), it admits nobody."""
    global _app
    with _lock:
        if _app is None:
            from ...dashboard import create_app
            from . import get_client

            def admitted(request: Any) -> bool:
                user = _user(request)
                return user is not None and may_see(user)

            def payloads(request: Any) -> bool:
                user = _user(request)
                return user is not None and may_see_payloads(user)

            def act(request: Any, action: str) -> bool:
                user = _user(request)
                return user is not None and may_act(user, action)

            _app = create_app(get_client(), auth=admitted, show_payloads=payloads, can_act=act)
        return _app


def _wsgi_string(text: str) -> str:
    """A WSGI environ string (PEP 3333: the bytes as latin-1) for a decoded path (Django's request.path_info and
    META's PATH_INFO and SCRIPT_NAME are decoded UTF-8)."""
    return text.encode().decode("latin-1")


def call_wsgi(app: Callable[..., Iterable[bytes]], request: HttpRequest, rest: str) -> HttpResponse:
    """Serve `request` by the WSGI `app` mounted where the URL's last part, `rest` (as the URL resolver matched
    it), begins: `.../dashboard/instance` with rest "instance" runs the app with SCRIPT_NAME ending in
    `/dashboard` and PATH_INFO `/instance`."""
    path_info = request.path_info
    if not path_info.endswith(rest):
        return HttpResponseBadRequest("the path does not end with the mounted part")
    mount = path_info[: len(path_info) - len(rest)].rstrip("/")
    script_name = request.META.get("SCRIPT_NAME", "").rstrip("/") + mount
    try:
        body = request.body  # read (and kept) by Django, within DATA_UPLOAD_MAX_MEMORY_SIZE
    except RawPostDataException:  # a multipart body some middleware already parsed: the dashboard sends none
        return HttpResponseBadRequest("the request body was already consumed")
    environ = {
        **request.META,
        "SCRIPT_NAME": _wsgi_string(script_name),
        "PATH_INFO": _wsgi_string(path_info[len(mount) :]),
        "wsgi.input": BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": request.get_host(),  # validated against ALLOWED_HOSTS; X-Forwarded-Host if Django trusts it
        "wsgi.url_scheme": request.scheme,  # SECURE_PROXY_SSL_HEADER, if set
        ENVIRON_KEY: request,
    }
    environ.pop("wsgi.file_wrapper", None)  # the body is collected here, not handed to the server
    captured: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and captured:
            raise exc_info[1].with_traceback(exc_info[2])
        captured["status"], captured["headers"] = status, headers
        return chunks.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    code, _, reason = captured["status"].partition(" ")
    response = HttpResponse(b"".join(chunks), status=int(code), reason=reason or None)
    seen: set[str] = set()
    for name, value in captured["headers"]:
        lower = name.lower()
        if lower == "set-cookie":
            response.cookies.load(value)
        elif lower not in _NOT_COPIED:
            response[name] = f"{response[name]}, {value}" if lower in seen else value
            seen.add(lower)
    return response
