"""Who may do what: an organization's members and invitations (for its owners and admins),
and the platform's roles of users (for operators). Every change goes through the unit of
work (``store/audit.py``) and is audited with its actor (``user:<id>`` from the console).

The rules, checked here whoever asks:

- managing members and invitations needs the admin role (an operator acts as owner);
- only an owner gives the owner role, or changes or removes an owner; no one gives a role
  above their own;
- the last owner of an organization is neither removed nor given a lower role;
- an invitation names an email and a role; its token (shown once, only its SHA-256 stored)
  is good once, until it expires or is revoked, and only for a person with that email;
- an operator neither disables themselves nor takes away their own operator role.

The console calls this service as the person; the admin API (``/admin/v1``, an admin key)
and the CLI call the same methods as the platform itself: ``platform_access`` gives them an
organization as an operator has it (owner), and ``by=None`` changes users as an operator.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from openmaas.accounts.people import (
    Access,
    OrgRole,
    PeopleAdmin,
    _check_email,
    _need,
    check_password,
)
from openmaas.core.admin_fields import AdminBody
from openmaas.core.clock import Clock
from openmaas.core.errors import InvalidRequest, NotFound, PermissionDenied
from openmaas.core.ledger_events import Event
from openmaas.store.audit import AuditedChanges, AuditRecord, Change
from openmaas.store.people import invitations as invites
from openmaas.store.people import members as store
from openmaas.store.people.sessions import revoke_user_sessions
from openmaas.store.people.users import User, UserRepository, insert_user, upsert_membership
from openmaas.store.repositories import OrganizationRepository

TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class NewInvitation:
    id: str
    token: str  # shown once: the link carries it; only its hash is stored


RoleName = Literal["owner", "admin", "member", "viewer"]


class MemberRoleChange(AdminBody):
    """``PATCH /admin/v1/orgs/{org}/members/{user}``: the member's new role."""

    role: RoleName


class InvitationRequest(AdminBody):
    """``POST /admin/v1/orgs/{org}/invitations``: whom to invite, with which role."""

    email: str = Field(max_length=320)
    role: RoleName = "member"


def invitation_status(found: invites.Invitation, now_ms: int) -> str:
    """``open``, ``accepted``, ``revoked`` or ``expired``."""
    if found.accepted_at_ms is not None:
        return "accepted"
    if found.revoked_at_ms is not None:
        return "revoked"
    return "open" if found.open(now_ms) else "expired"


class InvitationClosed(InvalidRequest):
    """An invitation token that is unknown, used, revoked or expired."""

    def __init__(self) -> None:
        super().__init__("This invitation is not valid: used, revoked or expired.", "token")


class PeopleRoles:
    """Members, invitations and users' platform roles, changed as ``changes``' actor."""

    def __init__(self, changes: AuditedChanges, clock: Clock, *, invitation_hours: float) -> None:
        self.changes = changes
        self._clock = clock
        self._invitation_ms = round(invitation_hours * 3_600_000)
        self.users = UserRepository(changes.database)
        self.orgs = OrganizationRepository(changes.database)

    async def platform_access(self, org: str) -> Access:
        """``org`` (id or name) as the platform itself holds it (an admin key, the CLI): as
        an operator, the owner role, no person (an unknown organization: not found)."""
        found = await self.orgs.find(org)
        return Access(None, found.id, found.name, OrgRole.OWNER)

    # -- members ----------------------------------------------------------------------

    async def members(self, access: Access) -> list[store.Member]:
        _need(access, OrgRole.ADMIN)
        return await store.list_members(self.changes.database, access.org_id)

    async def set_role(self, access: Access, user_id: str, role: OrgRole) -> None:
        _need(access, OrgRole.ADMIN)
        _may_give(access, role)
        org = access.org_id

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord | None:
            old = await _member(conn, org, user_id)
            if old == role:
                return None
            _may_touch(access, old)
            if old is OrgRole.OWNER and await store.count_owners(conn, org) <= 1:
                raise InvalidRequest("An organization keeps at least one owner.", "role")
            await store.set_member_role(conn, org, user_id, role.label)
            target = f"{user_id}@{org}"
            return AuditRecord("member.set", target, {"role": old.label}, {"role": role.label})

        await self.changes.commit(write)

    async def remove(self, access: Access, user_id: str) -> None:
        _need(access, OrgRole.ADMIN)
        org = access.org_id

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            old = await _member(conn, org, user_id)
            _may_touch(access, old)
            if old is OrgRole.OWNER and await store.count_owners(conn, org) <= 1:
                raise InvalidRequest("The last owner of an organization stays.", "user")
            await store.delete_member(conn, org, user_id)
            return AuditRecord("member.remove", f"{user_id}@{org}", {"role": old.label}, None)

        await self.changes.commit(write)

    # -- invitations ------------------------------------------------------------------

    async def invitations(self, access: Access) -> list[invites.Invitation]:
        _need(access, OrgRole.ADMIN)
        return await invites.org_invitations(self.changes.database, access.org_id)

    async def invite(self, access: Access, email: str, role: OrgRole) -> NewInvitation:
        _need(access, OrgRole.ADMIN)
        _may_give(access, role)
        email = _check_email(email)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self._clock.now_ms()
        made: list[str] = []
        inviter = None if access.user is None else access.user.id

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            found = await invites.insert_invitation(
                conn, token, access.org_id, email, role.label, inviter, now,
                now + self._invitation_ms,
            )  # fmt: skip
            made.append(found)
            after = {"org": access.org_id, "email": email, "role": role.label}  # never the token
            return AuditRecord("invitation.create", found, None, after)

        await self.changes.commit(write)
        return NewInvitation(made[0], token)

    async def revoke_invitation(self, access: Access, invitation_id: str) -> None:
        _need(access, OrgRole.ADMIN)
        now = self._clock.now_ms()

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            if not await invites.revoke_invitation(conn, access.org_id, invitation_id, now):
                raise NotFound(f"No open invitation '{invitation_id}'.")
            return AuditRecord("invitation.revoke", invitation_id, {"open": True}, {"open": False})

        await self.changes.commit(write)

    async def invitation(self, token: str) -> invites.Invitation:
        """The open invitation of ``token`` (refused: unknown, used, revoked, expired)."""
        found = await invites.by_token(self.changes.database, token) if token else None
        if found is None or not found.open(self._clock.now_ms()):
            raise InvitationClosed()
        return found

    async def accept(self, token: str, user: User) -> invites.Invitation:
        """``user`` (who must have the invited email) joins with the invitation's role (a
        member already keeps a higher role)."""
        found = await self.invitation(token)
        if user.email != found.email:
            raise PermissionDenied(f"This invitation is for {found.email}.")
        await self.changes.commit(self._joining(found, user))
        return found

    async def sign_up(self, token: str, password: str, people: PeopleAdmin) -> User:
        """A new account with the invitation's email, which joins its organization: even
        when open sign-up is off (the invitation is the permission)."""
        found = await self.invitation(token)
        if await self.users.by_email(found.email) is not None:
            raise InvalidRequest(
                f"{found.email} has an account: sign in, then accept the invitation.", "email"
            )
        check_password(password)
        password_hash = people.hasher.hash(password)
        now = self._clock.now_ms()
        created: list[User] = []

        async def write(conn: AsyncConnection, events: tuple[Event, ...]) -> AuditRecord | None:
            user = await insert_user(conn, found.email, password_hash, now, operator=False)
            created.append(user)
            await self._joining(found, user)(conn, events)
            after = {"email": user.email, "operator": False, "invitation": found.id}
            return AuditRecord("user.create", user.id, None, after)

        await self.changes.commit(write)
        return created[0]

    def _joining(self, found: invites.Invitation, user: User) -> Change:
        now = self._clock.now_ms()
        role = OrgRole.parse(found.role)

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            if not await invites.use_invitation(conn, found.id, user.id, now):
                raise InvitationClosed()  # used meanwhile: the transaction rolls back
            old = await store.member_role(conn, found.org_id, user.id)
            if old is None or OrgRole.parse(old) < role:
                await upsert_membership(conn, user.id, found.org_id, role.label, now)
            after = {"org": found.org_id, "user": user.id, "role": role.label}
            return AuditRecord("invitation.accept", found.id, None, after)

        return write

    # -- users' platform roles (operators) ----------------------------------------------

    async def set_operator(self, by: User | None, user_id: str, operator: bool) -> None:
        """Make ``user_id`` (id or email) an operator or not; ``by`` None: the platform
        itself (an admin key, the CLI)."""
        _operator(by)
        target = await self.users.find(user_id)
        if by is not None and target.id == by.id and not operator:
            raise InvalidRequest("An operator does not take away their own role.", "operator")

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord | None:
            if target.operator == operator:
                return None
            await store.set_operator(conn, target.id, operator)
            before, after = {"operator": target.operator}, {"operator": operator}
            return AuditRecord("user.operator", target.id, before, after)

        await self.changes.commit(write)

    async def set_disabled(self, by: User | None, user_id: str, disabled: bool) -> None:
        """Disable a user (every session of theirs ends; sign-in refused) or enable again;
        ``by`` None: the platform itself (an admin key, the CLI)."""
        _operator(by)
        target = await self.users.find(user_id)
        if by is not None and target.id == by.id:
            raise InvalidRequest("An operator does not disable themselves.", "user")
        now = self._clock.now_ms()

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord | None:
            if target.disabled == disabled:
                return None
            await store.set_disabled(conn, target.id, now if disabled else None)
            if disabled:
                await revoke_user_sessions(conn, target.id, now)
            action = "user.disable" if disabled else "user.enable"
            return AuditRecord(
                action, target.id, {"disabled": target.disabled}, {"disabled": disabled}
            )

        await self.changes.commit(write)


async def _member(conn: AsyncConnection, org_id: str, user_id: str) -> OrgRole:
    role = await store.member_role(conn, org_id, user_id)
    if role is None:
        raise NotFound(f"No member '{user_id}' in this organization.")
    return OrgRole.parse(role)


def _may_give(access: Access, role: OrgRole) -> None:
    if role > access.role:
        raise PermissionDenied(f"Giving the {role.label} role needs the {role.label} role.")


def _may_touch(access: Access, current: OrgRole) -> None:
    if current is OrgRole.OWNER and access.role < OrgRole.OWNER:
        raise PermissionDenied("Only an owner changes or removes an owner.")


def _operator(user: User | None) -> None:
    if user is not None and not user.operator:
        raise PermissionDenied("Only operators change users' platform roles.")
