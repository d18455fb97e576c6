"""The WSGI adapter that serves the web dashboard under Django's admin (duroxide_celery.contrib.django.dashboard
`call_wsgi`), with a WSGI app that echoes what it was handed: the mount point in SCRIPT_NAME/PATH_INFO (also under
a site prefix and for non-ASCII paths), the body, the validated host, the Django request; and its answer (status,
headers, cookies, body) as Django's response. No database. The dashboard itself, mounted in a running project
with a browser: tests/production/test_django_dashboard.py, which also runs this file by its path with pytest-django
(it is not named *_pytest.py, so the project's own suite, which counts its tests, does not collect it).
"""

import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory, override_settings

from duroxide_celery.contrib.django import conf, dashboard


def echo_app(environ, start_response):
    """Answers with what it received, two cookies, a repeated header and headers Django must not copy."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    seen = {
        key: environ.get(key)
        for key in ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "HTTP_HOST", "wsgi.url_scheme", "REQUEST_METHOD")
    }
    seen["body"] = body.decode()
    seen["user"] = getattr(environ[dashboard.ENVIRON_KEY], "marker", None)
    seen["file_wrapper"] = "wsgi.file_wrapper" in environ
    start_response(
        "201 CREATED",
        [
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1; Path=/admin/duroxide/dashboard/; HttpOnly; SameSite=Strict"),
            ("Set-Cookie", "b=2; Path=/"),
            ("Vary", "Cookie"),
            ("Vary", "Accept"),
            ("Connection", "close"),
            ("Content-Length", "999"),
            ("X-Frame-Options", "DENY"),
        ],
    )
    return [json.dumps(seen).encode()]


def _call(path, rest, method="get", **extra):
    request = getattr(RequestFactory(), method)(path, **extra)
    request.marker = "the-django-request"
    return dashboard.call_wsgi(echo_app, request, rest)


def test_a_request_is_handed_over_at_the_mount_point_and_the_answer_comes_back():
    response = _call(
        "/admin/duroxide/dashboard/instance/raise-event?x=1",
        "instance/raise-event",
        method="post",
        data="id=a%2Fb&name=Approve",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 201 and response.reason_phrase == "CREATED"
    seen = json.loads(response.content)
    assert seen == {
        "SCRIPT_NAME": "/admin/duroxide/dashboard",
        "PATH_INFO": "/instance/raise-event",
        "QUERY_STRING": "x=1",
        "HTTP_HOST": "testserver",
        "wsgi.url_scheme": "http",
        "REQUEST_METHOD": "POST",
        "body": "id=a%2Fb&name=Approve",
        "user": "the-django-request",
        "file_wrapper": False,
    }
    assert response["Content-Type"] == "application/json"
    assert response["Vary"] == "Cookie, Accept" and response["X-Frame-Options"] == "DENY"
    assert not response.has_header("Connection") and not response.has_header("Content-Length")
    assert response.cookies["a"]["path"] == "/admin/duroxide/dashboard/"
    assert response.cookies["a"]["httponly"] and response.cookies["a"]["samesite"] == "Strict"
    assert response.cookies["b"].value == "2"


def test_the_root_a_site_prefix_and_non_ascii_paths():
    root = json.loads(_call("/admin/duroxide/dashboard/", "").content)
    assert (root["SCRIPT_NAME"], root["PATH_INFO"]) == ("/admin/duroxide/dashboard", "/")

    # Django served under /site (SCRIPT_NAME): the dashboard's links and cookies carry it.
    prefixed = json.loads(_call("/admin/duroxide/dashboard/static/x.css", "static/x.css", SCRIPT_NAME="/site").content)
    assert (prefixed["SCRIPT_NAME"], prefixed["PATH_INFO"]) == ("/site/admin/duroxide/dashboard", "/static/x.css")

    # A server's environ holds WSGI strings (bytes as latin-1); Django decodes PATH_INFO to UTF-8 in the request
    # (and its META): the app gets a WSGI string again, as werkzeug expects.
    wsgi_path = "/admin/duroxide/dashboard/static/é".encode().decode("latin-1")
    odd = json.loads(_call("/unused", "static/é", PATH_INFO=wsgi_path).content)
    assert odd["PATH_INFO"] == "/static/" + "é".encode().decode("latin-1")


def test_a_path_that_does_not_end_with_the_mounted_part_is_refused():
    assert _call("/admin/duroxide/dashboard/instance", "other").status_code == 400


def test_the_dashboard_setting():
    with override_settings(DUROXIDE={"DASHBOARD": False}):
        assert dashboard.enabled() is False
    with override_settings(DUROXIDE={}):
        assert dashboard.enabled() is True  # Flask is installed here
    with override_settings(DUROXIDE={"DASHBOARD": "yes"}), pytest.raises(ImproperlyConfigured, match="DASHBOARD"):
        conf.load()
