"""The ``openmaas`` command."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from openmaas.accounts.admin import AccountsAdmin, NewOrganization, Role
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.admin_bodies import (
    BudgetLimit,
    NewFunds,
    NewPack,
    NewPrice,
    TermsChange,
    TierLimits,
)
from openmaas.billing.reports import format_amount, statement_csv
from openmaas.catalog.admin import CatalogAdmin, CredentialValue, CurrentCatalog
from openmaas.catalog.document import CatalogRejected, document_version, parse_catalog
from openmaas.catalog.schema import BuildContext, CatalogDocument
from openmaas.catalog.served import settings_model_names
from openmaas.core.admin_fields import AdminBody, iso_ms, parse_time
from openmaas.core.errors import InvalidRequest, OpenMaaSError, SetupError
from openmaas.core.money import format_micros
from openmaas.core.validation import checked_day
from openmaas.platform import Platform, open_platform
from openmaas.settings import Settings

T = TypeVar("T")
B = TypeVar("B", bound=AdminBody)
console = Console()


def _platform(action: Callable[[Platform], Awaitable[T]]) -> T:
    """Run ``action`` on the data directory's platform (the composition root); our errors
    become a message on stderr and exit status 1."""

    async def go() -> T:
        async with open_platform(Settings()) as platform:
            return await action(platform)

    try:
        return asyncio.run(go())
    except CatalogRejected as exc:
        for issue in exc.issues:
            click.echo(issue.render(exc.source), err=True)
        raise SystemExit(1) from None
    except OpenMaaSError as exc:
        raise click.ClickException(exc.message) from None


def _accounts(action: Callable[[AccountsAdmin], Awaitable[T]]) -> T:
    """Run an organization or key operation, audited as ``cli:<unix user>``."""
    return _platform(lambda platform: action(platform.accounts_admin(_cli_actor())))


def _billing(action: Callable[[BillingAdmin], Awaitable[T]]) -> T:
    """Run a billing operation, audited as ``cli:<unix user>``."""
    return _platform(lambda platform: action(platform.billing_admin(_cli_actor())))


def _catalog(action: Callable[[CatalogAdmin], Awaitable[T]]) -> T:
    """Run a catalog operation, audited as ``cli:<unix user>``."""
    return _platform(lambda platform: action(platform.catalog_admin(_cli_actor())))


def _body(body: type[B], given: dict[str, Any] | None = None, /, **options: Any) -> B:
    """The options as the ``body`` the admin API would take (validated the same way): those
    in ``given`` as they are, the others left out when not given (None)."""
    fields = {k: v for k, v in options.items() if v is not None} | (given or {})
    try:
        return body.parse(fields)
    except OpenMaaSError as exc:
        raise click.ClickException(exc.message) from None


def _cli_actor() -> str:
    """Who the audit log names for a CLI change: ``cli:<unix user>``."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "cli:unknown"


def _money(micros: int, currency: str) -> str:
    return f"{format_micros(micros)} {currency}"


def _print_table(
    headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], out: Console | None = None
) -> None:
    """A table on a terminal; tab-separated lines, whole and script-friendly, otherwise.
    On a narrow terminal identifiers (ids, requests) keep their whole width, so they can
    be copied; the other columns wrap, never cut."""
    out = out or console
    if out.is_terminal:
        table = Table()
        for index, header in enumerate(headers):
            if _is_identifier(header):
                widest = max((len(row[index]) for row in rows), default=0)
                table.add_column(header, no_wrap=True, min_width=max(widest, len(header)))
            else:
                table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    for line in (headers, *rows):
        click.echo("\t".join(line))


def _is_identifier(header: str) -> bool:
    return header in {"id", "org", "request", "key", "target"} or header.endswith(" id")


def _ms_to_iso(ms: int | None) -> str:
    if ms is None:
        return ""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group(help="OpenMaaS: an open-source Model-as-a-Service platform.")
@click.version_option(package_name="openmaas")
def main() -> None:
    pass


@main.command(help="Start the API server (settings from OPENMAAS_* variables).")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default 1); more also start one engine host for the local models.",
)
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    from openmaas.server.runner import serve as run_server

    overrides: dict[str, Any] = {"host": host, "port": port, "workers": workers}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise click.ClickException(_bad_settings(exc)) from None
    try:
        run_server(settings)
    except SetupError as exc:  # one line for people: no traceback, exit status 1
        raise click.ClickException(exc.message) from None


def _bad_settings(exc: ValidationError) -> str:
    """``OPENMAAS_PORT='x': Input should be a valid integer``, one line for every problem."""
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper()
        given = "" if error.get("type") == "missing" else f"={error.get('input')!r}"
        problems.append(f"OPENMAAS_{name}{given}: {error['msg']}")
    return "bad setting: " + "; ".join(problems)


@main.group(help="Organizations.")
def orgs() -> None:
    pass


@orgs.command("create", help="Create an organization.")
@click.argument("name")
@click.option("--currency", default="CNY", show_default=True, help="CNY or USD.")
@click.option("--tier", default=None, help="Rate-limit tier (see `openmaas tiers list`).")
@click.option("--credit-limit", default=None, help="How far below zero cash may go, e.g. 100.")
def orgs_create(name: str, currency: str, tier: str | None, credit_limit: str | None) -> None:
    new = _body(NewOrganization, name=name, currency=currency, tier=tier, credit_limit=credit_limit)
    org = _accounts(lambda admin: admin.create_org(new))
    click.echo(f"{org.id}\t{org.name}")


@orgs.command("list", help="List organizations.")
def orgs_list() -> None:
    rows = [
        (
            org.id,
            org.name,
            org.currency,
            org.tier or "",
            str(org.discount_bp),
            _ms_to_iso(org.created_at_ms),
        )
        for org in _accounts(lambda admin: admin.orgs.list())
    ]
    _print_table(("id", "name", "currency", "tier", "discount (bp)", "created (UTC)"), rows)


@orgs.command("set", help="Change an organization's tier, discount, credit limit or data policy.")
@click.argument("org")
@click.option("--tier", default=None, help="Rate-limit tier.")
@click.option("--no-tier", is_flag=True, help="Remove the tier (no rate limits).")
@click.option("--discount-bp", type=int, default=None, help="Discount, basis points (2500=25%).")
@click.option("--credit-limit", default=None, help="How far below zero cash may go, e.g. 100.")
@click.option(
    "--data-policy",
    type=click.Choice(["local_only", "burst"]),
    default=None,
    help="local_only: never an external deployment; burst: external when local is full.",
)
def orgs_set(
    org: str,
    tier: str | None,
    no_tier: bool,
    discount_bp: int | None,
    credit_limit: str | None,
    data_policy: str | None,
) -> None:
    if tier is not None and no_tier:
        raise click.UsageError("Give --tier or --no-tier, not both.")
    change = _body(
        TermsChange,
        {"tier": None} if no_tier else None,  # a tier left out stays as it is
        tier=tier,
        discount_bp=discount_bp,
        credit_limit=credit_limit,
        data_policy=data_policy,
    )
    changed = _billing(lambda admin: admin.set_org(org, change))
    click.echo(
        f"{changed.id}\t{changed.name}\ttier={changed.tier or '-'}\t"
        f"discount_bp={changed.discount_bp}\tdata_policy={changed.data_policy}"
    )


@main.group(help="API keys.")
def keys() -> None:
    pass


@keys.command("create", help="Create a key; its secret is printed once.")
@click.option("--org", required=True, help="Organization id or name.")
@click.option("--name", required=True, help="A name for the key.")
@click.option("--admin", "is_admin", is_flag=True, help="Give the key the admin role.")
def keys_create(org: str, name: str, is_admin: bool) -> None:
    role: Role = "admin" if is_admin else "member"
    issued = _accounts(lambda admin: admin.issue_key(org, name, role))
    click.echo(issued.token)
    click.echo(f"Key {issued.key.id} created; store it now, it will not be shown again.", err=True)


@keys.command("list", help="List keys (never their secrets).")
@click.option("--org", default=None, help="Only this organization (id or name).")
def keys_list(org: str | None) -> None:
    async def action(admin: AccountsAdmin) -> list:
        org_id = (await admin.orgs.find(org)).id if org else None
        return await admin.keys.list(org_id)

    rows = [
        (k.id, k.org_id, k.name, k.role, _ms_to_iso(k.created_at_ms), _ms_to_iso(k.revoked_at_ms))
        for k in _accounts(action)
    ]
    _print_table(("id", "org", "name", "role", "created (UTC)", "revoked (UTC)"), rows)


@keys.command("revoke", help="Revoke a key; every server refuses it within a second.")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    _accounts(lambda admin: admin.revoke_key(key_id.partition(".")[0]))
    click.echo(f"Key {key_id.partition('.')[0]} revoked.")


@keys.command("set-tier", help="Give a key its own tier, narrowing its organization's.")
@click.argument("key_id")
@click.option("--tier", default=None, help="Rate-limit tier.")
@click.option("--no-tier", is_flag=True, help="Remove the key's own tier.")
def keys_set_tier(key_id: str, tier: str | None, no_tier: bool) -> None:
    if (tier is None) == (not no_tier):
        raise click.UsageError("Give exactly one of --tier or --no-tier.")
    key = key_id.partition(".")[0]
    _billing(lambda admin: admin.set_key_tier(key, tier))
    shown = tier or "none (the organization's tier applies)"
    click.echo(f"Key {key}: tier {shown}.")


def _day(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``YYYY-MM-DD`` option, checked as ``/v1/usage`` checks its dates."""
    if value is None:
        return None
    try:
        return checked_day(value, f"--{param.name}")
    except InvalidRequest:
        raise click.BadParameter(f"must be a date as YYYY-MM-DD, not {value!r}.") from None


@main.command(help="Token usage totals per model and UTC day.")
@click.option("--org", default=None, help="Only this organization (id or name).")
@click.option("--since", default=None, callback=_day, help="First day, YYYY-MM-DD.")
@click.option("--until", default=None, callback=_day, help="Last day, YYYY-MM-DD.")
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
            "" if t.cost is None else _money(t.cost.micros, t.cost.currency.value),
            ""
            if t.upstream_cost is None
            else _money(t.upstream_cost.micros, t.upstream_cost.currency.value),
        )
        for t in _accounts(action)
    ]
    headers = ("day", "model", "requests", "prompt", "cached", "completion", "total", "charged",
               "upstream cost")  # fmt: skip
    _print_table(headers, rows)


# -- billing --------------------------------------------------------------------------


@main.group(help="Balances, top-ups, promotional credit, resource packs, budgets, statements.")
def billing() -> None:
    pass


@billing.command("topup", help="Add prepaid money, e.g. `billing topup acme 100.00`.")
@click.argument("org")
@click.argument("amount")
@click.option("--id", "topup_id", default=None, help="Idempotency id (a retry changes nothing).")
def billing_topup(org: str, amount: str, topup_id: str | None) -> None:
    funds = _body(NewFunds, amount=amount, id=topup_id)
    done = _billing(lambda admin: admin.top_up(org, funds))
    report = done.balance
    verb = "Topped up" if done.applied else "Already applied:"
    click.echo(
        f"{verb} {done.funding_id}; cash {_money(report.cash, report.currency.value)}, "
        f"available {_money(report.available, report.currency.value)}"
    )


@billing.command("promo", help="Grant promotional credit (spent before cash).")
@click.argument("org")
@click.argument("amount")
@click.option("--id", "grant_id", default=None, help="Idempotency id.")
def billing_promo(org: str, amount: str, grant_id: str | None) -> None:
    funds = _body(NewFunds, amount=amount, id=grant_id)
    done = _billing(lambda admin: admin.grant_promo(org, funds))
    report = done.balance
    verb = "Granted" if done.applied else "Already applied:"
    click.echo(f"{verb} {done.funding_id}; promo {_money(report.promo, report.currency.value)}")


@billing.command("balance", help="An organization's balances, packs and budgets.")
@click.argument("org")
def billing_balance(org: str) -> None:
    report = _billing(lambda admin: admin.balance(org))
    unit = report.currency.value
    rows = [
        ("organization", f"{report.org_id} ({report.name})"),
        ("cash", _money(report.cash, unit)),
        ("available", _money(report.available, unit)),
        ("promo", _money(report.promo, unit)),
        ("held", _money(report.held, unit)),
        ("leased", _money(report.leased, unit)),
        ("credit limit", _money(report.credit_limit, unit)),
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
        (f"budget {b.scope} {b.period.value}", f"{_money(b.used, unit)} of {_money(b.limit, unit)}")
        for b in report.budgets
    ]
    _print_table(("item", "value"), rows)


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
    grant = _body(NewPack, models=list(models), tokens=tokens, expires_at=expires, id=pack_id)
    granted = _billing(lambda admin: admin.grant_pack(org, grant))
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
        for p in _billing(lambda admin: admin.packs(org))
    ]
    _print_table(("id", "models", "tokens left", "expires (UTC)", "expired"), rows)


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
    cap = _body(BudgetLimit, limit=limit)
    budget = _billing(lambda admin: admin.set_budget(scope, period, cap))
    click.echo(f"{budget.scope}\t{budget.period.value}\t{format_micros(budget.limit)}")


@billing_budget.command("clear", help="Remove a budget.")
@click.argument("scope")
@_period_options
def billing_budget_clear(scope: str, period: str | None) -> None:
    if period is None:
        raise click.UsageError("Give --day or --month.")
    _billing(lambda admin: admin.clear_budget(scope, period))
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

    lines = _billing(action)
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
    _print_table(("time (UTC)", "request", "account", "counterparty", "amount", "unit"), rows)


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
    new = _body(
        NewPrice,
        model=model,
        input=input_,
        cached_input=cached_input,
        output=output,
        reasoning=reasoning,
        currency=currency,
        effective_from=effective_from,
    )
    price = _billing(lambda admin: admin.set_price(new))
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
        for p in _billing(lambda admin: admin.list_prices())
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
    _print_table(headers, rows)


@main.group(help="Rate-limit tiers.")
def tiers() -> None:
    pass


def _cap(value: int | None) -> str:
    return "-" if value is None else str(value)


@tiers.command("list", help="Every tier, its limits ('-': unlimited) and its weight.")
def tiers_list() -> None:
    rows = []
    for tier in _billing(lambda admin: admin.list_tiers()):
        limits, weight = tier.limits, str(tier.weight)
        caps = (_cap(limits.rpm), _cap(limits.tpm), _cap(limits.concurrency))
        rows.append((tier.name, "*", *caps, weight))
        for model, lim in sorted(tier.models.items()):
            rows.append((tier.name, model, _cap(lim.rpm), _cap(lim.tpm), _cap(lim.concurrency), ""))
    _print_table(("tier", "model", "rpm", "tpm", "concurrency", "weight"), rows)


def _model_caps(spec: str) -> tuple[str, dict[str, int | None]]:
    parts = spec.rsplit(":", 3)
    if len(parts) != 4 or not parts[0]:
        raise click.BadParameter(f"{spec!r} is not MODEL:RPM:TPM:CONCURRENCY", param_hint="--model")
    caps: dict[str, int | None] = {}
    for dim, text in zip(("rpm", "tpm", "concurrency"), parts[1:], strict=True):
        if text in ("", "-"):
            caps[dim] = None
        elif text.isdigit():
            caps[dim] = int(text)
        else:
            raise click.BadParameter(f"{dim} {text!r} is not a number or '-'", param_hint="--model")
    return parts[0], caps


@tiers.command("set", help="Define or replace a tier; a limit left out is unlimited.")
@click.argument("name")
@click.option("--rpm", type=int, default=None, help="Requests per minute.")
@click.option("--tpm", type=int, default=None, help="Tokens per minute.")
@click.option("--concurrency", type=int, default=None, help="Requests in flight.")
@click.option("--model", "models", multiple=True, help="MODEL:RPM:TPM:CONC ('-': unlimited).")
@click.option(
    "--weight",
    type=int,
    default=1,
    show_default=True,
    help="Share of a busy engine's slots against other organizations' (docs/limits.md).",
)
def tiers_set(
    name: str,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    models: tuple[str, ...],
    weight: int,
) -> None:
    per_model = dict(_model_caps(spec) for spec in models)
    limits = _body(
        TierLimits,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        models=per_model or None,
        weight=weight,
    )
    tier = _billing(lambda admin: admin.set_tier(name, limits))
    click.echo(
        f"{tier.name}\trpm={_cap(tier.limits.rpm)}\ttpm={_cap(tier.limits.tpm)}\t"
        f"concurrency={_cap(tier.limits.concurrency)}\tweight={tier.weight}"
    )


@main.command(help="The audit log of administrative changes (billing, catalog, credentials).")
@click.option("--limit", type=int, default=50, show_default=True, help="How many entries.")
def audit(limit: int) -> None:
    import json

    rows = [
        (
            iso_ms(e.at_ms),
            e.actor,
            e.action,
            e.target,
            json.dumps(e.before, sort_keys=True),
            json.dumps(e.after, sort_keys=True),
        )
        for e in _billing(lambda admin: admin.audit_log(limit))
    ]
    _print_table(("time (UTC)", "actor", "action", "target", "before", "after"), rows)


# -- catalog, models, deployments, credentials ----------------------------------------


def _read_catalog(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read it ({exc}).") from None


def _current_document() -> tuple[CurrentCatalog, CatalogDocument | None]:
    async def action(admin: CatalogAdmin) -> tuple[CurrentCatalog, CatalogDocument | None]:
        current = await admin.current()
        if not current.document:
            return current, None
        return current, parse_catalog(current.document, current.path or "catalog")

    return _catalog(action)


@main.group(help="The catalog document: models and their deployments (docs/catalog.md).")
def catalog() -> None:
    pass


@catalog.command("check", help="Check a catalog file; print each problem with its line.")
@click.argument("file", type=click.Path(dir_okay=False))
def catalog_check(file: str) -> None:
    text = _read_catalog(file)
    settings = Settings()
    try:
        document = parse_catalog(
            text,
            file,
            reserved=settings_model_names(settings),
            ctx=BuildContext(credential_names=None, check_paths=True),
        )
    except CatalogRejected as exc:
        for issue in exc.issues:
            click.echo(issue.render(exc.source), err=True)
        raise SystemExit(1) from None
    deployments = sum(len(m.deployments) for m in document.models)
    click.echo(
        f"{file}: valid, {len(document.models)} models, {deployments} deployments, "
        f"version {document_version(text)[:12]}"
    )


@catalog.command("apply", help="Store a catalog file as the catalog; the server applies it.")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Apply a file that declares no models (it removes every catalog model).",
)
def catalog_apply(file: str, allow_empty: bool) -> None:
    text = _read_catalog(file)
    version = _catalog(lambda admin: admin.apply(text, file, allow_empty=allow_empty))
    click.echo(f"Catalog version {version} stored; a running server applies it within seconds.")


@catalog.command("show", help="Print the catalog document in force.")
def catalog_show() -> None:
    current = _catalog(lambda admin: admin.current())
    where = current.path or "the database"
    click.echo(f"# source: {where}; version: {current.version or 'none'}", err=True)
    if current.document:
        click.echo(current.document, nl=not current.document.endswith("\n"))


def _settings_models(settings: Settings) -> list[tuple[str, str]]:
    """(name, kind) of the models the settings serve: the built-in catalog document's."""
    from openmaas.catalog.builtin import settings_document

    return [(model.name, model.kind) for model in settings_document(settings).models]


@main.group(help="Served models (the settings' and the catalog's).")
def models() -> None:
    pass


@models.command("list", help="Every model: kind, deployments, data classes, aliases.")
def models_list() -> None:
    settings = Settings()
    _, document = _current_document()
    rows: list[tuple[str, ...]] = [
        (name, kind, "settings", name, "local", "") for name, kind in _settings_models(settings)
    ]
    for m in document.models if document else []:
        classes = sorted({d.data_class for d in m.deployments})
        rows.append(
            (
                m.name,
                m.kind,
                "catalog",
                ",".join(d.id for d in m.deployments),
                ",".join(classes),
                ",".join(m.aliases),
            )
        )
    _print_table(("model", "kind", "source", "deployments", "data classes", "aliases"), rows)


@main.group(help="Deployments of the catalog's models.")
def deployments() -> None:
    pass


@deployments.command("list", help="Every deployment of the catalog document.")
def deployments_list() -> None:
    _, document = _current_document()
    rows: list[tuple[str, ...]] = []
    for m in document.models if document else []:
        for d in m.deployments:
            target = getattr(d, "base_url", None) or str(getattr(d, "path", "") or "")
            rows.append(
                (
                    m.name,
                    d.id,
                    d.engine,
                    d.data_class,
                    str(d.weight),
                    str(d.priority),
                    _cap(d.max_concurrency),
                    target,
                )
            )
    headers = ("model", "id", "engine", "data class", "weight", "priority", "max conc.", "target")
    _print_table(headers, rows)


@main.group(help="Upstream credentials (API keys of cloud upstreams), sealed at rest.")
def credentials() -> None:
    pass


@credentials.command("set", help="Set NAME; the value is read from stdin or a hidden prompt.")
@click.argument("name")
def credentials_set(name: str) -> None:
    if sys.stdin.isatty():
        value = click.prompt(f"Value of {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.read().rstrip("\r\n")
    credential = _body(CredentialValue, value=value)
    created = _catalog(lambda admin: admin.set_credential(name, credential))
    click.echo(f"Credential {name} {'created' if created else 'replaced'}.")


@credentials.command("list", help="Credential names and dates (never their values).")
def credentials_list() -> None:
    rows: list[tuple[str, ...]] = [
        (c.name, iso_ms(c.created_at_ms), iso_ms(c.updated_at_ms))
        for c in _catalog(lambda admin: admin.list_credentials())
    ]
    _print_table(("name", "created (UTC)", "updated (UTC)"), rows)


@credentials.command("delete", help="Delete a credential the catalog no longer uses.")
@click.argument("name")
def credentials_delete(name: str) -> None:
    _catalog(lambda admin: admin.delete_credential(name))
    click.echo(f"Credential {name} deleted.")
