"""Client.restart links the new instance to the one it restarts.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for every instance not started by Client.restart.
    op.add_column("dx_instances", sa.Column("restarted_from", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dx_instances") as batch:
        batch.drop_column("restarted_from")
