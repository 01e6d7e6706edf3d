"""``openmaas members`` and ``openmaas invitations``, and the operator flags of ``openmaas
users``: what the console's members and users pages do, on the same service
(``accounts/people_roles.py``) and its rules, as the platform itself (an operator: the
owner role everywhere), audited as ``cli:<unix user>``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from openmaas.accounts.people import OrgRole
from openmaas.accounts.people_roles import PeopleRoles, invitation_status
from openmaas.cli.common import cli_actor, ms_to_iso, print_table, run_platform
from openmaas.cli.root import main
from openmaas.cli.users import ROLE_NAMES, users
from openmaas.core.errors import InvalidRequest

T = TypeVar("T")


def with_roles(action: Callable[[PeopleRoles], Awaitable[T]]) -> T:
    """Run a members, invitations or users' roles operation, audited as the CLI."""
    return run_platform(
        lambda platform: action(
            PeopleRoles(
                platform.changes(cli_actor()),
                platform.clock,
                invitation_hours=platform.settings.console_invitation_hours,
            )
        )
    )


def _role(text: str) -> OrgRole:
    try:
        return OrgRole.parse(text)
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message) from None


# -- members ------------------------------------------------------------------------------


@main.group(help="An organization's members and their roles.")
def members() -> None:
    pass


@members.command("list", help="List an organization's members.")
@click.option("--org", required=True, help="Organization id or name.")
def members_list(org: str) -> None:
    async def action(service: PeopleRoles) -> list[tuple[str, ...]]:
        found = await service.members(await service.platform_access(org))
        return [
            (m.user_id, m.email, m.role, ms_to_iso(m.since_ms), "yes" if m.disabled else "")
            for m in found
        ]

    print_table(("user", "email", "role", "since (UTC)", "disabled"), with_roles(action))


@members.command("set-role", help="Change a member's role (one owner always stays).")
@click.option("--org", required=True, help="Organization id or name.")
@click.option("--user", "user", required=True, help="The member (email or id).")
@click.option("--role", required=True, type=click.Choice(ROLE_NAMES), help="Their new role.")
def members_set_role(org: str, user: str, role: str) -> None:
    parsed = _role(role)

    async def action(service: PeopleRoles) -> str:
        found = await service.users.find(user)
        await service.set_role(await service.platform_access(org), found.id, parsed)
        return found.id

    click.echo(f"{with_roles(action)}\t{org}\t{parsed.label}")


@members.command("remove", help="Remove a member from an organization (not its last owner).")
@click.option("--org", required=True, help="Organization id or name.")
@click.option("--user", "user", required=True, help="The member (email or id).")
def members_remove(org: str, user: str) -> None:
    async def action(service: PeopleRoles) -> str:
        found = await service.users.find(user)
        await service.remove(await service.platform_access(org), found.id)
        return found.id

    click.echo(f"{with_roles(action)}\t{org}\tremoved")


# -- invitations --------------------------------------------------------------------------


@main.group(help="Invitations to an organization, by email.")
def invitations() -> None:
    pass


@invitations.command("create", help="Invite a person; the token is printed once.")
@click.option("--org", required=True, help="Organization id or name.")
@click.option("--email", required=True, help="Whom to invite.")
@click.option(
    "--role", default="member", show_default=True, type=click.Choice(ROLE_NAMES), help="Role."
)
def invitations_create(org: str, email: str, role: str) -> None:
    parsed = _role(role)

    async def action(service: PeopleRoles) -> tuple[str, str]:
        made = await service.invite(await service.platform_access(org), email, parsed)
        return made.id, made.token

    invitation, token = with_roles(action)
    click.echo(f"{invitation}\t{token}")
    click.echo(
        f"The token is shown once. The link: <server>/console/invitation?token={token}", err=True
    )


@invitations.command("list", help="List an organization's invitations (never their tokens).")
@click.option("--org", required=True, help="Organization id or name.")
def invitations_list(org: str) -> None:
    async def action(service: PeopleRoles) -> list[tuple[str, ...]]:
        found = await service.invitations(await service.platform_access(org))
        now = service.changes.now_ms()
        return [
            (i.id, i.email, i.role, invitation_status(i, now), ms_to_iso(i.expires_at_ms))
            for i in found
        ]

    print_table(("id", "email", "role", "status", "expires (UTC)"), with_roles(action))


@invitations.command("revoke", help="Revoke an open invitation.")
@click.option("--org", required=True, help="Organization id or name.")
@click.argument("invitation_id")
def invitations_revoke(org: str, invitation_id: str) -> None:
    async def action(service: PeopleRoles) -> None:
        await service.revoke_invitation(await service.platform_access(org), invitation_id)

    with_roles(action)
    click.echo(f"{invitation_id}\trevoked")


# -- users' platform roles ----------------------------------------------------------------


def _flag(user: str, change: Callable[[PeopleRoles], Awaitable[None]], what: str) -> None:
    with_roles(change)
    click.echo(f"{user}\t{what}")


@users.command("make-operator", help="Make a user an operator (the whole platform).")
@click.argument("user")
def users_make_operator(user: str) -> None:
    _flag(user, lambda s: s.set_operator(None, user, True), "operator")


@users.command("unmake-operator", help="Take a user's operator role away.")
@click.argument("user")
def users_unmake_operator(user: str) -> None:
    _flag(user, lambda s: s.set_operator(None, user, False), "not operator")


@users.command("disable", help="Disable a user: their sessions end, they cannot sign in.")
@click.argument("user")
def users_disable(user: str) -> None:
    _flag(user, lambda s: s.set_disabled(None, user, True), "disabled")


@users.command("enable", help="Enable a disabled user.")
@click.argument("user")
def users_enable(user: str) -> None:
    _flag(user, lambda s: s.set_disabled(None, user, False), "enabled")
