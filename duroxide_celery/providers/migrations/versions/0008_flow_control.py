"""Flow control: concurrency and rate limits on activities and on orchestration starts (dx_limits, dx_admissions),
fairness across keys (dx_flow_keys), and the key, priority and limit state of each activity row and instance.

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows: no key, priority 0, no limit (flow_state NULL): they run as before.
    op.add_column("dx_work_items", sa.Column("flow_key", sa.String(256), nullable=False, server_default=""))
    op.add_column("dx_work_items", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("dx_work_items", sa.Column("flow_state", sa.String(16), nullable=True))
    op.create_index("ix_dx_work_items_flow", "dx_work_items", ["flow_state", "name", "flow_key"])
    op.add_column("dx_instances", sa.Column("flow_key", sa.String(256), nullable=False, server_default=""))
    op.add_column("dx_instances", sa.Column("flow_state", sa.String(16), nullable=True))
    op.create_index("ix_dx_instances_flow", "dx_instances", ["flow_state", "orchestration_name", "flow_key"])
    op.create_table(
        "dx_limits",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("key_limit", sa.Integer(), nullable=True),
        sa.Column("admissions", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("rate_count", sa.Integer(), nullable=True),
        sa.Column("rate_period_ms", sa.BigInteger(), nullable=True),
        sa.Column("key_rate_count", sa.Integer(), nullable=True),
        sa.Column("key_rate_period_ms", sa.BigInteger(), nullable=True),
        sa.Column("next_admit_at", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dx_limits_next_admit", "dx_limits", ["next_admit_at"])
    op.create_table(
        "dx_admissions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("flow_key", sa.String(256), nullable=False),
        sa.Column("admitted_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dx_admissions_name", "dx_admissions", ["name", "admitted_at"])
    op.create_table(
        "dx_flow_keys",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("flow_key", sa.String(256), primary_key=True),
        sa.Column("last_turn", sa.BigInteger(), nullable=False),
        sa.Column("last_admitted_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dx_admissions")
    op.drop_table("dx_flow_keys")
    op.drop_table("dx_limits")
    op.drop_index("ix_dx_instances_flow", table_name="dx_instances")
    with op.batch_alter_table("dx_instances") as batch:
        batch.drop_column("flow_state")
        batch.drop_column("flow_key")
    op.drop_index("ix_dx_work_items_flow", table_name="dx_work_items")
    with op.batch_alter_table("dx_work_items") as batch:
        batch.drop_column("flow_state")
        batch.drop_column("priority")
        batch.drop_column("flow_key")
