"""Billing administration (billing/admin.py, its bodies in billing/admin_bodies.py) on a
real SQLite database built by the composition root: every operation, its audit row, and
what is refused."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.admin import AccountsAdmin, NewOrganization
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.admin_bodies import (
    BudgetLimit,
    NewFunds,
    NewPack,
    NewPrice,
    TermsChange,
    TierLimits,
)
from openmaas.billing.reports import statement_csv
from openmaas.core.admin_fields import parse_time
from openmaas.core.errors import InvalidRequest, NotFound
from openmaas.core.keys import generate_key
from openmaas.core.ledger_events import Hold, Settle
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import Usage
from openmaas.platform import Platform
from openmaas.store.audit import read_audit
from openmaas.store.repositories import ApiKeyRepository
from tests.support.clock import ManualClock

NOW_MS = 1_790_000_000_000  # 2026-09-21T14:13:20Z
DAY_MS = 86_400_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW_MS)


@pytest.fixture
def changes() -> list[str]:
    return []


@pytest.fixture
def admin(platform: Platform, changes: list[str]) -> BillingAdmin:
    admin = platform.billing_admin("cli:alice")
    admin.on_change = lambda: changes.append("changed")
    return admin


@pytest.fixture
def accounts(platform: Platform) -> AccountsAdmin:
    return platform.accounts_admin("cli:alice")


async def create_org(accounts: AccountsAdmin, name: str, **fields: object):
    return await accounts.create_org(NewOrganization.parse({"name": name, **fields}))


async def set_org(admin: BillingAdmin, org: str, **fields: object):
    return await admin.set_org(org, TermsChange.parse(fields))


async def set_price(admin: BillingAdmin, model: str, **fields: object):
    return await admin.set_price(NewPrice.parse({"model": model, **fields}))


async def set_tier(admin: BillingAdmin, name: str, **fields: object):
    return await admin.set_tier(name, TierLimits.parse(fields))


def funds(amount: object, id: str | None = None) -> NewFunds:
    return NewFunds.parse({"amount": amount} if id is None else {"amount": amount, "id": id})


async def audit_rows(database: AsyncEngine) -> list:
    return list(reversed(await read_audit(database, 1000)))  # oldest first


async def test_create_org_opens_it_in_its_currency_with_a_credit_limit(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    org = await create_org(accounts, "acme", currency="usd", tier="V1", credit_limit="25.5")
    assert (org.name, org.currency, org.tier) == ("acme", "USD", "V1")
    report = await admin.balance("acme")
    assert (report.currency.value, report.cash, report.credit_limit) == ("USD", 0, 25_500_000)
    assert report.available == 25_500_000  # post-paid: may go 25.5 USD below zero
    [row] = await audit_rows(database)
    assert (row.actor, row.action, row.target, row.before) == (
        "cli:alice",
        "org.create",
        org.id,
        None,
    )
    assert row.after["name"] == "acme" and row.after["credit_limit"] == "25.500000"
    assert row.after["currency"] == "USD" and row.after["tier"] == "V1"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"currency": "EUR"}, "currency"),
        ({"tier": "Gold"}, "tier"),
        ({"credit_limit": "-1"}, "credit_limit"),
        ({"credit_limit": 1.5}, "credit_limit"),
        ({"credit_limit": "0.0000001"}, "credit_limit"),
    ],
)
async def test_create_org_refuses_bad_fields_and_writes_nothing(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine, kwargs: dict, field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await create_org(accounts, "acme", **kwargs)
    assert refused.value.param == field
    assert await admin.list_orgs() == []
    assert await audit_rows(database) == []


async def test_a_duplicate_org_name_is_refused_and_not_audited(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    await create_org(accounts, "acme")
    with pytest.raises(InvalidRequest) as refused:
        await create_org(accounts, "acme")
    assert refused.value.param == "name"
    assert [o.name for o in await admin.list_orgs()] == ["acme"]
    assert [r.action for r in await audit_rows(database)] == ["org.create"]


async def test_set_org_tier_discount_and_credit_limit_in_one_audited_change(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine, changes: list[str]
) -> None:
    await create_org(accounts, "acme", tier="V0")
    changes.clear()
    org = await set_org(admin, "acme", tier="V2", discount_bp=2500, credit_limit="100")
    assert (org.tier, org.discount_bp) == ("V2", 2500)
    assert (await admin.balance("acme")).credit_limit == 100_000_000
    assert changes == ["changed"]
    row = (await audit_rows(database))[-1]
    assert (row.action, row.target) == ("org.update", org.id)
    assert row.before == {"tier": "V0", "discount_bp": 0, "credit_limit": "0.000000"}
    assert row.after == {"tier": "V2", "discount_bp": 2500, "credit_limit": "100.000000"}

    cleared = await set_org(admin, "acme", tier=None)
    assert cleared.tier is None
    assert (await audit_rows(database))[-1].after == {"tier": None}


async def test_set_org_refusals_write_no_audit_row(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    await create_org(accounts, "acme")
    with pytest.raises(InvalidRequest) as refused:
        await set_org(admin, "acme", discount_bp=10_001)
    assert refused.value.param == "discount_bp"
    with pytest.raises(InvalidRequest) as refused:
        await set_org(admin, "acme", tier="nope")
    assert refused.value.param == "tier"
    with pytest.raises(NotFound):
        await set_org(admin, "globex", tier="V1")
    # The ledger refuses a credit limit the balance is already below.
    await set_org(admin, "acme", credit_limit="10")
    await spend(admin, "acme", 5_000_000, used=4_000_000)  # cash is now -4 CNY
    with pytest.raises(InvalidRequest) as refused:
        await set_org(admin, "acme", credit_limit="1", tier="V3")
    assert refused.value.param == "credit_limit"
    assert (await admin.org("acme")).tier is None  # the tier in the same change rolled back
    assert [r.action for r in await audit_rows(database)] == ["org.create", "org.update"]


async def test_set_key_tier(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    org = await create_org(accounts, "acme")
    key = generate_key(b"k" * 32)
    await ApiKeyRepository(database).create(org.id, "bot", "member", key, NOW_MS)
    assert await admin.set_key_tier(key.key_id, "V0") == "V0"
    assert (await ApiKeyRepository(database).get(key.key_id)).tier == "V0"
    row = (await audit_rows(database))[-1]
    assert (row.action, row.target, row.before, row.after) == (
        "key.update",
        key.key_id,
        {"tier": None},
        {"tier": "V0"},
    )
    with pytest.raises(NotFound):
        await admin.set_key_tier("om_missing", "V0")
    with pytest.raises(InvalidRequest):
        await admin.set_key_tier(key.key_id, "V9")
    assert len(await audit_rows(database)) == 2


async def test_top_up_is_exact_idempotent_and_audited(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    await create_org(accounts, "acme")
    first = await admin.top_up("acme", funds("12.5", "pay-1"))
    assert (first.funding_id, first.applied, first.balance.cash) == ("pay-1", True, 12_500_000)
    again = await admin.top_up("acme", funds("12.5", "pay-1"))  # a retry changes nothing
    assert (again.applied, again.balance.cash) == (False, 12_500_000)
    generated = await admin.top_up("acme", funds("0.000001"))
    assert generated.funding_id.startswith("topup_") and generated.balance.cash == 12_500_001
    rows = [r for r in await audit_rows(database) if r.action == "billing.topup"]
    assert len(rows) == 2
    assert rows[0].before == {"balance": "0.000000", "currency": "CNY"}
    assert rows[0].after == {
        "balance": "12.500000",
        "currency": "CNY",
        "id": "pay-1",
        "amount": "12.500000",
    }


@pytest.mark.parametrize("amount", ["-5", "0", "abc", 5.0, 5, "1.0000001", "NaN"])
async def test_top_up_refuses_bad_amounts(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine, amount: object
) -> None:
    await create_org(accounts, "acme")
    with pytest.raises(InvalidRequest) as refused:
        await admin.top_up("acme", funds(amount))
    assert refused.value.param == "amount"
    assert (await admin.balance("acme")).cash == 0
    assert [r.action for r in await audit_rows(database)] == ["org.create"]


async def test_top_up_an_unknown_org_is_not_found(admin: BillingAdmin) -> None:
    with pytest.raises(NotFound):
        await admin.top_up("nobody", funds("1"))


async def test_promotional_credit_counts_as_available(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    await create_org(accounts, "acme")
    granted = await admin.grant_promo("acme", funds("3"))
    assert granted.funding_id.startswith("promo_")
    report = await admin.balance("acme")
    assert (report.cash, report.promo, report.available) == (0, 3_000_000, 3_000_000)
    row = (await audit_rows(database))[-1]
    assert row.action == "billing.promo" and row.after["balance"] == "3.000000"


async def test_grant_a_pack_and_list_it(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    await create_org(accounts, "acme")
    expires = "2026-12-31"
    grant = {"models": ["glm-4", "fake-echo"], "tokens": 1_000_000, "expires_at": expires}
    pack = await admin.grant_pack("acme", NewPack.parse({**grant, "id": "p1"}))
    assert (pack.pack_id, pack.models, pack.remaining) == ("p1", ("fake-echo", "glm-4"), 1_000_000)
    assert pack.expires_at_ms == parse_time(expires, "expires")
    [listed] = await admin.packs("acme")
    assert listed.as_json() == {
        "id": "p1",
        "models": ["fake-echo", "glm-4"],
        "tokens_remaining": 1_000_000,
        "expires_at": "2026-12-31T00:00:00.000Z",
        "expired": False,
    }
    row = (await audit_rows(database))[-1]
    assert (row.action, row.target, row.after["tokens"]) == ("billing.pack_grant", "p1", 1_000_000)


@pytest.mark.parametrize(
    ("models", "tokens", "expires", "field"),
    [
        ([], 10, "2026-12-31", "models"),
        (["m"], 0, "2026-12-31", "tokens"),
        (["m"], 10, "2020-01-01", "expires_at"),
        (["m"], 10, "someday", "expires_at"),
    ],
)
async def test_grant_pack_refusals(
    admin: BillingAdmin,
    accounts: AccountsAdmin,
    database: AsyncEngine,
    models: list,
    tokens: int,
    expires: str,
    field: str,
) -> None:
    await create_org(accounts, "acme")
    with pytest.raises(InvalidRequest) as refused:
        grant = {"models": models, "tokens": tokens, "expires_at": expires}
        await admin.grant_pack("acme", NewPack.parse(grant))
    assert refused.value.param == field
    assert await admin.packs("acme") == []
    assert len(await audit_rows(database)) == 1


async def test_budgets_set_report_and_clear(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    org = await create_org(accounts, "acme")
    budget = await admin.set_budget("org:acme", "day", BudgetLimit.parse({"limit": "50"}))
    assert (budget.scope, budget.period.value, budget.limit) == (f"org:{org.id}", "day", 50_000_000)
    [reported] = (await admin.balance("acme")).budgets
    assert reported.as_json() == {
        "scope": f"org:{org.id}",
        "period": "day",
        "limit": "50.000000",
        "used": "0.000000",
    }
    await admin.clear_budget(f"org:{org.id}", "day")
    assert (await admin.balance("acme")).budgets == ()
    with pytest.raises(NotFound):
        await admin.clear_budget("org:acme", "day")  # nothing left to clear
    with pytest.raises(InvalidRequest) as refused:
        await admin.set_budget("org:acme", "week", BudgetLimit.parse({"limit": "1"}))
    assert refused.value.param == "period"
    with pytest.raises(InvalidRequest) as refused:
        await admin.set_budget("team:x", "day", BudgetLimit.parse({"limit": "1"}))
    assert refused.value.param == "scope"
    with pytest.raises(NotFound):
        await admin.set_budget("key:om_nobody", "month", BudgetLimit.parse({"limit": "1"}))
    rows = [r for r in await audit_rows(database) if r.action.startswith("billing.budget")]
    assert [(r.action, r.before, r.after) for r in rows] == [
        ("billing.budget_set", None, {"limit": "50.000000"}),
        ("billing.budget_clear", {"limit": "50.000000"}, None),
    ]


async def test_prices_set_list_and_audit(
    admin: BillingAdmin, database: AsyncEngine, changes: list[str]
) -> None:
    price = await set_price(
        admin, "glm-4", input="2", cached_input="0.4", output="8", currency="CNY"
    )
    assert (price.input_per_million, price.cached_input_per_million, price.output_per_million) == (
        2_000_000,
        400_000,
        8_000_000,
    )
    assert price.effective_from_ms == NOW_MS and changes == ["changed"]
    later = await set_price(
        admin,
        "glm-4",
        input="3",
        cached_input="0.5",
        output="9",
        reasoning="12",
        currency="USD",
        effective_from="2027-01-01",
    )
    assert [
        (p.model, p.currency.value, p.input_per_million) for p in await admin.list_prices()
    ] == [
        ("glm-4", "CNY", 2_000_000),
        ("glm-4", "USD", 3_000_000),
    ]
    assert later.reasoning_per_million == 12_000_000
    # Setting the same (model, currency, from) again replaces it; the audit keeps the old one.
    await set_price(
        admin, "glm-4", input="2.5", cached_input="0.4", output="8", effective_from=NOW_MS
    )
    row = (await audit_rows(database))[-1]
    assert (row.action, row.target) == ("price.set", "glm-4/CNY")
    assert (row.before["input"], row.after["input"]) == ("2.000000", "2.500000")
    with pytest.raises(InvalidRequest) as refused:
        await set_price(admin, "glm-4", input="-1", cached_input="0", output="0")
    assert refused.value.param == "input"
    with pytest.raises(InvalidRequest) as refused:
        await set_price(admin, "glm-4", input="1", cached_input="0", output=0.5)
    assert refused.value.param == "output"
    assert len(await audit_rows(database)) == 3


async def test_tiers_set_and_list(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    assert [t.name for t in await admin.list_tiers()] == ["V0", "V1", "V2", "V3"]  # seeded
    tier = await set_tier(
        admin,
        "Gold",
        rpm=100,
        tpm=None,
        concurrency=3,
        models={"glm-4": {"rpm": 10, "concurrency": 1}},
    )
    assert (tier.limits.rpm, tier.limits.tpm, tier.models["glm-4"].concurrency) == (100, None, 1)
    listed = {t.name: t for t in await admin.list_tiers()}
    assert listed["Gold"].models["glm-4"].rpm == 10
    await set_tier(admin, "Gold", rpm=200)
    row = (await audit_rows(database))[-1]
    assert (row.action, row.target, row.before["rpm"], row.after["rpm"]) == (
        "tier.set",
        "Gold",
        100,
        200,
    )
    await create_org(accounts, "acme", tier="Gold")  # a new tier can be given at once
    for bad, field in (({"rpm": -1}, "rpm"), ({"concurrency": "3"}, "concurrency")):
        with pytest.raises(InvalidRequest) as refused:
            await set_tier(admin, "Gold", **bad)
        assert refused.value.param == field
    with pytest.raises(InvalidRequest):
        await set_tier(admin, "has space")
    assert len(await audit_rows(database)) == 3


async def test_a_tiers_weight_is_set_listed_and_audited(
    admin: BillingAdmin, database: AsyncEngine
) -> None:
    assert {t.weight for t in await admin.list_tiers()} == {1}  # the seeded ones: 1
    tier = await set_tier(admin, "Gold", rpm=100, weight=3)
    assert tier.weight == 3
    assert {t.name: t for t in await admin.list_tiers()}["Gold"].weight == 3
    await set_tier(admin, "Gold", rpm=100)  # left out: 1
    row = (await audit_rows(database))[-1]
    assert (row.before["weight"], row.after["weight"]) == (3, 1)
    for bad in (0, -1, 1001, "2", True, 1.5):
        with pytest.raises(InvalidRequest) as refused:
            await set_tier(admin, "Gold", weight=bad)
        assert refused.value.param == "weight"


async def test_the_audit_log_cannot_be_updated_or_deleted(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    await create_org(accounts, "acme")
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with database.begin() as conn:
                await conn.execute(text(statement))
    [row] = await admin.audit_log()
    assert (row.actor, row.action) == ("cli:alice", "org.create")


async def spend(admin: BillingAdmin, org: str, worst_micros: int, used: int = 1000) -> str:
    """Run one request through the ledger: hold at 1 micro per token, settle ``used`` tokens."""
    org_id = (await admin.org(org)).id
    price = AppliedPrice(ModelPrice("m", 1_000_000, 1_000_000, 1_000_000))
    request_id = f"req-{worst_micros}-{used}"
    quote = price.worst_case(worst_micros - 3, 0)  # 3 micros of rounding slack on top
    await admin.ledger.execute(Hold(request_id, org_id, quote, NOW_MS, (f"org:{org_id}",)))
    await admin.ledger.execute(Settle(request_id, Usage(prompt_tokens=used)))
    return request_id


async def test_statement_csv_sums_equal_balance_changes(
    admin: BillingAdmin, accounts: AccountsAdmin
) -> None:
    await create_org(accounts, "acme")
    await admin.top_up("acme", funds("10", "t1"))
    await admin.grant_promo("acme", funds("0.0005", "g1"))
    request_id = await spend(admin, "acme", 5_000, used=1_200)  # 500 from promo, 700 from cash
    report = await admin.balance("acme")
    assert (report.cash, report.promo, report.held) == (10_000_000 - 700, 0, 0)

    lines = await admin.statement("acme")
    rows = list(csv.DictReader(io.StringIO(statement_csv(lines))))
    assert list(rows[0]) == ["time_utc", "request_id", "account", "counterparty", "amount", "unit"]
    assert rows[0]["time_utc"] == "2026-09-21T14:13:20.000Z" and rows[0]["unit"] == "CNY"

    def total(account_suffix: str) -> Decimal:
        return sum(
            (Decimal(r["amount"]) for r in rows if r["account"].endswith(account_suffix)),
            Decimal(0),
        )

    assert total(":cash") == Decimal(report.cash) / 1_000_000
    assert total(":promo") == 0 and total(":held") == 0
    assert {r["request_id"] for r in rows if r["request_id"]} == {request_id}
    charged = [r for r in rows if r["counterparty"].endswith(":revenue")]
    assert sum(Decimal(r["amount"]) for r in charged) == Decimal("-0.0012")

    # A window that ends before anything happened is empty; an empty window is refused.
    assert await admin.statement("acme", 0, NOW_MS) == []
    with pytest.raises(InvalidRequest) as refused:
        await admin.statement("acme", NOW_MS, NOW_MS)
    assert refused.value.param == "until"


async def test_usage_shows_what_was_charged_beside_what_upstreams_charged_us(
    admin: BillingAdmin, accounts: AccountsAdmin, database: AsyncEngine
) -> None:
    from openmaas.core.money import Currency, Money
    from openmaas.core.termination import Termination
    from openmaas.core.types import Usage
    from openmaas.core.usage import UsageRecord
    from openmaas.store.repositories import UsageRepository

    org = await create_org(accounts, "reseller", currency="USD")
    usage = UsageRepository(database)
    upstreams = [(120, Money(100, Currency.USD)), (60, Money(45, Currency.USD)),
                 (30, Money(200, Currency.CNY)), (10, None)]  # fmt: skip
    for n, (charged, upstream) in enumerate(upstreams):
        await usage.append(
            UsageRecord(
                f"r{n}", "k", org.id, "glm-cloud", "chat.completions", Usage(10, 0, 5),
                Termination.FINISHED, NOW_MS, 10, 20, cost=Money(charged, Currency.USD),
                deployment="zhipu", data_class="external", upstream_cost=upstream,
            )
        )  # fmt: skip
    [day] = await admin.usage("reseller")
    assert (day.requests, day.prompt_tokens, day.cost, day.upstream_costs) == (
        4,
        40,
        Money(220, Currency.USD),
        (Money(200, Currency.CNY), Money(145, Currency.USD)),  # never added together
    )

    # Across organizations (the CLI's usage without --org), money is summed per currency.
    other = await create_org(accounts, "yuan")
    await usage.append(
        UsageRecord(
            "r-cny", "k2", other.id, "glm-cloud", "chat.completions", Usage(1, 0, 1),
            Termination.FINISHED, NOW_MS, 10, 20, cost=Money(7, Currency.CNY),
        )
    )  # fmt: skip
    both = await usage.totals()
    assert [(t.requests, t.cost) for t in both] == [
        (1, Money(7, Currency.CNY)),
        (4, Money(220, Currency.USD)),
    ]
    for name, bad in [("since", "yesterday"), ("since", "20261201"), ("until", "2026-W48-2")]:
        with pytest.raises(InvalidRequest, match="YYYY-MM-DD") as info:
            await admin.usage("reseller", **{f"{name}_day": bad})
        assert info.value.param == name
