"""Ledger snapshots: a process starts from the newest snapshot of the ledger's state (balances,
open holds and leases, the seq of the last event it reflects) and reads only the events
after it, instead of the whole log (store/ledger/log.py, docs/billing.md "Memory and start-up").
Derived data: the log stays the truth and append-only; old snapshots are deleted.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_snapshots",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_snapshots")
