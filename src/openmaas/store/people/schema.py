"""The tables of migration 0009, on the one ``metadata`` of ``store/schema.py``."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, String, Table

from openmaas.store.schema import metadata

users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),  # "usr_" + 16 hex digits
    Column("email", String(320), nullable=False, unique=True),  # stored in lower case
    Column("password_hash", String(200), nullable=False),  # argon2id, PHC string
    Column("created_at_ms", BigInteger, nullable=False),
    Column("disabled_at_ms", BigInteger, nullable=True),
    Column("operator", Boolean, nullable=False, server_default="0"),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), primary_key=True),
    Column("role", String(20), nullable=False),  # owner | admin | member | viewer
    Column("created_at_ms", BigInteger, nullable=False),
    Index("ix_memberships_org", "org_id"),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # SHA-256 of the cookie's token
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger, nullable=True),
    Index("ix_console_sessions_user", "user_id"),
)

sign_in_failures = Table(
    "sign_in_failures",
    metadata,
    Column("scope", String(400), primary_key=True),  # "account:<email>" | "address:<ip>"
    Column("failures", Integer, nullable=False),
    Column("first_at_ms", BigInteger, nullable=False),
    Column("locked_until_ms", BigInteger, nullable=True),
)

key_creators = Table(
    "key_creators",
    metadata,
    Column("key_id", String(40), ForeignKey("api_keys.id"), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False),
)

invitations = Table(  # migration 0013
    "invitations",
    metadata,
    Column("id", String(40), primary_key=True),  # "inv_" + 16 hex digits
    Column("token_hash", String(64), nullable=False, unique=True),  # SHA-256 of the token
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("email", String(320), nullable=False),  # lower case
    Column("role", String(20), nullable=False),
    Column("invited_by", String(40), ForeignKey("users.id"), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("accepted_at_ms", BigInteger, nullable=True),
    Column("accepted_by", String(40), ForeignKey("users.id"), nullable=True),
    Column("revoked_at_ms", BigInteger, nullable=True),
    Index("ix_invitations_org", "org_id"),
)

org_suspensions = Table(  # migration 0013: a row while the organization is suspended
    "org_suspensions",
    metadata,
    Column("org_id", String(40), ForeignKey("organizations.id"), primary_key=True),
    Column("suspended_at_ms", BigInteger, nullable=False),
)
