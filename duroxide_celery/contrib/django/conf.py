"""The one `DUROXIDE` Django setting, read and checked in one place.

DUROXIDE = {
    "DATABASE": "default",            # a DATABASES alias: the store lives in that database (and follows it
                                      # to the test database under Django's test runner)
    # "URL": "postgresql://...",      # or a database URL of its own (then DATABASE is ignored)
    "SCHEMA": "duroxide",             # PostgreSQL schema of the store's tables (None: the search path)
    "CELERY_APP": "proj.celery:app",  # the Celery app, as `celery -A` takes it (default: the current app),
                                      # loaded when no `install(app)` ran in the process
    "OPTIONS": {},                    # RuntimeOptions keywords, e.g. {"queue_prefix": "orders"}
    "WORKFLOWS_MODULE": "workflows",  # the module imported from every installed app
    "DASHBOARD": None,                # the web dashboard under the admin (/admin/duroxide/dashboard/): None: on
                                      # when Flask is installed; True: on (Flask required); False: off
}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ...options import RuntimeOptions

_KEYS = {"DATABASE", "URL", "SCHEMA", "CELERY_APP", "OPTIONS", "WORKFLOWS_MODULE", "JSON_ENCODER", "DASHBOARD"}
DEFAULT_JSON_ENCODER = "django.core.serializers.json.DjangoJSONEncoder"


@dataclass(frozen=True)
class DuroxideSettings:
    database: str = "default"
    url: str | None = None
    schema: str | None = "duroxide"
    celery_app: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    workflows_module: str = "workflows"
    json_encoder: str | None = DEFAULT_JSON_ENCODER
    dashboard: bool | None = None


def load() -> DuroxideSettings:
    """settings.DUROXIDE with defaults; ImproperlyConfigured names the key that is wrong."""
    raw = getattr(settings, "DUROXIDE", None) or {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"settings.DUROXIDE must be a dict, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ImproperlyConfigured(f"settings.DUROXIDE has unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    conf = DuroxideSettings(
        database=raw.get("DATABASE", "default"),
        url=raw.get("URL"),
        schema=raw.get("SCHEMA", "duroxide"),
        celery_app=raw.get("CELERY_APP"),
        options=_options(raw.get("OPTIONS")),
        workflows_module=raw.get("WORKFLOWS_MODULE", "workflows"),
        json_encoder=raw.get("JSON_ENCODER", DEFAULT_JSON_ENCODER),
        dashboard=raw.get("DASHBOARD"),
    )
    if conf.dashboard is not None and not isinstance(conf.dashboard, bool):
        raise ImproperlyConfigured("settings.DUROXIDE['DASHBOARD'] must be True, False or None")
    if conf.url is None and conf.database not in settings.DATABASES:
        raise ImproperlyConfigured(
            f"settings.DUROXIDE['DATABASE'] is {conf.database!r}, which is not in settings.DATABASES "
            f"({sorted(settings.DATABASES)})"
        )
    named = (
        ("URL", conf.url),
        ("SCHEMA", conf.schema),
        ("CELERY_APP", conf.celery_app),
        ("JSON_ENCODER", conf.json_encoder),
    )
    for key, value in named:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ImproperlyConfigured(f"settings.DUROXIDE[{key!r}] must be a non-empty string or None")
    return conf


def _options(value: Any) -> dict[str, Any]:
    """settings.DUROXIDE['OPTIONS'], checked as RuntimeOptions checks them, with the setting named."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImproperlyConfigured(
            f"settings.DUROXIDE['OPTIONS'] must be a dict of RuntimeOptions keywords, got {type(value).__name__}"
        )
    known = sorted(f.name for f in fields(RuntimeOptions))
    for key in value:
        if key not in known:
            raise ImproperlyConfigured(
                f"settings.DUROXIDE['OPTIONS']: unknown option {key!r} (known: {', '.join(known)})"
            )
    try:
        RuntimeOptions(**value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"settings.DUROXIDE['OPTIONS']: {exc}") from None
    return dict(value)


def apply_json_encoder(conf: DuroxideSettings) -> None:
    """Make the engine encode user values with settings.DUROXIDE['JSON_ENCODER'] in this process."""
    from django.utils.module_loading import import_string

    from ...replay.events import set_json_encoder

    try:
        encoder = import_string(conf.json_encoder) if conf.json_encoder else None
        set_json_encoder(encoder)
    except (ImportError, TypeError) as exc:
        raise ImproperlyConfigured(f"settings.DUROXIDE['JSON_ENCODER']: {exc}") from None
