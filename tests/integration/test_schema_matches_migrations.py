"""The Alembic migrations (providers/migrations, applied on first use) build exactly the tables that
`providers/schema.py` declares, on the suite's database (SQLite, or PostgreSQL with DUROXIDE_TEST_DB=postgres).

The store's statements are built from `schema.py`'s metadata while the tables come from the migrations, so a
column added to one and not the other would only show as a failing statement in production. Compared, with
`sqlalchemy.inspect` on the migrated database against the metadata:

- table names (the Alembic version table left out);
- per table: column names; per column, nullability, the type as the database's DDL spells it (metadata types
  compiled for the dialect, so `NulSafeText` is TEXT and `AutoId` INTEGER on SQLite, BIGINT on PostgreSQL,
  `String(512)` VARCHAR(512)), and whether it has a server default (autoincrementing keys left out:
  PostgreSQL gives them a sequence default);
- the primary key, in column order;
- indexes by name, column list (in order) and uniqueness; no foreign keys or unique constraints on either side.

Then Alembic's own autogenerate comparison (types included) must find nothing to migrate.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from duroxide_celery.providers.migrate import VERSION_TABLE
from duroxide_celery.providers.schema import metadata


def _migrated(provider: Any) -> tuple[sa.Engine, str | None]:
    """The provider's engine, after first use has applied the migrations, and the schema holding the tables."""
    engine = provider.store.engine  # first use: upgrade to head
    return engine, provider.schema


def _reflected(engine: sa.Engine, schema: str | None) -> dict[str, dict[str, Any]]:
    inspector = sa.inspect(engine)
    tables: dict[str, dict[str, Any]] = {}
    for name in inspector.get_table_names(schema=schema):
        if name == VERSION_TABLE:
            continue
        columns = inspector.get_columns(name, schema=schema)
        pk = inspector.get_pk_constraint(name, schema=schema)["constrained_columns"]
        tables[name] = {
            "columns": {
                col["name"]: {
                    "nullable": col["nullable"],
                    "type": col["type"].compile(dialect=engine.dialect),
                    "server_default": col["default"] is not None and not (col["name"] in pk and len(pk) == 1),
                }
                for col in columns
            },
            "primary_key": list(pk),
            "indexes": {
                ix["name"]: (tuple(ix["column_names"]), bool(ix["unique"]))
                for ix in inspector.get_indexes(name, schema=schema)
            },
            "foreign_keys": inspector.get_foreign_keys(name, schema=schema),
            "unique_constraints": inspector.get_unique_constraints(name, schema=schema),
        }
    return tables


def _declared(engine: sa.Engine, declared: sa.MetaData = metadata) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for name, table in declared.tables.items():
        pk = [col.name for col in table.primary_key.columns]
        tables[name] = {
            "columns": {
                col.name: {
                    "nullable": bool(col.nullable),
                    "type": col.type.compile(dialect=engine.dialect),
                    "server_default": col.server_default is not None and not (col.name in pk and len(pk) == 1),
                }
                for col in table.columns
            },
            "primary_key": pk,
            "indexes": {ix.name: (tuple(col.name for col in ix.columns), bool(ix.unique)) for ix in table.indexes},
            "foreign_keys": [],
            "unique_constraints": [],
        }
    return tables


def test_migrated_tables_match_schema_py(provider):
    engine, schema = _migrated(provider)
    reflected, declared = _reflected(engine, schema), _declared(engine)

    assert sorted(reflected) == sorted(declared), "table names differ"
    for name in sorted(declared):
        got, want = reflected[name], declared[name]
        assert sorted(got["columns"]) == sorted(want["columns"]), f"{name}: column names differ"
        for column in sorted(want["columns"]):
            assert got["columns"][column] == want["columns"][column], f"{name}.{column} differs (migrated vs declared)"
        assert got["primary_key"] == want["primary_key"], f"{name}: primary key differs"
        assert got["indexes"] == want["indexes"], f"{name}: indexes differ"
        assert got["foreign_keys"] == want["foreign_keys"], f"{name}: foreign keys differ"
        assert got["unique_constraints"] == want["unique_constraints"], f"{name}: unique constraints differ"


def test_alembic_autogenerate_finds_nothing_to_migrate(provider):
    engine, _schema = _migrated(provider)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_the_comparison_sees_a_difference(provider):
    """The check is not vacuous: a column the migrations did not create shows up as a difference."""
    engine, schema = _migrated(provider)
    extra = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(extra)
    sa.Table("dx_kv", extra, sa.Column("not_migrated", sa.Integer), extend_existing=True)
    reflected, declared = _reflected(engine, schema), _declared(engine, extra)
    assert sorted(declared["dx_kv"]["columns"]) == sorted([*reflected["dx_kv"]["columns"], "not_migrated"])
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(context, extra)
    assert [d[0] for d in diff] == ["add_column"] and diff[0][3].name == "not_migrated"
