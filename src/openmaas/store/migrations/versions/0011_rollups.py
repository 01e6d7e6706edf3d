"""Daily roll-ups of usage per organization × UTC day × model × key, their latency and
time-to-first-token histograms, and the roller's watermark (store/rollups/). On
PostgreSQL, each usage record also gets the id of the transaction that inserted it
(``roll_xid``, filled by its default), the order in which the roller folds them.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _key() -> list[sa.Column[str]]:
    return [
        sa.Column("org_id", sa.String(40), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("key_id", sa.String(40), primary_key=True),
    ]


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        *_key(),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=True),
    )
    op.create_index("ix_rollups_day", "usage_rollups", ["day"])
    op.create_table(
        "usage_rollup_buckets",
        *_key(),
        sa.Column("metric", sa.String(8), primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
    )
    marks = op.create_table(
        "rollup_marks",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("position_key", sa.String(40), nullable=False),
        sa.Column("rolled_at_ms", sa.BigInteger, nullable=True),
    )
    op.bulk_insert(marks, [{"name": "usage", "position": 0, "position_key": ""}])
    if op.get_bind().dialect.name == "postgresql":
        # every record so far gets this migration's transaction id: the first pass folds
        # them all (the history is rolled up once)
        op.execute(
            "ALTER TABLE usage_records ADD COLUMN roll_xid BIGINT NOT NULL "
            "DEFAULT (pg_current_xact_id()::text::bigint)"
        )
        op.create_index("ix_usage_roll_xid", "usage_records", ["roll_xid", "request_id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_usage_roll_xid", "usage_records")
        op.execute("ALTER TABLE usage_records DROP COLUMN roll_xid")
    op.drop_table("rollup_marks")
    op.drop_table("usage_rollup_buckets")
    op.drop_index("ix_rollups_day", "usage_rollups")
    op.drop_table("usage_rollups")
