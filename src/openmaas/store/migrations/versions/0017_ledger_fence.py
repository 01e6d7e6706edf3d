"""The ledger's fence (``ledger_head.fence``): a count of the times a process wrote a
settlement or a closing to a lease another process drew (crash recovery of a dead
process's requests and leases).

A process appends the settlements of requests admitted against its own leases without
waiting for the log to stand still (they commute with every other event,
``store/ledger/log.py``), on the condition that the fence is still the one it knows: a
process recovered while it still ran (its liveness lock lost, not its life) is sent back to
the ordered path and sees what was done to its leases.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "ledger_head", sa.Column("fence", sa.BigInteger, nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("ledger_head") as batch:
        batch.drop_column("fence")
