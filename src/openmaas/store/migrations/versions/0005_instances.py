"""Instances: each request in flight names the serving process that owns it, so that many
processes can serve from one database and a dead one's requests are recovered by a
survivor or its restart, exactly once (store/instance.py).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("inflight", sa.Column("instance_id", sa.String(26), nullable=True))
    op.create_index("ix_inflight_instance", "inflight", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_inflight_instance", table_name="inflight")
    with op.batch_alter_table("inflight") as batch:
        batch.drop_column("instance_id")
