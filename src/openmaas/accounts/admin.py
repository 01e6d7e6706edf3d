"""Administration of organizations and keys, shared by the CLI and first-run bootstrap."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.clock import Clock, SystemClock
from openmaas.core.keys import generate_key
from openmaas.accounts.auth import load_master_key
from openmaas.settings import Settings
from openmaas.store.database import migrate, open_database
from openmaas.store.repositories import (
    ApiKey,
    ApiKeyRepository,
    Organization,
    OrganizationRepository,
    UsageRepository,
)

DEFAULT_ORG = "default"
ROLES = ("admin", "member")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    token: str  # shown once, never stored


class Admin:
    def __init__(
        self, database: AsyncEngine, clock: Clock | None = None, master_key: bytes | None = None
    ) -> None:
        self._master_key = master_key
        self.orgs = OrganizationRepository(database)
        self.keys = ApiKeyRepository(database)
        self.usage = UsageRepository(database)
        self._clock = clock or SystemClock()

    async def create_org(self, name: str) -> Organization:
        return await self.orgs.create(name, self._clock.now_ms())

    async def issue_key(self, org: str, name: str, role: str = "member") -> IssuedKey:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        organization = await self.orgs.find(org)
        new = generate_key(self._master_key)
        key = await self.keys.create(organization.id, name, role, new, self._clock.now_ms())
        return IssuedKey(key, new.token)

    async def revoke_key(self, key_id: str) -> None:
        await self.keys.revoke(key_id, self._clock.now_ms())


@asynccontextmanager
async def open_admin(settings: Settings) -> AsyncIterator[Admin]:
    """The data directory, migrated, ready to administer."""
    ensure_home(settings)
    database = open_database(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    try:
        await migrate(database)
        yield Admin(database, master_key=load_master_key(settings))
    finally:
        await database.dispose()


def ensure_home(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)


async def first_run(settings: Settings) -> IssuedKey | None:
    """On the very first start: the default organization and an admin key, saved to a file
    only the owner can read. Later starts change nothing and return None."""
    async with open_admin(settings) as admin:
        if await admin.orgs.count() > 0:
            return None
        await admin.create_org(DEFAULT_ORG)
        issued = await admin.issue_key(DEFAULT_ORG, "admin", role="admin")
    fd = os.open(settings.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(issued.token + "\n")
    os.chmod(settings.admin_key_file, 0o600)
    return issued
