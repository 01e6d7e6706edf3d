"""Routing: each organization's data policy; where each request was served and what the
upstream charged for it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(
            sa.Column("data_policy", sa.String(20), nullable=False, server_default="burst")
        )
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("deployment", sa.String(120), nullable=True))
        batch.add_column(sa.Column("data_class", sa.String(20), nullable=True))
        batch.add_column(sa.Column("route", sa.String(120), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("upstream_cost_micros", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("upstream_currency", sa.String(3), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        for column in ("upstream_currency", "upstream_cost_micros", "attempts", "route",
                       "data_class", "deployment"):  # fmt: skip
            batch.drop_column(column)
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("data_policy")
