"""Minimal Django settings for the django-celery-beat test (test_beat.py): django_celery_beat on a SQLite file
named by BEAT_DJANGO_DB."""

from __future__ import annotations

import os

SECRET_KEY = "duroxide-celery-beat-tests-only"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BEAT_DJANGO_DB"]}}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
