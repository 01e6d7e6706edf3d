"""The ``openmaas`` command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from rich.console import Console
from rich.table import Table

from openmaas.core.errors import OpenMaaSError
from openmaas.services.admin import Admin, open_admin
from openmaas.settings import Settings

T = TypeVar("T")
console = Console()


def _run(action: Callable[[Admin], Awaitable[T]]) -> T:
    async def go() -> T:
        async with open_admin(Settings()) as admin:
            return await action(admin)

    try:
        return asyncio.run(go())
    except OpenMaaSError as exc:
        raise click.ClickException(exc.message) from None


def _print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table on a terminal; tab-separated lines, whole and script-friendly, otherwise."""
    if console.is_terminal:
        table = Table(*headers)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    for line in (headers, *rows):
        click.echo("\t".join(line))


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
def serve(host: str | None, port: int | None) -> None:
    from openmaas.server.runner import serve as run_server

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    run_server(Settings(**overrides))


@main.group(help="Organizations.")
def orgs() -> None:
    pass


@orgs.command("create", help="Create an organization.")
@click.argument("name")
def orgs_create(name: str) -> None:
    org = _run(lambda admin: admin.create_org(name))
    click.echo(f"{org.id}\t{org.name}")


@orgs.command("list", help="List organizations.")
def orgs_list() -> None:
    rows = [
        (org.id, org.name, _ms_to_iso(org.created_at_ms))
        for org in _run(lambda admin: admin.orgs.list())
    ]
    _print_table(("id", "name", "created (UTC)"), rows)


@main.group(help="API keys.")
def keys() -> None:
    pass


@keys.command("create", help="Create a key; its secret is printed once.")
@click.option("--org", required=True, help="Organization id or name.")
@click.option("--name", required=True, help="A name for the key.")
@click.option("--admin", "is_admin", is_flag=True, help="Give the key the admin role.")
def keys_create(org: str, name: str, is_admin: bool) -> None:
    role = "admin" if is_admin else "member"
    issued = _run(lambda admin: admin.issue_key(org, name, role))
    click.echo(issued.token)
    click.echo(f"Key {issued.key.id} created; store it now, it will not be shown again.", err=True)


@keys.command("list", help="List keys (never their secrets).")
@click.option("--org", default=None, help="Only this organization (id or name).")
def keys_list(org: str | None) -> None:
    async def action(admin: Admin) -> list:
        org_id = (await admin.orgs.find(org)).id if org else None
        return await admin.keys.list(org_id)

    rows = [
        (k.id, k.org_id, k.name, k.role, _ms_to_iso(k.created_at_ms), _ms_to_iso(k.revoked_at_ms))
        for k in _run(action)
    ]
    _print_table(("id", "org", "name", "role", "created (UTC)", "revoked (UTC)"), rows)


@keys.command("revoke", help="Revoke a key; it fails on its very next request.")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    _run(lambda admin: admin.revoke_key(key_id.partition(".")[0]))
    click.echo(f"Key {key_id.partition('.')[0]} revoked.")


@main.command(help="Token usage totals per model and UTC day.")
@click.option("--org", default=None, help="Only this organization (id or name).")
@click.option("--since", default=None, help="First day, YYYY-MM-DD.")
@click.option("--until", default=None, help="Last day, YYYY-MM-DD.")
def usage(org: str | None, since: str | None, until: str | None) -> None:
    async def action(admin: Admin) -> list:
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
        )
        for t in _run(action)
    ]
    _print_table(("day", "model", "requests", "prompt", "cached", "completion", "total"), rows)
