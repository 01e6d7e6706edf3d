"""Organizations with a member key each, made through the admin services as an operator
would: for tests that need two tenants side by side."""

from __future__ import annotations

from collections.abc import Mapping

from openmaas.accounts.admin import NewOrganization
from openmaas.platform import open_platform
from openmaas.settings import Settings


async def member_keys(
    settings: Settings, *names: str, tiers: Mapping[str, str] | None = None
) -> list[str]:
    """A new organization per name (in the tier ``tiers`` names for it, one that exists),
    and the token of a member key of each, in order."""
    async with open_platform(settings) as platform:
        accounts = platform.accounts_admin("test")
        keys = []
        for name in names:
            tier = (tiers or {}).get(name)
            org = await accounts.create_org(NewOrganization(name=name, tier=tier))
            keys.append((await accounts.issue_key(org.id, "app")).token)
        return keys
