"""Initial schema: instances, executions, history, inbox, work items, timers, KV.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ms() -> sa.BigInteger:
    return sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "dx_instances",
        sa.Column("instance_id", sa.String(512), primary_key=True),
        sa.Column("orchestration_name", sa.String(256), nullable=False),
        sa.Column("orchestration_version", sa.String(64)),
        sa.Column("requested_version", sa.String(64)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("current_execution_id", sa.Integer, nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("custom_status", sa.Text),
        sa.Column("custom_status_version", sa.Integer, nullable=False),
        sa.Column("parent_instance_id", sa.String(512)),
        sa.Column("created_at", _ms(), nullable=False),
        sa.Column("updated_at", _ms(), nullable=False),
        sa.Column("lock_owner", sa.String(256)),
        sa.Column("locked_until", _ms(), nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _ms(), nullable=False),
    )
    op.create_index("ix_dx_instances_status", "dx_instances", ["status"])
    op.create_index("ix_dx_instances_parent", "dx_instances", ["parent_instance_id"])
    op.create_table(
        "dx_executions",
        sa.Column("instance_id", sa.String(512), primary_key=True),
        sa.Column("execution_id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("orchestration_version", sa.String(64)),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("started_at", _ms(), nullable=False),
        sa.Column("completed_at", _ms()),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("replay_version", sa.Integer),
        sa.Column("kv_snapshot", sa.Text),
    )
    op.create_table(
        "dx_history",
        sa.Column("instance_id", sa.String(512), primary_key=True),
        sa.Column("execution_id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("source_event_id", sa.Integer),
        sa.Column("timestamp_ms", _ms(), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_table(
        "dx_inbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", _ms(), nullable=False),
    )
    op.create_index("ix_dx_inbox_instance", "dx_inbox", ["instance_id", "id"])
    op.create_index("ix_dx_inbox_created", "dx_inbox", ["created_at"])
    op.create_table(
        "dx_work_items",
        sa.Column("instance_id", sa.String(512), primary_key=True),
        sa.Column("execution_id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("session_id", sa.String(256)),
        sa.Column("tag", sa.String(256)),
        sa.Column("orchestration_name", sa.String(256)),
        sa.Column("orchestration_version", sa.String(64)),
        sa.Column("lock_owner", sa.String(256)),
        sa.Column("locked_until", _ms(), nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("visible_at", _ms(), nullable=False),
        sa.Column("created_at", _ms(), nullable=False),
        sa.Column("published_at", _ms(), nullable=False),
    )
    op.create_index("ix_dx_work_items_published", "dx_work_items", ["published_at"])
    op.create_table(
        "dx_timers",
        sa.Column("instance_id", sa.String(512), primary_key=True),
        sa.Column("execution_id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.Integer, primary_key=True),
        sa.Column("fire_at_ms", _ms(), nullable=False),
    )
    op.create_index("ix_dx_timers_fire_at", "dx_timers", ["fire_at_ms"])
    op.create_table(
        "dx_kv",
        sa.Column("instance_id", sa.String(512), primary_key=True),
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("last_updated_at_ms", _ms(), nullable=False),
    )


def downgrade() -> None:
    for table in ("dx_kv", "dx_timers", "dx_work_items", "dx_inbox", "dx_history", "dx_executions", "dx_instances"):
        op.drop_table(table)
