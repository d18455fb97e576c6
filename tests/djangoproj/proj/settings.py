"""Settings of the Django test project; services come from the environment (tests/integration/test_django.py)."""

import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "proj.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "duroxide_celery.contrib.django",
    "orders",
]

# What django.contrib.admin needs (the durable workflows admin: duroxide_celery.contrib.django.admin).
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"

_PG = os.environ.get("PROJ_PG_NAME")
DATABASES = {
    "default": (
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _PG,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "TEST": {"NAME": f"test_{_PG}"},
        }
        if _PG
        else {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("PROJ_SQLITE", "db.sqlite3")}
    )
}

CELERY_BROKER_URL = os.environ.get("PROJ_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_ALWAYS_EAGER = os.environ.get("PROJ_EAGER") == "1"
CELERY_TASK_TIME_LIMIT = 30

DUROXIDE = {
    "DATABASE": "default",
    "SCHEMA": "duroxide",
    "OPTIONS": {"queue_prefix": os.environ.get("PROJ_QUEUE_PREFIX", "proj")},
}
