"""Catalog: the model catalog document applied through the admin API or CLI (every
version kept), and upstream credentials sealed with AES-GCM (never in clear).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_documents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(64), nullable=False),  # sha256 of the document
        sa.Column("document", sa.Text, nullable=False),  # the YAML text as given
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
    )
    op.create_table(
        "upstream_credentials",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("sealed", sa.Text, nullable=False),  # accounts/secretbox.py format
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upstream_credentials")
    op.drop_table("catalog_documents")
