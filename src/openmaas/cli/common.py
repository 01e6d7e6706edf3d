"""What every command group of the CLI shares: running an action on the data directory's
platform, admin bodies, money and tables."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from openmaas.accounts.admin import AccountsAdmin
from openmaas.billing.admin import BillingAdmin
from openmaas.catalog.admin import CatalogAdmin
from openmaas.catalog.document import CatalogRejected
from openmaas.core.admin_fields import AdminBody
from openmaas.core.errors import InvalidRequest, OpenMaaSError
from openmaas.core.money import format_micros
from openmaas.core.validation import checked_day
from openmaas.platform import Platform, open_platform
from openmaas.settings import Settings

T = TypeVar("T")
B = TypeVar("B", bound=AdminBody)
console = Console()


def run_platform(action: Callable[[Platform], Awaitable[T]]) -> T:
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


def with_accounts(action: Callable[[AccountsAdmin], Awaitable[T]]) -> T:
    """Run an organization or key operation, audited as ``cli:<unix user>``."""
    return run_platform(lambda platform: action(platform.accounts_admin(cli_actor())))


def with_billing(action: Callable[[BillingAdmin], Awaitable[T]]) -> T:
    """Run a billing operation, audited as ``cli:<unix user>``."""
    return run_platform(lambda platform: action(platform.billing_admin(cli_actor())))


def with_catalog(action: Callable[[CatalogAdmin], Awaitable[T]]) -> T:
    """Run a catalog operation, audited as ``cli:<unix user>``."""
    return run_platform(lambda platform: action(platform.catalog_admin(cli_actor())))


def admin_body(body: type[B], given: dict[str, Any] | None = None, /, **options: Any) -> B:
    """The options as the ``body`` the admin API would take (validated the same way): those
    in ``given`` as they are, the others left out when not given (None)."""
    fields = {k: v for k, v in options.items() if v is not None} | (given or {})
    try:
        return body.parse(fields)
    except OpenMaaSError as exc:
        raise click.ClickException(exc.message) from None


def cli_actor() -> str:
    """Who the audit log names for a CLI change: ``cli:<unix user>``."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "cli:unknown"


def money(micros: int, currency: str) -> str:
    return f"{format_micros(micros)} {currency}"


def print_table(
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


def cap(value: int | None) -> str:
    """A limit for a table: ``-`` when there is none."""
    return "-" if value is None else str(value)


def ms_to_iso(ms: int | None) -> str:
    if ms is None:
        return ""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def day_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``YYYY-MM-DD`` option, checked as ``/v1/usage`` checks its dates."""
    if value is None:
        return None
    try:
        return checked_day(value, f"--{param.name}")
    except InvalidRequest:
        raise click.BadParameter(f"must be a date as YYYY-MM-DD, not {value!r}.") from None
