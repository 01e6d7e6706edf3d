"""Stored responses of the OpenAI Responses API (``POST /v1/responses`` with ``store``), so
that ``previous_response_id`` continues a conversation; each is owned by the organization
whose key created it (store/responses.py).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
    )
    op.create_index("ix_responses_org", "responses", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_responses_org", table_name="responses")
    op.drop_table("responses")
