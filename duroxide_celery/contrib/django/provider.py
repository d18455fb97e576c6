"""The store on a Django database: built from `DATABASES[alias]`, and following it to the test database.

Django's test runner renames `DATABASES[alias]["NAME"]` to the test database after settings are loaded; the
provider reads the connection's settings at each first use, so the store moves with it. When the runner destroys
the test database, the store's pools are closed first (PostgreSQL refuses to drop a database still in use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL

from ...providers import PostgresProvider, Provider, SqliteProvider
from ...providers.providers import _normalize_pg_url

_POSTGRES = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")
_SQLITE = ("django.db.backends.sqlite3", "django.contrib.gis.db.backends.spatialite")


def _connection_settings(alias: str) -> dict[str, Any]:
    from django.db import connections

    return connections[alias].settings_dict


def url_for(settings_dict: dict[str, Any]) -> str:
    """A SQLAlchemy URL for a Django database's settings (PostgreSQL or SQLite)."""
    engine = settings_dict.get("ENGINE", "")
    name = str(settings_dict.get("NAME") or "")
    if engine in _POSTGRES:
        url = URL.create(
            "postgresql+psycopg",
            username=settings_dict.get("USER") or None,
            password=settings_dict.get("PASSWORD") or None,
            host=settings_dict.get("HOST") or None,
            port=int(settings_dict["PORT"]) if settings_dict.get("PORT") else None,
            database=name or None,
        )
        return url.render_as_string(hide_password=False)
    if engine in _SQLITE:
        if not name or name == ":memory:" or name.startswith("file:memorydb") or "mode=memory" in name:
            return "sqlite://"
        return f"sqlite:///{name}"
    raise ValueError(f"duroxide-celery stores run on PostgreSQL or SQLite; DATABASES uses {engine!r}")


class _FollowsDjango:
    """Mixin: re-read the Django connection's settings at each use and move the store when they change."""

    alias: str
    url: str
    #: The Django database name the store was last opened for.
    _django_name: Any

    @property
    def store(self) -> Any:
        # Read on every store access (each turn and activity): compare the database name, a dict lookup, and build
        # a URL only when it changed (the test runner switched to the test database).
        settings_dict = _connection_settings(self.alias)
        name = settings_dict.get("NAME")
        if name != self._django_name:
            url = url_for(settings_dict)
            current = _normalize_pg_url(url) if url.startswith("postgresql") else url
            if current != self.url and not (current == "sqlite://" and self.is_in_memory):  # type: ignore[attr-defined]
                self.dispose()  # type: ignore[attr-defined]
                self.url = current
                self._store = None
        self._django_name = name
        return super().store  # type: ignore[misc]


class DjangoPostgresProvider(_FollowsDjango, PostgresProvider):
    """PostgreSQL store on a Django database alias."""


class DjangoSqliteProvider(_FollowsDjango, SqliteProvider):
    """SQLite store on a Django database alias (a test run's in-memory database gets an in-memory store)."""


def provider_for_alias(alias: str, schema: str | None) -> Provider:
    url = url_for(_connection_settings(alias))
    provider: Provider
    if url.startswith("postgresql"):
        provider = (
            DjangoPostgresProvider.connect_with_schema(url, schema) if schema else DjangoPostgresProvider.connect(url)
        )
    elif url == "sqlite://":
        provider = DjangoSqliteProvider("sqlite://", in_memory=True)
    else:
        provider = DjangoSqliteProvider.open(url)
    provider.alias = alias  # type: ignore[attr-defined]
    provider._django_name = _connection_settings(alias).get("NAME")  # type: ignore[attr-defined]
    _close_before_test_database_drops(alias, provider)
    return provider


#: Providers on each Django alias, closed before that alias's test database is dropped.
_ON_ALIAS: dict[str, list[Provider]] = {}
#: Called before any test database is dropped (the registry stops an in-process runtime here: its threads hold
#: connections that dispose() cannot close).
BEFORE_TEST_DATABASE_DROPS: list[Callable[[], None]] = []


def _close_before_test_database_drops(alias: str, provider: Provider) -> None:
    """Close the store's pools before Django drops the alias's test database (else: 'database is being accessed by
    other users' and a leftover test database). Wraps the backends' destroy_test_db once per creation class."""
    from django.db import connections

    _ON_ALIAS.setdefault(alias, []).append(provider)
    cls = type(connections[alias].creation)
    if getattr(cls.destroy_test_db, "_duroxide_wrapped", False):
        return
    original = cls.destroy_test_db

    def destroy_test_db(self: Any, *args: Any, **kwargs: Any) -> Any:
        for hook in BEFORE_TEST_DATABASE_DROPS:
            hook()
        for each in _ON_ALIAS.get(self.connection.alias, []):
            each.dispose()
        return original(self, *args, **kwargs)

    destroy_test_db._duroxide_wrapped = True  # type: ignore[attr-defined]
    cls.destroy_test_db = destroy_test_db
