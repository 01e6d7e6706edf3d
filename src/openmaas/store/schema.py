"""The database schema, as SQLAlchemy Core tables. Migrations in ``migrations/`` create it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),  # public id, the part before the dot
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("role", String(20), nullable=False),  # "admin" | "member"
    Column("secret_hash", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger, nullable=True),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(40), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("org_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(60), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("estimated", Integer, nullable=False),  # 0/1: tokenizer fallback, not engine counts
    Column("termination", String(40), nullable=False),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("day", String(10), nullable=False),  # UTC date of started_at, for roll-ups
    Column("ttft_ms", Integer, nullable=True),
    Column("latency_ms", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Index("ix_usage_org_day", "org_id", "day"),
)
