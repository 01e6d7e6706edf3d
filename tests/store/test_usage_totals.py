"""Usage totals (``UsageRepository.totals``: ``openmaas usage``, ``/v1/usage``, the admin
API's organization usage) sum money only within one currency: across organizations a row
per organization currency, and upstream costs per upstream currency; SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import insert

from openmaas.core.money import Currency, Money
from openmaas.core.termination import Termination
from openmaas.core.types import Usage
from openmaas.core.usage import UsageRecord
from openmaas.store.database import migrate, open_database
from openmaas.store.repositories import UsageRepository
from openmaas.store.schema import organizations
from tests.support.clock import NOW_MS

CNY, USD = Currency.CNY, Currency.USD


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


def _record(n: int, org: str, cost: Money | None, upstream: Money | None) -> UsageRecord:
    return UsageRecord(
        f"r{n}", "k", org, "glm", "chat.completions", Usage(10, 0, 5), Termination.FINISHED,
        NOW_MS, 10, 20, cost=cost, upstream_cost=upstream,
    )  # fmt: skip


async def test_money_is_summed_within_one_currency_only(database_url: str) -> None:
    engine = open_database(database_url)
    await migrate(engine)
    try:
        async with engine.begin() as conn:
            for org, currency in (("org_usd", "USD"), ("org_cny", "CNY")):
                await conn.execute(
                    insert(organizations).values(
                        id=org, name=org, created_at_ms=0, currency=currency
                    )
                )
        usage = UsageRepository(engine)
        for n, (org, cost, upstream) in enumerate([
            ("org_usd", Money(120, USD), Money(100, USD)),
            ("org_usd", Money(30, USD), Money(200, CNY)),
            ("org_usd", None, None),  # unpriced, served locally
            ("org_cny", Money(7, CNY), Money(5, USD)),
        ]):  # fmt: skip
            await usage.append(_record(n, org, cost, upstream))

        [usd] = await usage.totals("org_usd")
        assert (usd.requests, usd.prompt_tokens, usd.cost) == (3, 30, Money(150, USD))
        assert usd.upstream_costs == (Money(200, CNY), Money(100, USD))  # never added
        both = await usage.totals()
        assert [(t.requests, t.cost, t.upstream_costs) for t in both] == [
            (1, Money(7, CNY), (Money(5, USD),)),
            (3, Money(150, USD), (Money(200, CNY), Money(100, USD))),
        ]
    finally:
        await engine.dispose()
