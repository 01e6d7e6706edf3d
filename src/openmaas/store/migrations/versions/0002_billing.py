"""Billing: the ledger's event log and entries, prices, tiers, audit log, in-flight requests.

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_ONLY = ("ledger_events", "ledger_entries", "audit_log")

DEFAULT_TIERS = {  # core/tiers.py default_tiers(); operators change them with `openmaas tiers`
    "V0": {"rpm": 60, "tpm": 100_000, "concurrency": 5},
    "V1": {"rpm": 300, "tpm": 500_000, "concurrency": 20},
    "V2": {"rpm": 1_500, "tpm": 2_500_000, "concurrency": 100},
    "V3": {"rpm": 6_000, "tpm": 10_000_000, "concurrency": 500},
}


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("currency", sa.String(3), nullable=False, server_default="CNY"))
        batch.add_column(sa.Column("tier", sa.String(40), nullable=True))
        batch.add_column(sa.Column("discount_bp", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("tier", sa.String(40), nullable=True))
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(
            sa.Column("reasoning_tokens", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("cost_micros", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("currency", sa.String(3), nullable=True))

    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0}])
    op.create_table(
        "ledger_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=True),
        sa.Column("request_id", sa.String(80), nullable=True),
        sa.Column("idempotency_key", sa.String(160), nullable=True, unique=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_seq", sa.BigInteger, sa.ForeignKey("ledger_events.seq"), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("debit", sa.String(160), nullable=False),
        sa.Column("credit", sa.String(160), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("unit", sa.String(10), nullable=False),
        sa.Column("request_id", sa.String(80), nullable=True),
    )
    op.create_index("ix_entries_debit_at", "ledger_entries", ["debit", "at_ms"])
    op.create_index("ix_entries_credit_at", "ledger_entries", ["credit", "at_ms"])
    op.create_table(
        "prices",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("effective_from_ms", sa.BigInteger, primary_key=True),
        sa.Column("input_per_million", sa.BigInteger, nullable=False),
        sa.Column("cached_input_per_million", sa.BigInteger, nullable=False),
        sa.Column("output_per_million", sa.BigInteger, nullable=False),
        sa.Column("reasoning_per_million", sa.BigInteger, nullable=True),
    )
    tiers = op.create_table(
        "tiers",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.bulk_insert(
        tiers, [{"name": name, "body": json.dumps(body)} for name, body in DEFAULT_TIERS.items()]
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("before", sa.Text, nullable=True),
        sa.Column("after", sa.Text, nullable=True),
    )
    op.create_table(
        "inflight",
        sa.Column("request_id", sa.String(80), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(60), nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("checkpoint_at_ms", sa.BigInteger, nullable=True),
    )
    for table in APPEND_ONLY:
        _forbid_changes(table)


def _forbid_changes(table: str) -> None:
    """Rows of ``table`` can be inserted, never updated or deleted (corrections are new rows)."""
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    elif op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION openmaas_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$ LANGUAGE plpgsql"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION openmaas_append_only()"
        )


def downgrade() -> None:
    for table in ("inflight", "audit_log", "tiers", "prices", "ledger_entries", "ledger_events",
                  "ledger_head"):  # fmt: skip
        op.drop_table(table)
    with op.batch_alter_table("usage_records") as batch:
        for column in ("currency", "cost_micros", "reasoning_tokens"):
            batch.drop_column(column)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("tier")
    with op.batch_alter_table("organizations") as batch:
        for column in ("discount_bp", "tier", "currency"):
            batch.drop_column(column)
