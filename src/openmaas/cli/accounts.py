"""``openmaas orgs``, ``keys``, ``tiers`` and ``audit``: organizations, their keys and limits."""

from __future__ import annotations

import re
import time

import click

from openmaas.accounts.admin import AccountsAdmin, NewApiKey, NewOrganization, Role
from openmaas.accounts.suspensions import NewSuspension
from openmaas.billing.admin_bodies import (
    TermsChange,
    TierLimits,
)
from openmaas.cli.common import (
    admin_body,
    cap,
    cli_actor,
    ms_to_iso,
    print_table,
    run_platform,
    with_accounts,
    with_billing,
)
from openmaas.cli.root import main
from openmaas.core.admin_fields import iso_ms


@main.group(help="Organizations.")
def orgs() -> None:
    pass


@orgs.command("create", help="Create an organization.")
@click.argument("name")
@click.option("--currency", default="CNY", show_default=True, help="CNY or USD.")
@click.option("--tier", default=None, help="Rate-limit tier (see `openmaas tiers list`).")
@click.option("--credit-limit", default=None, help="How far below zero cash may go, e.g. 100.")
def orgs_create(name: str, currency: str, tier: str | None, credit_limit: str | None) -> None:
    new = admin_body(
        NewOrganization, name=name, currency=currency, tier=tier, credit_limit=credit_limit
    )
    org = with_accounts(lambda admin: admin.create_org(new))
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
            ms_to_iso(org.created_at_ms),
        )
        for org in with_accounts(lambda admin: admin.orgs.list())
    ]
    print_table(("id", "name", "currency", "tier", "discount (bp)", "created (UTC)"), rows)


@orgs.command(
    "set",
    help="Change an organization's tier, discount, credit limit, data policy or prompt logging.",
)
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
@click.option(
    "--prompt-logging",
    type=click.Choice(["on", "off"]),
    default=None,
    help="on: log the organization's prompts and answers (docs/metrics.md); off by default.",
)
def orgs_set(
    org: str,
    tier: str | None,
    no_tier: bool,
    discount_bp: int | None,
    credit_limit: str | None,
    data_policy: str | None,
    prompt_logging: str | None,
) -> None:
    if tier is not None and no_tier:
        raise click.UsageError("Give --tier or --no-tier, not both.")
    change = admin_body(
        TermsChange,
        {"tier": None} if no_tier else None,  # a tier left out stays as it is
        tier=tier,
        discount_bp=discount_bp,
        credit_limit=credit_limit,
        data_policy=data_policy,
        prompt_logging=None if prompt_logging is None else prompt_logging == "on",
    )
    changed = with_billing(lambda admin: admin.set_org(org, change))
    click.echo(
        f"{changed.id}\t{changed.name}\ttier={changed.tier or '-'}\t"
        f"discount_bp={changed.discount_bp}\tdata_policy={changed.data_policy}\t"
        f"prompt_logging={'on' if changed.prompt_logging else 'off'}"
    )


@orgs.command("suspend", help="Suspend an organization: its member keys are refused (403).")
@click.argument("org")
@click.option("--reason", default=None, help="Why (kept in the audit log).")
def orgs_suspend(org: str, reason: str | None) -> None:
    body = admin_body(NewSuspension, reason=reason)
    run_platform(lambda platform: platform.suspensions(cli_actor()).suspend(org, body.reason))
    click.echo(f"{org}\tsuspended")


@orgs.command("resume", help="Resume a suspended organization.")
@click.argument("org")
def orgs_resume(org: str) -> None:
    run_platform(lambda platform: platform.suspensions(cli_actor()).resume(org))
    click.echo(f"{org}\tresumed")


@main.group(help="API keys.")
def keys() -> None:
    pass


@keys.command("create", help="Create a key; its secret is printed once.")
@click.option("--org", required=True, help="Organization id or name.")
@click.option("--name", required=True, help="A name for the key.")
@click.option("--admin", "is_admin", is_flag=True, help="Give the key the admin role.")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Restrict the key to this model (repeat for several); without it: every model.",
)
@click.option(
    "--expires",
    default=None,
    help="When the key stops working: a date (midnight UTC), an ISO 8601 time, or a "
    "duration from now (90m, 12h, 30d).",
)
def keys_create(
    org: str, name: str, is_admin: bool, models: tuple[str, ...], expires: str | None
) -> None:
    role: Role = "admin" if is_admin else "member"
    restriction = admin_body(
        NewApiKey, name=name, role=role, models=list(models) or None, expires_at=expires_at(expires)
    )
    issued = with_accounts(
        lambda admin: admin.issue_key(
            org,
            restriction.name,
            restriction.role,
            models=restriction.models,
            expires_at_ms=restriction.expires_at,
        )
    )
    click.echo(issued.token)
    click.echo(f"Key {issued.key.id} created; store it now, it will not be shown again.", err=True)


_DURATION = re.compile(r"(\d{1,6})([mhd])")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


def expires_at(text: str | None) -> str | int | None:
    """``--expires`` as ``NewApiKey.expires_at`` takes it: a duration (``30d``) becomes
    epoch milliseconds from now; a date or time is passed on to be checked there."""
    if text is None:
        return None
    duration = _DURATION.fullmatch(text.strip())
    if duration is None:
        return text
    return int(time.time() * 1000) + int(duration[1]) * _UNIT_MS[duration[2]]


@keys.command("list", help="List keys (never their secrets).")
@click.option("--org", default=None, help="Only this organization (id or name).")
def keys_list(org: str | None) -> None:
    async def action(admin: AccountsAdmin) -> list:
        org_id = (await admin.orgs.find(org)).id if org else None
        return await admin.keys.list(org_id)

    rows = [
        (
            k.id,
            k.org_id,
            k.name,
            k.role,
            ",".join(sorted(k.models)) if k.models is not None else "",
            ms_to_iso(k.created_at_ms),
            ms_to_iso(k.expires_at_ms),
            ms_to_iso(k.revoked_at_ms),
        )
        for k in with_accounts(action)
    ]
    print_table(
        (
            "id",
            "org",
            "name",
            "role",
            "models",
            "created (UTC)",
            "expires (UTC)",
            "revoked (UTC)",
        ),
        rows,
    )


@keys.command("revoke", help="Revoke a key; every server refuses it within a second.")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    with_accounts(lambda admin: admin.revoke_key(key_id.partition(".")[0]))
    click.echo(f"Key {key_id.partition('.')[0]} revoked.")


@keys.command("set-tier", help="Give a key its own tier, narrowing its organization's.")
@click.argument("key_id")
@click.option("--tier", default=None, help="Rate-limit tier.")
@click.option("--no-tier", is_flag=True, help="Remove the key's own tier.")
def keys_set_tier(key_id: str, tier: str | None, no_tier: bool) -> None:
    if (tier is None) == (not no_tier):
        raise click.UsageError("Give exactly one of --tier or --no-tier.")
    key = key_id.partition(".")[0]
    with_billing(lambda admin: admin.set_key_tier(key, tier))
    shown = tier or "none (the organization's tier applies)"
    click.echo(f"Key {key}: tier {shown}.")


@main.group(help="Rate-limit tiers.")
def tiers() -> None:
    pass


@tiers.command("list", help="Every tier, its limits ('-': unlimited) and its weight.")
def tiers_list() -> None:
    rows = []
    for tier in with_billing(lambda admin: admin.list_tiers()):
        limits, weight = tier.limits, str(tier.weight)
        caps = (cap(limits.rpm), cap(limits.tpm), cap(limits.concurrency))
        rows.append((tier.name, "*", *caps, weight))
        for model, lim in sorted(tier.models.items()):
            rows.append((tier.name, model, cap(lim.rpm), cap(lim.tpm), cap(lim.concurrency), ""))
    print_table(("tier", "model", "rpm", "tpm", "concurrency", "weight"), rows)


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
    limits = admin_body(
        TierLimits,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        models=per_model or None,
        weight=weight,
    )
    tier = with_billing(lambda admin: admin.set_tier(name, limits))
    click.echo(
        f"{tier.name}\trpm={cap(tier.limits.rpm)}\ttpm={cap(tier.limits.tpm)}\t"
        f"concurrency={cap(tier.limits.concurrency)}\tweight={tier.weight}"
    )


@main.command(help="The audit log of administrative changes (billing, catalog, credentials).")
@click.option("--limit", type=int, default=50, show_default=True, help="How many entries.")
@click.option("--action", default="", help="Only actions that start with this (e.g. key.).")
@click.option("--actor", default="", help="Only actors that contain this (e.g. a user id).")
def audit(limit: int, action: str, actor: str) -> None:
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
        for e in with_billing(lambda admin: admin.audit_log(limit, action, actor))
    ]
    print_table(("time (UTC)", "actor", "action", "target", "before", "after"), rows)


# -- catalog, models, deployments, credentials ----------------------------------------
