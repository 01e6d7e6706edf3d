"""``openmaas usage``, ``billing`` and ``prices``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from openmaas.accounts.admin import AccountsAdmin
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.admin_bodies import (
    BudgetLimit,
    NewFunds,
    NewPack,
    NewPrice,
)
from openmaas.billing.reports import format_amount, statement_csv
from openmaas.cli.common import (
    admin_body,
    day_option,
    money,
    print_table,
    with_accounts,
    with_billing,
)
from openmaas.cli.root import main
from openmaas.core.admin_fields import iso_ms, parse_time
from openmaas.core.money import format_micros


@main.command(help="Token usage totals per model and UTC day.")
@click.option("--org", default=None, help="Only this organization (id or name).")
@click.option("--since", default=None, callback=day_option, help="First day, YYYY-MM-DD.")
@click.option("--until", default=None, callback=day_option, help="Last day, YYYY-MM-DD.")
def usage(org: str | None, since: str | None, until: str | None) -> None:
    async def action(admin: AccountsAdmin) -> list:
        org_id = (await admin.orgs.find(org)).id if org else None
        return await admin.usage.totals(org_id, since, until)

    rows = [
        (
            t.day,
            t.model,
            str(t.requests),
            str(t.prompt_tokens),
            str(t.cached_tokens),
            str(t.completion_tokens),
            str(t.prompt_tokens + t.completion_tokens),
            "" if t.cost is None else money(t.cost.micros, t.cost.currency.value),
            "; ".join(money(m.micros, m.currency.value) for m in t.upstream_costs),
        )
        for t in with_accounts(action)
    ]
    headers = ("day", "model", "requests", "prompt", "cached", "completion", "total", "charged",
               "upstream cost")  # fmt: skip
    print_table(headers, rows)


# -- billing --------------------------------------------------------------------------


@main.group(help="Balances, top-ups, promotional credit, resource packs, budgets, statements.")
def billing() -> None:
    pass


@billing.command("topup", help="Add prepaid money, e.g. `billing topup acme 100.00`.")
@click.argument("org")
@click.argument("amount")
@click.option("--id", "topup_id", default=None, help="Idempotency id (a retry changes nothing).")
def billing_topup(org: str, amount: str, topup_id: str | None) -> None:
    funds = admin_body(NewFunds, amount=amount, id=topup_id)
    done = with_billing(lambda admin: admin.top_up(org, funds))
    report = done.balance
    verb = "Topped up" if done.applied else "Already applied:"
    click.echo(
        f"{verb} {done.funding_id}; cash {money(report.cash, report.currency.value)}, "
        f"available {money(report.available, report.currency.value)}"
    )


@billing.command("promo", help="Grant promotional credit (spent before cash).")
@click.argument("org")
@click.argument("amount")
@click.option("--id", "grant_id", default=None, help="Idempotency id.")
def billing_promo(org: str, amount: str, grant_id: str | None) -> None:
    funds = admin_body(NewFunds, amount=amount, id=grant_id)
    done = with_billing(lambda admin: admin.grant_promo(org, funds))
    report = done.balance
    verb = "Granted" if done.applied else "Already applied:"
    click.echo(f"{verb} {done.funding_id}; promo {money(report.promo, report.currency.value)}")


@billing.command("balance", help="An organization's balances, packs and budgets.")
@click.argument("org")
def billing_balance(org: str) -> None:
    report = with_billing(lambda admin: admin.balance(org))
    unit = report.currency.value
    rows = [
        ("organization", f"{report.org_id} ({report.name})"),
        ("cash", money(report.cash, unit)),
        ("available", money(report.available, unit)),
        ("promo", money(report.promo, unit)),
        ("held", money(report.held, unit)),
        ("leased", money(report.leased, unit)),
        ("credit limit", money(report.credit_limit, unit)),
    ]
    rows += [
        (
            f"pack {p.pack_id}",
            f"{p.remaining} tokens of {','.join(p.models)} until "
            f"{iso_ms(p.expires_at_ms)}{' (expired)' if p.expired else ''}",
        )
        for p in report.packs
    ]
    rows += [
        (f"budget {b.scope} {b.period.value}", f"{money(b.used, unit)} of {money(b.limit, unit)}")
        for b in report.budgets
    ]
    print_table(("item", "value"), rows)


@billing.group("packs", help="Resource packs: prepaid tokens for some models, until a time.")
def billing_packs() -> None:
    pass


@billing_packs.command("grant", help="Grant a resource pack.")
@click.argument("org")
@click.option("--model", "models", multiple=True, required=True, help="A model (repeatable).")
@click.option("--tokens", type=int, required=True, help="Tokens in the pack.")
@click.option("--expires", required=True, help="YYYY-MM-DD (midnight UTC) or an ISO time.")
@click.option("--id", "pack_id", default=None, help="Idempotency id.")
def billing_packs_grant(
    org: str, models: tuple[str, ...], tokens: int, expires: str, pack_id: str | None
) -> None:
    grant = admin_body(NewPack, models=list(models), tokens=tokens, expires_at=expires, id=pack_id)
    granted = with_billing(lambda admin: admin.grant_pack(org, grant))
    click.echo(
        f"{granted.pack_id}\t{granted.remaining} tokens\t{','.join(granted.models)}\t"
        f"until {iso_ms(granted.expires_at_ms)}"
    )


@billing_packs.command("list", help="An organization's resource packs.")
@click.argument("org")
def billing_packs_list(org: str) -> None:
    rows = [
        (
            p.pack_id,
            ",".join(p.models),
            str(p.remaining),
            iso_ms(p.expires_at_ms),
            "yes" if p.expired else "no",
        )
        for p in with_billing(lambda admin: admin.packs(org))
    ]
    print_table(("id", "models", "tokens left", "expires (UTC)", "expired"), rows)


@billing.group("budget", help="Spending caps per UTC day or month on a key or organization.")
def billing_budget() -> None:
    pass


def _period_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--month", "period", flag_value="month", help="Per UTC month.")(command)
    return click.option("--day", "period", flag_value="day", help="Per UTC day.")(command)


@billing_budget.command("set", help="Set a budget: SCOPE is org:<id or name> or key:<key id>.")
@click.argument("scope")
@click.argument("limit")
@_period_options
def billing_budget_set(scope: str, limit: str, period: str | None) -> None:
    if period is None:
        raise click.UsageError("Give --day or --month.")
    cap = admin_body(BudgetLimit, limit=limit)
    budget = with_billing(lambda admin: admin.set_budget(scope, period, cap))
    click.echo(f"{budget.scope}\t{budget.period.value}\t{format_micros(budget.limit)}")


@billing_budget.command("clear", help="Remove a budget.")
@click.argument("scope")
@_period_options
def billing_budget_clear(scope: str, period: str | None) -> None:
    if period is None:
        raise click.UsageError("Give --day or --month.")
    with_billing(lambda admin: admin.clear_budget(scope, period))
    click.echo(f"Cleared the {period} budget of {scope}.")


@billing.command("statement", help="Ledger lines of an organization in [--since, --until).")
@click.argument("org")
@click.option("--since", default=None, help="YYYY-MM-DD or ISO time (default: the beginning).")
@click.option("--until", default=None, help="YYYY-MM-DD or ISO time, exclusive (default: now).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per ledger line.")
def billing_statement(org: str, since: str | None, until: str | None, as_csv: bool) -> None:
    async def action(admin: BillingAdmin) -> list:
        since_ms = 0 if since is None else parse_time(since, "since")
        until_ms = None if until is None else parse_time(until, "until")
        return await admin.statement(org, since_ms, until_ms)

    lines = with_billing(action)
    if as_csv:
        click.echo(statement_csv(lines), nl=False)
        return
    rows = [
        (
            iso_ms(ln.at_ms),
            ln.request_id or "",
            ln.account,
            ln.counterparty,
            format_amount(ln.amount, ln.unit),
            ln.unit,
        )
        for ln in lines
    ]
    print_table(("time (UTC)", "request", "account", "counterparty", "amount", "unit"), rows)


# -- prices and tiers -----------------------------------------------------------------


@main.group(help="Model prices per 1M tokens.")
def prices() -> None:
    pass


@prices.command("set", help="Set a model's prices per 1M tokens, e.g. --input 2 --output 8.")
@click.argument("model")
@click.option("--input", "input_", required=True, help="Input tokens, per 1M.")
@click.option("--cached-input", required=True, help="Cached input tokens, per 1M.")
@click.option("--output", required=True, help="Output tokens, per 1M.")
@click.option("--reasoning", default=None, help="Reasoning tokens, per 1M (default: as output).")
@click.option("--currency", default="CNY", show_default=True, help="CNY or USD.")
@click.option("--from", "effective_from", default=None, help="Effective from (default: now).")
def prices_set(
    model: str,
    input_: str,
    cached_input: str,
    output: str,
    reasoning: str | None,
    currency: str,
    effective_from: str | None,
) -> None:
    new = admin_body(
        NewPrice,
        model=model,
        input=input_,
        cached_input=cached_input,
        output=output,
        reasoning=reasoning,
        currency=currency,
        effective_from=effective_from,
    )
    price = with_billing(lambda admin: admin.set_price(new))
    click.echo(f"{price.model}\t{price.currency.value}\tfrom {iso_ms(price.effective_from_ms)}")


@prices.command("list", help="Every price, past and future.")
def prices_list() -> None:
    rows = [
        (
            p.model,
            p.currency.value,
            iso_ms(p.effective_from_ms),
            format_micros(p.input_per_million),
            format_micros(p.cached_input_per_million),
            format_micros(p.output_per_million),
            "" if p.reasoning_per_million is None else format_micros(p.reasoning_per_million),
        )
        for p in with_billing(lambda admin: admin.list_prices())
    ]
    headers = (
        "model",
        "currency",
        "from (UTC)",
        "input/1M",
        "cached/1M",
        "output/1M",
        "reasoning/1M",
    )
    print_table(headers, rows)
