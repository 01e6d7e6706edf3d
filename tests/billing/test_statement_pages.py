"""The statement a page at a time (``BillingAdmin.statement_page``, the console's billing
page): the database counts and cuts the lines, and the pages, read one after another, are
exactly the whole statement newest first, leases shown as the accounts they draw on and
the moves into and out of a lease left out, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from openmaas.accounts.admin import NewOrganization
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.admin_bodies import NewFunds
from openmaas.core.errors import InvalidRequest
from openmaas.core.ledger_events import DrawLease, Hold, Settle, ShrinkLease, SpendLease
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.platform import Platform
from tests.support.clock import ManualClock

NOW_MS = 1_790_000_000_000
PRICE = AppliedPrice(ModelPrice("m", 1_000_000, 1_000_000, 1_000_000))  # 1 micro a token


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW_MS)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    new_pg_database: Callable[[], str] = request.getfixturevalue("new_pg_database")
    return new_pg_database()


async def busy_org(platform: Platform, clock: ManualClock) -> tuple[BillingAdmin, str]:
    """An organization with top-ups, promotional credit, requests held and settled, and a
    lease drawn, spent from and given back: every kind of line a statement shows or hides."""
    accounts = platform.accounts_admin("cli:alice")
    admin = platform.billing_admin("cli:alice")
    org = (await accounts.create_org(NewOrganization.parse({"name": "acme"}))).id
    await admin.top_up("acme", NewFunds.parse({"amount": "1", "id": "t1"}))
    await admin.grant_promo("acme", NewFunds.parse({"amount": "0.0001", "id": "p1"}))
    for n in range(4):
        clock.advance(1)
        quote = PRICE.worst_case(500, 0)
        await admin.ledger.execute(Hold(f"held-{n}", org, quote, clock.now_ms(), (f"org:{org}",)))
        await admin.ledger.execute(Settle(f"held-{n}", Usage(prompt_tokens=100 + n)))
    await admin.ledger.execute(DrawLease("lease-1", org, "gw-1", want=5_000, at_least=1_000))
    for n in range(3):
        clock.advance(1)
        usage = Usage(prompt_tokens=200 + n)
        await admin.ledger.execute(SpendLease(f"leased-{n}", "lease-1", PRICE, usage, 400))
    await admin.ledger.execute(ShrinkLease("lease-1", keep=0))
    await admin.top_up("acme", NewFunds.parse({"amount": "2", "id": "t2"}))
    return admin, org


async def test_the_pages_read_in_turn_are_the_whole_statement_newest_first(
    platform: Platform, clock: ManualClock
) -> None:
    admin, org = await busy_org(platform, clock)
    whole = await admin.statement("acme")
    whole.reverse()  # newest first, as the page shows it
    lease = {f"org:{org}:leased", f"org:{org}:leased_promo"}
    assert len(whole) > 12 and not {line.account for line in whole} & lease
    assert {line.request_id for line in whole} >= {"held-0", "leased-2"}
    until = clock.now_ms() + 1
    for size in (1, 3, 5, 50):
        pages = []
        for offset in range(0, len(whole) + size, size):
            page, total = await admin.statement_page("acme", 0, until, offset, size)
            assert total == len(whole) and len(page) <= size
            pages += page
        assert pages == whole

    # A period is cut by the database too: only the lines of the requests in it.
    first, total = await admin.statement_page("acme", NOW_MS + 2_000, NOW_MS + 2_001, 0, 50)
    assert {line.request_id for line in first} == {"held-1"} and total == len(first)
    with pytest.raises(InvalidRequest):
        await admin.statement_page("acme", NOW_MS, NOW_MS, 0, 50)
