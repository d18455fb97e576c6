"""Schema migrations (Alembic), applied on first use and by `duroxide-celery db upgrade`.

Safe when several processes start at once on an empty database: PostgreSQL takes an advisory lock for the
upgrade transaction; SQLite's upgrade runs inside a BEGIN IMMEDIATE transaction, which serializes writers.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "dx_alembic_version"
_ADVISORY_LOCK_KEY = 0x64757278  # "durx"


def _config(connection: Connection, schema: str | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    try:
        with connection.begin_nested():
            return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    except Exception:  # noqa: BLE001 - no version table yet means an empty database
        return None


def upgrade(engine: Engine, schema: str | None = None) -> None:
    """Bring the schema to the newest revision; a no-op when it already is."""
    head = head_revision()
    with engine.connect() as probe:
        if current_revision(probe) == head:
            return
    with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
        # SQLite: IMMEDIATE takes the write lock up front, so concurrent starters wait (busy_timeout) instead of
        # failing with "database is locked" when a read transaction tries to become a write.
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            if schema:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        if current_revision(conn) == head:
            return
        command.upgrade(_config(conn, schema), "head")
