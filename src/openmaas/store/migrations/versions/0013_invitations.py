"""Invitations to an organization (store/people/invitations.py): an email, a role, who
invited, when it expires, and only the SHA-256 of its single-use token; and the
organizations an operator suspended (store/people/suspensions.py).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("invited_by", sa.String(40), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        sa.Column("accepted_at_ms", sa.BigInteger, nullable=True),
        sa.Column("accepted_by", sa.String(40), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("revoked_at_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_invitations_org", "invitations", ["org_id"])
    op.create_table(
        "org_suspensions",
        sa.Column("org_id", sa.String(40), sa.ForeignKey("organizations.id"), primary_key=True),
        sa.Column("suspended_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("org_suspensions")
    op.drop_index("ix_invitations_org", table_name="invitations")
    op.drop_table("invitations")
