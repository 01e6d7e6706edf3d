"""Administration of organizations and keys, for the CLI, the admin API and first-run
bootstrap. Each change goes through the unit of work (``store/audit.py``): its audit row
commits with it. Creating an organization is one path, whoever asks: its row, its opening
in the ledger (currency, credit limit) and its audit row, in one transaction."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from openmaas.core.admin_fields import AdminBody, CurrencyCode, Moment, Money, Name, iso_ms
from openmaas.core.clock import Clock
from openmaas.core.errors import InvalidRequest
from openmaas.core.keys import generate_key
from openmaas.core.ledger_events import Event, OpenOrg
from openmaas.core.money import Currency, format_micros
from openmaas.settings import Settings
from openmaas.store.audit import AuditedChanges, AuditRecord
from openmaas.store.billing import check_tier
from openmaas.store.repositories import (
    ApiKey,
    ApiKeyRepository,
    Organization,
    OrganizationRepository,
    UsageRepository,
    insert_key,
    insert_organization,
    new_organization,
    revoke_key,
)

DEFAULT_ORG = "default"
Role = Literal["admin", "member"]
ROLES: tuple[Role, ...] = ("admin", "member")


def org_json(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "name": org.name,
        "currency": org.currency,
        "tier": org.tier,
        "discount_bp": org.discount_bp,
        "data_policy": org.data_policy,
        "prompt_logging": org.prompt_logging,
        "created_at": iso_ms(org.created_at_ms),
    }


class NewOrganization(AdminBody):
    """``POST /admin/v1/orgs``; the currency is fixed at creation."""

    name: Name
    currency: CurrencyCode = Currency.CNY
    tier: str | None = None
    credit_limit: Money = 0


MAX_KEY_MODELS = 100


class NewApiKey(AdminBody):
    """``POST /admin/v1/orgs/{org}/keys``: a key of the organization, its secret shown once.

    ``models`` restricts it to those models (catalog names or aliases; left out: every
    model); ``expires_at`` (a date, midnight UTC, or an ISO 8601 time; left out: never)
    is when it stops working."""

    name: Name
    role: Role = "member"
    models: list[Name] | None = Field(None, min_length=1, max_length=MAX_KEY_MODELS)
    expires_at: Moment | None = None


def check_restrictions(
    models: Iterable[str] | None, expires_at_ms: int | None, now_ms: int
) -> frozenset[str] | None:
    """A key's restriction as it will be stored: the set of its models (None: every model),
    refused when empty or too long; an expiry that has already passed is refused."""
    allowed = None
    if models is not None:
        allowed = frozenset(m.strip() for m in models if m.strip())
        if not allowed:
            raise InvalidRequest("'models' must name at least one model.", "models")
        if len(allowed) > MAX_KEY_MODELS or any(len(m) > 200 for m in allowed):
            raise InvalidRequest(
                f"'models' must be at most {MAX_KEY_MODELS} names of at most 200 characters.",
                "models",
            )
    if expires_at_ms is not None and expires_at_ms <= now_ms:
        raise InvalidRequest("'expires_at' must lie in the future.", "expires_at")
    return allowed


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key as the admin API shows it (never its secret or hash)."""
    return {
        "id": key.id,
        "org": key.org_id,
        "name": key.name,
        "role": key.role,
        "tier": key.tier,
        "models": None if key.models is None else sorted(key.models),
        "expires_at": None if key.expires_at_ms is None else iso_ms(key.expires_at_ms),
        "created_at": iso_ms(key.created_at_ms),
        "revoked_at": None if key.revoked_at_ms is None else iso_ms(key.revoked_at_ms),
    }


def restriction_audit(key: ApiKey) -> dict[str, Any]:
    """What the audit row of a key's creation says of its restriction (only what is set)."""
    after: dict[str, Any] = {}
    if key.models is not None:
        after["models"] = sorted(key.models)
    if key.expires_at_ms is not None:
        after["expires_at"] = iso_ms(key.expires_at_ms)
    return after


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    token: str  # shown once, never stored


class AccountsAdmin:
    """Organizations and keys, changed as ``changes``' actor."""

    def __init__(
        self, changes: AuditedChanges, clock: Clock, master_key: bytes | None = None
    ) -> None:
        self.changes = changes
        self._clock = clock
        self._master_key = master_key
        self.orgs = OrganizationRepository(changes.database)
        self.keys = ApiKeyRepository(changes.database)
        self.usage = UsageRepository(changes.database)

    async def create_org(self, new: NewOrganization) -> Organization:
        """The organization's row, its opening in the ledger in its currency with its credit
        limit, and the audit row: one transaction."""
        tier = await check_tier(self.changes.database, new.tier)
        org = new_organization(
            new.name, self._clock.now_ms(), currency=new.currency.value, tier=tier
        )

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            await insert_organization(conn, org)
            after = {**org_json(org), "credit_limit": format_micros(new.credit_limit)}
            return AuditRecord("org.create", org.id, None, after)

        await self.changes.commit(write, OpenOrg(org.id, new.currency, new.credit_limit))
        return org

    async def issue_key(
        self,
        org: str,
        name: str,
        role: Role = "member",
        *,
        models: Iterable[str] | None = None,
        expires_at_ms: int | None = None,
    ) -> IssuedKey:
        """A key of ``org``; ``models`` restricts it to those models, ``expires_at_ms`` ends
        it (both None: every model, never)."""
        if role not in ROLES:
            raise InvalidRequest(f"'role' must be one of {', '.join(ROLES)}.", "role")
        allowed = check_restrictions(models, expires_at_ms, self._clock.now_ms())
        organization = await self.orgs.find(org)
        new = generate_key(self._master_key)
        issued: list[ApiKey] = []

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            key = await insert_key(
                conn,
                organization.id,
                name,
                role,
                new,
                self._clock.now_ms(),
                models=allowed,
                expires_at_ms=expires_at_ms,
            )
            issued.append(key)
            after = {"org": organization.id, "name": name, "role": role}  # never the secret
            return AuditRecord("key.create", key.id, None, after | restriction_audit(key))

        await self.changes.commit(write)
        return IssuedKey(issued[0], new.token)

    async def revoke_key(self, key_id: str) -> None:
        """Revoke a key; revoking it again changes nothing and is not audited again."""
        now = self._clock.now_ms()

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord | None:
            if await revoke_key(conn, key_id, now) is not None:
                return None  # revoked before
            return AuditRecord("key.revoke", key_id, {"revoked": False}, {"revoked": True})

        await self.changes.commit(write)


def ensure_home(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)


async def first_run(admin: AccountsAdmin, settings: Settings) -> IssuedKey | None:
    """On the very first start: the default organization and an admin key (both audited),
    the key saved to a file only the owner can read. Later starts change nothing and
    return None."""
    if await admin.orgs.count() > 0:
        return None
    await admin.create_org(NewOrganization(name=DEFAULT_ORG))
    issued = await admin.issue_key(DEFAULT_ORG, "admin", role="admin")
    fd = os.open(settings.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(issued.token + "\n")
    os.chmod(settings.admin_key_file, 0o600)
    return issued
