"""API keys restricted to models and with an expiry: ``api_keys.models`` (a JSON array of
model names; NULL: every model) and ``api_keys.expires_at_ms`` (NULL: never expires).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("models", sa.Text, nullable=True))
    op.add_column("api_keys", sa.Column("expires_at_ms", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at_ms")
        batch.drop_column("models")
