"""Why a running instance waits: the handler (orchestration or activity) no worker has registered.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: not waiting for anything unusual. Set when a turn or an activity backs off for a missing handler,
    # cleared by the next turn that writes the instance row.
    op.add_column("dx_instances", sa.Column("waiting_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dx_instances") as batch:
        batch.drop_column("waiting_reason")
