"""Alembic environment: runs on the connection the store hands over (see providers/migrate.py)."""

from alembic import context

from duroxide_celery.providers.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="dx_alembic_version",
    version_table_schema=context.config.attributes.get("schema"),
)
with context.begin_transaction():
    context.run_migrations()
