"""The trace context of an instance: the W3C traceparent/tracestate (JSON) its OpenTelemetry spans descend from.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: started while tracing was off (or before this column existed); its spans then start their own trace.
    op.add_column("dx_instances", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dx_instances") as batch:
        batch.drop_column("trace_context")
