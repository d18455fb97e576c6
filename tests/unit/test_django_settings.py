"""settings.DUROXIDE mistakes raise ImproperlyConfigured naming the setting, in a fresh process per case (Django's
settings are configured once per process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django", reason="Django is not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=[],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
               "other": {"ENGINE": "django.db.backends.dummy", "NAME": "x"},
               "pg": {"ENGINE": "django.db.backends.postgresql", "NAME": "x", "HOST": "127.0.0.1"}},
    DUROXIDE=json.loads(sys.argv[1]),
)
django.setup()
from django.core.exceptions import ImproperlyConfigured
from duroxide_celery.contrib.django import get_runtime
try:
    get_runtime()
    print(json.dumps(["ok", ""]))
except Exception as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
"""


def _load(duroxide: dict) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(duroxide)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    kind, message = json.loads(done.stdout.splitlines()[-1])
    return kind, message


@pytest.mark.parametrize(
    ("duroxide", "message"),
    [
        (
            {"OPTIONS": {"bogus": 1}},
            "settings.DUROXIDE['OPTIONS']: unknown option 'bogus' (known: activity_cancellation_grace_period_ms, ",
        ),
        ({"OPTIONS": "x"}, "settings.DUROXIDE['OPTIONS'] must be a dict of RuntimeOptions keywords, got str"),
        (
            {"OPTIONS": {"max_attempts": "3"}},
            "settings.DUROXIDE['OPTIONS']: RuntimeOptions.max_attempts must be an int",
        ),
        (
            {"OPTIONS": {"queue_prefix": "a b"}},
            "settings.DUROXIDE['OPTIONS']: RuntimeOptions.queue_prefix: queue prefix 'a b' must be",
        ),
        (
            {"DATABASE": "pg", "SCHEMA": "bad-schema"},
            "settings.DUROXIDE['SCHEMA']: invalid PostgreSQL schema name 'bad-schema'",
        ),
        ({"URL": "mysql://u:pw@h/x"}, "settings.DUROXIDE['URL']: unsupported database URL 'mysql://u:***@h/x'"),
        ({"DATABASE": "other"}, "settings.DUROXIDE['DATABASE']: duroxide-celery stores run on PostgreSQL or SQLite"),
        (
            {"CELERY_APP": "nosuch:app"},
            "settings.DUROXIDE['CELERY_APP'] is 'nosuch:app', which does not load: ",
        ),
    ],
)
def test_a_bad_setting_names_itself(duroxide: dict, message: str) -> None:
    kind, text = _load(duroxide)
    assert kind == "ImproperlyConfigured"
    assert text.startswith(message), text
    assert "pw" not in text
