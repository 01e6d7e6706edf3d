"""The database schema, as SQLAlchemy Core tables. Migrations in ``migrations/`` create it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False, server_default="CNY"),
    Column("tier", String(40), nullable=True),  # None: no rate limits
    Column("discount_bp", Integer, nullable=False, server_default="0"),
    Column("data_policy", String(20), nullable=False, server_default="burst"),  # DataPolicy
    # migration 0014: the organization's generations are logged, prompt and answer
    Column("prompt_logging", Boolean, nullable=False, server_default=false()),
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
    Column("tier", String(40), nullable=True),  # narrows the organization's tier
    Column("models", Text, nullable=True),  # JSON array of model names; NULL: every model
    Column("expires_at_ms", BigInteger, nullable=True),  # NULL: never expires
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
    Column("reasoning_tokens", Integer, nullable=False, server_default="0"),
    Column("cost_micros", BigInteger, nullable=True),  # None: the model has no price
    Column("currency", String(3), nullable=True),
    Column("deployment", String(120), nullable=True),  # which deployment served it
    Column("data_class", String(20), nullable=True),  # "local" | "external"
    Column("route", String(120), nullable=True),  # why: least_loaded, affinity, burst, ...
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("upstream_cost_micros", BigInteger, nullable=True),  # what the upstream charges us
    Column("upstream_currency", String(3), nullable=True),
    Index("ix_usage_org_day", "org_id", "day"),
)

# -- billing (migration 0002) ---------------------------------------------------------

ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True),  # one row, id 1: the ledger's write lock
    Column("seq", BigInteger, nullable=False),  # the last event's seq
    # migration 0017: lease settlements and closings by a process that did not draw the
    # lease (store/ledger/log.py: what sends a process's commuting appends back)
    Column("fence", BigInteger, nullable=False, server_default="0"),
)

ledger_events = Table(
    "ledger_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("kind", String(30), nullable=False),
    Column("org_id", String(40), nullable=True),
    Column("request_id", String(80), nullable=True),
    Column("idempotency_key", String(160), nullable=True, unique=True),
    Column("body", Text, nullable=False),  # the event as JSON (core/ledger_events.py)
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_seq", BigInteger, ForeignKey("ledger_events.seq"), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("debit", String(160), nullable=False),
    Column("credit", String(160), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("unit", String(10), nullable=False),
    Column("request_id", String(80), nullable=True),
    Index("ix_entries_debit_at", "debit", "at_ms"),
    Index("ix_entries_credit_at", "credit", "at_ms"),
)

ledger_snapshots = Table(  # migration 0010: derived from the log, not part of it
    "ledger_snapshots",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),  # the last event in it
    Column("at_ms", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),  # sha256 of body, checked when read
    Column("body", Text, nullable=False),  # core/ledger.py LedgerState as JSON
)

prices = Table(
    "prices",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("effective_from_ms", BigInteger, primary_key=True),
    Column("input_per_million", BigInteger, nullable=False),
    Column("cached_input_per_million", BigInteger, nullable=False),
    Column("output_per_million", BigInteger, nullable=False),
    Column("reasoning_per_million", BigInteger, nullable=True),
)

tiers = Table(
    "tiers",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("body", Text, nullable=False),  # {"rpm":…, "tpm":…, "concurrency":…, "models":{…}}
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(80), nullable=False),  # "key:<id>" or "cli:<user>"
    Column("action", String(60), nullable=False),
    Column("target", String(200), nullable=False),
    Column("before", Text, nullable=True),  # JSON
    Column("after", Text, nullable=True),  # JSON
)

inflight = Table(
    "inflight",
    metadata,
    Column("request_id", String(80), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("org_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(60), nullable=False),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("checkpoint_at_ms", BigInteger, nullable=True),  # None: admitted, no count yet
    # migration 0005: the serving process that owns the row (store/instance.py); None:
    # written before instances existed, recovered by the next start
    Column("instance_id", String(26), nullable=True),
    # migration 0007: admitted against a lease (core/leases.py): which, and how much it
    # reserved there; None: a ledger hold of its own, or no price
    Column("lease_id", String(40), nullable=True),
    Column("reserved_micros", BigInteger, nullable=True),
    Index("ix_inflight_instance", "instance_id"),
)

# -- async jobs (migration 0006): store/async_jobs.py -----------------------------------

async_jobs = Table(
    "async_jobs",
    metadata,
    Column("id", String(40), primary_key=True),  # its generation's request id
    Column("org_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("client_request_id", String(200), nullable=True),
    Column("status", String(12), nullable=False),  # core.jobs.JobStatus
    Column("result", Text, nullable=True),  # JSON, once finished
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("instance_id", String(26), nullable=False),  # the process that runs it
    Index("ix_async_jobs_status_instance", "status", "instance_id"),  # the running ones
)

# -- responses (migration 0008) ---------------------------------------------------------

responses = Table(
    "responses",
    metadata,
    Column("id", String(40), primary_key=True),  # "resp_" + the request id
    Column("org_id", String(40), nullable=False),  # only this organization may read it
    Column("key_id", String(40), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("body", Text, nullable=False),  # JSON: the response object as it was answered
    Column("items", Text, nullable=False),  # JSON: the conversation so far, input and output
    Index("ix_responses_org", "org_id"),
)
