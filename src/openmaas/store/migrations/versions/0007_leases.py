"""Leases: a request admitted against a gateway process's lease (core/leases.py) names the
lease and what it reserved on its in-flight row, so that whoever recovers it after a crash
settles it from that lease (``SpendLease``) before closing the dead process's leases.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inflight") as batch:
        batch.add_column(sa.Column("lease_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("reserved_micros", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inflight") as batch:
        batch.drop_column("reserved_micros")
        batch.drop_column("lease_id")
