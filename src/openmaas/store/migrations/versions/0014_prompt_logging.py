"""Prompt logging, per organization (``docs/metrics.md``, "Prompt logging"): off unless an
operator turns it on; then the server logs each of the organization's generations, its
messages and the answer sent, as one record of the ``openmaas.prompts`` logger.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(
            sa.Column("prompt_logging", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("prompt_logging")
