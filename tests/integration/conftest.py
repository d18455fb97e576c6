"""Fixtures for the integration suite: real embedded runtimes (in-process Celery worker over kombu's memory
transport) on a real database, chosen by DUROXIDE_TEST_DB:

- `sqlite` (default): a fresh SQLite file per test (`provider`), plus `memory_provider` for in-memory tests.
- `postgres`: a fresh schema per test in DUROXIDE_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test),
  dropped afterwards. If PostgreSQL is unreachable the tests skip loudly, or fail when the CI variable is set.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from duroxide_celery import Client, PostgresProvider, Runtime, RuntimeOptions, SqliteProvider

DB = os.environ.get("DUROXIDE_TEST_DB", "sqlite").strip().lower()
PG_URL = os.environ.get("DUROXIDE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


if DB not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"DUROXIDE_TEST_DB must be 'sqlite' or 'postgres', got {DB!r}")


def _pg_engine() -> sa.Engine:
    return sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.NullPool)


@pytest.fixture(scope="session")
def pg_reachable() -> None:
    """Fail (CI) or skip loudly (developer machine) when PostgreSQL is not there."""
    try:
        with _pg_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection problem means "not reachable"
        reason = f"DUROXIDE_TEST_DB=postgres but PostgreSQL at {PG_URL} is unreachable: {exc!s}".strip()
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: PostgreSQL is required)", pytrace=False)
        warnings.warn(reason, stacklevel=1)
        pytest.skip("!!! SKIPPED: " + reason)


class Store:
    """One test's database: hands out providers on it (a new provider object models a process restart)."""

    def __init__(self, kind: str, location: str):
        self.kind = kind
        self.location = location  # a file path (sqlite) or a schema name (postgres)
        self.providers: list[Any] = []

    def open(self) -> SqliteProvider | PostgresProvider:
        if self.kind == "sqlite":
            provider = SqliteProvider.open(self.location)
        else:
            provider = PostgresProvider.connect_with_schema(PG_URL, self.location)
        self.providers.append(provider)
        return provider

    def close(self) -> None:
        for provider in self.providers:
            provider.dispose()
        if self.kind == "postgres":
            with _pg_engine().begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.location}" CASCADE'))


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if DB == "postgres":
        request.getfixturevalue("pg_reachable")
        db = Store("postgres", f"dxt_{uuid.uuid4().hex[:16]}")
    else:
        db = Store("sqlite", str(tmp_path / "x.db"))
    yield db
    db.close()


@pytest.fixture
def provider(store: Store) -> SqliteProvider | PostgresProvider:
    """A fresh, empty store for this test on the selected backend."""
    return store.open()


@pytest.fixture
def memory_provider() -> Iterator[SqliteProvider]:
    provider = SqliteProvider.in_memory()
    yield provider
    provider.dispose()


@pytest.fixture
def client(provider: Any) -> Client:
    return Client(provider)


RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
def runtime_factory(provider: Any) -> Iterator[RuntimeFactory]:
    """make(orchestrations={name: fn}, activities={name: fn}, provider=..., options=..., start=True) -> Runtime.

    Every runtime it made is shut down at teardown, whatever the test did."""
    made: list[Runtime] = []

    def make(
        orchestrations: dict[str, Callable[..., Any]] | None = None,
        activities: dict[str, Callable[..., Any]] | None = None,
        *,
        provider_: Any = None,
        options: RuntimeOptions | None = None,
        start: bool = True,
    ) -> Runtime:
        rt = Runtime(provider_ if provider_ is not None else provider, options)
        made.append(rt)
        for name, fn in (orchestrations or {}).items():
            rt.register_orchestration(name, fn)
        for name, fn in (activities or {}).items():
            rt.register_activity(name, fn)
        if start:
            rt.start()
        return rt

    yield make
    for rt in reversed(made):
        rt.shutdown(timeout_ms=2000)
