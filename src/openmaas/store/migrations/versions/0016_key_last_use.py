"""When each API key was last used (``key_last_use``), kept by the usage roller
(store/rollups/roller.py) as it folds usage records: the console's key list read the
organization's usage records for a ``max`` per key, every record of a year.

Filled here from every usage record (a ``max`` is the same however often a record is
counted, so the records the roller folds after this migration may be counted again).

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_last_use",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("last_at_ms", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO key_last_use (key_id, last_at_ms) "
        "SELECT key_id, max(started_at_ms) FROM usage_records GROUP BY key_id"
    )


def downgrade() -> None:
    op.drop_table("key_last_use")
