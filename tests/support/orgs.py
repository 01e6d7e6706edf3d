"""Organizations with a member key each, made through the admin services as an operator
would: for tests that need two tenants side by side, or one paying tenant."""

from __future__ import annotations

from collections.abc import Mapping

from openmaas.accounts.admin import NewOrganization
from openmaas.billing.admin_bodies import NewFunds, NewPrice
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


async def funded_key(settings: Settings, model: str) -> str:
    """The token of a key of a new organization with 1 CNY on it, ``model`` priced at 0.5
    CNY per 1M input tokens and 1.25 per 1M output (cached input free)."""
    async with open_platform(settings) as platform:
        accounts, billing = platform.accounts_admin("test"), platform.billing_admin("test")
        org = await accounts.create_org(NewOrganization(name="payer"))
        issued = await accounts.issue_key(org.id, "app")
        price = {"model": model, "input": "0.5", "cached_input": "0", "output": "1.25"}
        await billing.set_price(NewPrice.parse(price))  # CNY per 1M tokens
        await billing.top_up(org.id, NewFunds.parse({"amount": "1"}))
    return issued.token
