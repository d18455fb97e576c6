"""Indexes for listing instances page by page (the dashboard): newest first, by status, by orchestration name,
and by id prefix, so that a page of a store with 100,000 instances reads only that page's rows.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keyset pagination orders by (created_at, instance_id); each filter gets the same order behind its column.
    op.create_index("ix_dx_instances_created", "dx_instances", ["created_at", "instance_id"])
    op.create_index("ix_dx_instances_status_created", "dx_instances", ["status", "created_at", "instance_id"])
    op.create_index("ix_dx_instances_name_created", "dx_instances", ["orchestration_name", "created_at", "instance_id"])
    # Id prefix search (LIKE 'p%'): PostgreSQL needs text_pattern_ops whatever the database's collation; on
    # SQLite the same definition is a plain index (one definition keeps schema.py and the migrations identical).
    op.create_index(
        "ix_dx_instances_id_prefix",
        "dx_instances",
        ["instance_id"],
        postgresql_ops={"instance_id": "text_pattern_ops"},
    )
    # (status, created_at, instance_id) serves every lookup by status the old single-column index did.
    op.drop_index("ix_dx_instances_status", table_name="dx_instances")


def downgrade() -> None:
    op.create_index("ix_dx_instances_status", "dx_instances", ["status"])
    for name in (
        "ix_dx_instances_id_prefix",
        "ix_dx_instances_name_created",
        "ix_dx_instances_status_created",
        "ix_dx_instances_created",
    ):
        op.drop_index(name, table_name="dx_instances")
