"""Durable schedules: their definitions and state, and the record of what happened to their ticks.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    auto_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "dx_schedules",
        sa.Column("schedule_id", sa.String(512), primary_key=True),
        sa.Column("orchestration_name", sa.String(256), nullable=False),
        sa.Column("orchestration_version", sa.String(64)),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("cron", sa.String(256)),
        sa.Column("every_ms", sa.BigInteger()),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("overlap", sa.String(32), nullable=False),
        sa.Column("catchup_window_ms", sa.BigInteger(), nullable=False),
        sa.Column("jitter_ms", sa.BigInteger(), nullable=False),
        sa.Column("start_at", sa.BigInteger()),
        sa.Column("end_at", sa.BigInteger()),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_fire_at", sa.BigInteger()),
        sa.Column("due_at", sa.BigInteger()),
        sa.Column("buffered_fire_at", sa.BigInteger()),
        sa.Column("last_fire_at", sa.BigInteger()),
        sa.Column("last_instance_id", sa.String(512)),
        sa.Column("skipped_count", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dx_schedules_due", "dx_schedules", ["due_at"])
    op.create_table(
        "dx_schedule_runs",
        sa.Column("id", auto_id, primary_key=True, autoincrement=True),
        sa.Column("schedule_id", sa.String(512), nullable=False),
        sa.Column("fire_at", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("instance_id", sa.String(512)),
        sa.Column("ticks", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dx_schedule_runs_schedule", "dx_schedule_runs", ["schedule_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_dx_schedule_runs_schedule", table_name="dx_schedule_runs")
    op.drop_table("dx_schedule_runs")
    op.drop_index("ix_dx_schedules_due", table_name="dx_schedules")
    op.drop_table("dx_schedules")
