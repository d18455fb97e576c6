"""Sessions (activity affinity) and the time-to-live of unclaimed activities.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dx_sessions",
        sa.Column("session_id", sa.String(256), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=False),
        sa.Column("last_activity_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dx_sessions_owner", "dx_sessions", ["owner"])
    # 0: no deadline. Otherwise the time by which a worker must have claimed the activity, or it fails.
    op.add_column("dx_work_items", sa.Column("claim_deadline", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_dx_work_items_deadline", "dx_work_items", ["claim_deadline"])


def downgrade() -> None:
    op.drop_index("ix_dx_work_items_deadline", table_name="dx_work_items")
    with op.batch_alter_table("dx_work_items") as batch:
        batch.drop_column("claim_deadline")
    op.drop_index("ix_dx_sessions_owner", table_name="dx_sessions")
    op.drop_table("dx_sessions")
