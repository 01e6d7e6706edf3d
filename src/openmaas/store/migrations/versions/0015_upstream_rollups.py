"""Upstream cost in the daily roll-ups: ``usage_rollup_upstream``, what external upstreams
charged us per organization × UTC day × model × the upstream's currency
(store/rollups/). A table of its own rather than columns of ``usage_rollups``: the upstream's
currency is not the organization's and may differ between a model's deployments, so one
pair of columns per roll-up row would have to add two currencies.

And ``platform_rollups``, the operator's overview's sums (revenue and upstream cost) per
day and model, day and organization, month and organization: the overview read every
organization's rows of a period, a million rows for a year of a thousand organizations
(by ``ix_rollups_day``, dropped here: nothing else reads ``usage_rollups`` by day alone).

The records the roller folded before this migration (those at or behind its watermark) are
summed here, in the same transaction, after taking the watermark's row (as a pass does), so
that they appear too; the roller folds the upstream cost of every later record with the rest
of it. Each record is counted once: behind the watermark by this migration, past it by the
roller. ``platform_rollups`` is summed from the roll-ups, which hold every folded record.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# the records already folded: SQLite, rowids up to the watermark; PostgreSQL, (roll_xid,
# request_id) up to it (store/rollups/roller.py)
_FOLDED = {
    "sqlite": "usage_records.rowid <= m.position",
    "postgresql": "(usage_records.roll_xid, usage_records.request_id) "
    "<= (m.position, m.position_key)",
}


def upgrade() -> None:
    op.create_table(
        "usage_rollup_upstream",
        sa.Column("org_id", sa.String(40), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
    )
    folded = _FOLDED[op.get_bind().dialect.name]
    # a pass of a running roller waits for this transaction (and then folds the rest)
    op.execute("UPDATE rollup_marks SET name = name WHERE name = 'usage'")
    op.execute(
        "INSERT INTO usage_rollup_upstream "
        "(org_id, day, model, currency, requests, cost_micros) "
        "SELECT org_id, day, model, upstream_currency, COUNT(*), SUM(upstream_cost_micros) "
        "FROM usage_records JOIN rollup_marks m ON m.name = 'usage' "
        f"WHERE upstream_cost_micros IS NOT NULL AND upstream_currency IS NOT NULL AND {folded} "
        "GROUP BY org_id, day, model, upstream_currency"
    )

    op.create_table(
        "platform_rollups",
        sa.Column("span", sa.String(5), primary_key=True),
        sa.Column("dim", sa.String(5), primary_key=True),
        sa.Column("start", sa.String(10), primary_key=True),
        sa.Column("ident", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("micros", sa.BigInteger, nullable=False),
    )
    op.drop_index("ix_rollups_day", "usage_rollups")  # read by the overview until now
    for span, start in (("day", "day"), ("month", "substr(day, 1, 7)")):
        for dim, ident in (("org", "org_id"), ("model", "model")):
            if span == "month" and dim == "model":
                continue  # only organizations are summed per month
            op.execute(
                "INSERT INTO platform_rollups "
                "(span, start, dim, ident, kind, currency, requests, tokens, micros) "
                f"SELECT '{span}', {start}, '{dim}', {ident}, 'revenue', COALESCE(currency, ''), "
                "SUM(requests), SUM(input_tokens + output_tokens), SUM(cost_micros) "
                f"FROM usage_rollups GROUP BY {start}, {ident}, COALESCE(currency, '')"
            )
            op.execute(
                "INSERT INTO platform_rollups "
                "(span, start, dim, ident, kind, currency, requests, tokens, micros) "
                f"SELECT '{span}', {start}, '{dim}', {ident}, 'upstream', currency, "
                "SUM(requests), 0, SUM(cost_micros) "
                f"FROM usage_rollup_upstream GROUP BY {start}, {ident}, currency"
            )


def downgrade() -> None:
    op.create_index("ix_rollups_day", "usage_rollups", ["day"])
    op.drop_table("platform_rollups")
    op.drop_table("usage_rollup_upstream")
