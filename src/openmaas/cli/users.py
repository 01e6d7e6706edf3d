"""``openmaas users``: the people who sign in to the console, and their roles in
organizations. The first operator is made here (never by a default password)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from openmaas.accounts.people import OrgRole, PeopleAdmin
from openmaas.cli.common import cli_actor, ms_to_iso, print_table, run_platform
from openmaas.cli.root import main
from openmaas.core.errors import InvalidRequest

T = TypeVar("T")
ROLE_NAMES = [r.label for r in sorted(OrgRole, reverse=True)]


def with_people(action: Callable[[PeopleAdmin], Awaitable[T]]) -> T:
    """Run a change of people, audited as ``cli:<unix user>``."""
    return run_platform(
        lambda platform: action(
            PeopleAdmin(platform.changes(cli_actor()), platform.clock, platform.master_key)
        )
    )


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise click.UsageError("No terminal to ask the password on: give --password-stdin.")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@main.group(help="People who sign in to the console, and their roles.")
def users() -> None:
    pass


@users.command("create", help="Create a user (the password is asked twice, or read from stdin).")
@click.option("--email", required=True, help="The email they sign in with.")
@click.option("--operator", is_flag=True, help="An operator: administers the whole platform.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
def users_create(email: str, operator: bool, password_stdin: bool) -> None:
    password = _password(password_stdin)
    user = with_people(lambda people: people.create_user(email, password, operator=operator))
    click.echo(f"{user.id}\t{user.email}\t{'operator' if user.operator else ''}".rstrip())


@users.command("list", help="List users and their memberships.")
def users_list() -> None:
    async def action(people: PeopleAdmin) -> list[tuple[str, ...]]:
        memberships = await people.users.memberships()
        rows: list[tuple[str, ...]] = []
        for user in await people.users.all():
            roles = ", ".join(f"{m.org_name}:{m.role}" for m in memberships if m.user_id == user.id)
            rows.append(
                (
                    user.id,
                    user.email,
                    "yes" if user.operator else "",
                    roles,
                    ms_to_iso(user.created_at_ms),
                    ms_to_iso(user.disabled_at_ms),
                )
            )
        return rows

    print_table(
        ("id", "email", "operator", "roles", "created (UTC)", "disabled (UTC)"),
        with_people(action),
    )


@users.command("add-member", help="Give a user a role in an organization (again: change it).")
@click.option("--email", required=True, help="The user (email or id).")
@click.option("--org", required=True, help="Organization id or name.")
@click.option("--role", required=True, type=click.Choice(ROLE_NAMES), help="Their role there.")
def users_add_member(email: str, org: str, role: str) -> None:
    try:
        parsed = OrgRole.parse(role)
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message) from None
    member = with_people(lambda people: people.add_member(email, org, parsed))
    click.echo(f"{member.user_id}\t{member.org_name}\t{member.role}")
