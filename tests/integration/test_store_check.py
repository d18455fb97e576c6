"""check_store (duroxide_celery/providers/check.py): workers and the CLI refuse a store they cannot use, with the
reason, before taking any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from duroxide_celery import PostgresProvider, SqliteProvider
from duroxide_celery.providers.check import StoreNotReady, check_store


def test_a_usable_store_passes(tmp_path: Path) -> None:
    check_store(SqliteProvider.open(str(tmp_path / "ok.db")))


def test_an_unreachable_database_is_named_without_its_password() -> None:
    provider = PostgresProvider.connect("postgresql://someone:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(
        StoreNotReady, match=r"cannot use the duroxide store at postgresql\+psycopg://someone:\*\*\*@"
    ) as err:
        check_store(provider)
    assert "s3cret" not in str(err.value)


def test_a_schema_newer_than_this_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    check_store(SqliteProvider.open(str(path)))  # a current store...
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # ...migrated by a newer deployment
        conn.execute(sa.text("UPDATE dx_alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(StoreNotReady, match="does not know") as err:
        check_store(SqliteProvider.open(str(path)))
    assert "upgrade duroxide-celery" in str(err.value)
