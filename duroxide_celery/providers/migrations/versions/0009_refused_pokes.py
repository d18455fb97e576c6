"""Refused pokes: how many wake-ups of an instance found its lease held, which tells the turn holding it, at its
commit, whether messages arrived meanwhile (providers/turn_shapes.py).

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dx_instances", sa.Column("refused_pokes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("dx_instances") as batch:
        batch.drop_column("refused_pokes")
