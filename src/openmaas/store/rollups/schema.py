"""The tables of migrations 0011 and 0015, on the one ``metadata`` of ``store/schema.py``.

On PostgreSQL the migration also adds ``usage_records.roll_xid`` (the inserting
transaction's id, ``pg_current_xact_id()``), which the roller reads by name: it is not on
``store/schema.py``'s table, so no writer of usage records knows of it (its default fills
it). On SQLite the roller reads the table's ``rowid``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table

from openmaas.store.schema import metadata

usage_rollups = Table(
    "usage_rollups",
    metadata,
    Column("org_id", String(40), primary_key=True),
    Column("day", String(10), primary_key=True),  # UTC date of the requests' start
    Column("model", String(200), primary_key=True),
    Column("key_id", String(40), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),  # core/rollups.py's ERROR_TERMINATIONS
    Column("input_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),  # the priced requests' charges
    Column("currency", String(3), nullable=True),  # None: no priced request yet
    # (migration 0011's index by day, for the overview, went in 0015: it reads
    # platform_rollups)
)

usage_rollup_buckets = Table(
    "usage_rollup_buckets",
    metadata,
    Column("org_id", String(40), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("key_id", String(40), primary_key=True),
    Column("metric", String(8), primary_key=True),  # "latency" | "ttft"
    Column("bucket", Integer, primary_key=True),  # core/rollups.py's BOUNDS_MS
    Column("requests", BigInteger, nullable=False),
)

# migration 0015: what external upstreams charged us, in the upstream's currency (which need
# not be the organization's, and may differ between a model's deployments): a row per
# currency, so that amounts in two currencies are never added; per organization × day ×
# model (no key: only the operator reads it), folded by the same pass as usage_rollups
usage_rollup_upstream = Table(
    "usage_rollup_upstream",
    metadata,
    Column("org_id", String(40), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("currency", String(3), primary_key=True),  # the upstream's
    Column("requests", BigInteger, nullable=False),  # the records that had an upstream cost
    Column("cost_micros", BigInteger, nullable=False),
)

# migration 0015: the platform's sums for the operator's overview, which reads a period
# across every organization: per day and model, per day and organization, and per month and
# organization (so that a year of a thousand organizations is ~12,000 rows per currency, not
# a row per organization, model and key each day); ``kind`` "revenue" (requests, input +
# output tokens and what they were charged, in the organization's currency; "" for requests
# without a price) or "upstream" (the requests that had an upstream cost and what it was, in
# the upstream's currency; no tokens). Folded by the same pass as usage_rollups.
platform_rollups = Table(
    "platform_rollups",
    metadata,
    Column("span", String(5), primary_key=True),  # "day" | "month"
    # the key's order: a period's rows of one span and dimension lie together
    Column("dim", String(5), primary_key=True),  # "org" | "model"
    Column("start", String(10), primary_key=True),  # YYYY-MM-DD | YYYY-MM
    Column("ident", String(200), primary_key=True),  # the organization id or the model
    Column("kind", String(8), primary_key=True),  # "revenue" | "upstream"
    Column("currency", String(3), primary_key=True),  # "": requests without a price
    Column("requests", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("micros", BigInteger, nullable=False),
)

rollup_marks = Table(
    "rollup_marks",
    metadata,
    Column("name", String(40), primary_key=True),  # "usage": the one roller
    # how far the roller has folded: SQLite, the last rowid; PostgreSQL, the last
    # (roll_xid, request_id) folded
    Column("position", BigInteger, nullable=False),
    Column("position_key", String(40), nullable=False),
    # the last pass that folded records and left none visible behind it
    Column("rolled_at_ms", BigInteger, nullable=True),
)

# migration 0016: when each key was last used (the latest start of its folded records)
key_last_use = Table(
    "key_last_use",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("last_at_ms", BigInteger, nullable=False),
)
