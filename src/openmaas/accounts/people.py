"""People: users with argon2id passwords, their memberships of organizations with a role,
and the keys they create. Every change goes through the unit of work
(``store/audit.py``), audited with its actor: ``user:<id>`` for a change a person made in
the console, ``cli:<unix user>`` for the CLI.

Roles per organization, from most to least: owner, admin, member, viewer. An operator (a
flag on the user) administers the platform and every organization, as an admin key does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncConnection

from openmaas.accounts.admin import (
    AccountsAdmin,
    IssuedKey,
    check_restrictions,
    restriction_audit,
)
from openmaas.core.clock import Clock
from openmaas.core.errors import InvalidRequest, NotFound, PermissionDenied
from openmaas.core.keys import generate_key
from openmaas.core.ledger_events import Event
from openmaas.store.audit import AuditedChanges, AuditRecord
from openmaas.store.people.keys import (
    KeyListing,
    list_org_keys,
    live_keys_named,
    record_creator,
)
from openmaas.store.people.sessions import revoke_user_sessions, token_hash
from openmaas.store.people.users import (
    Membership,
    User,
    UserRepository,
    insert_user,
    normal_email,
    set_password_hash,
    upsert_membership,
)
from openmaas.store.repositories import ApiKey, OrganizationRepository, insert_key

MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # hashing is costly on purpose: no megabyte passwords


class OrgRole(IntEnum):
    """A member's role in an organization; a higher value may do all a lower one may."""

    VIEWER = 1  # reads the organization's keys, models and balance
    MEMBER = 2  # also creates and revokes keys
    ADMIN = 3  # also manages members (later slices)
    OWNER = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> OrgRole:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in sorted(cls, reverse=True))
            raise InvalidRequest(f"'role' must be one of {names}.", "role") from None


def actor_of(user: User) -> str:
    """Who the audit log names for a person's change."""
    return f"user:{user.id}"


def password_hasher() -> PasswordHasher:
    """argon2id with the library's (RFC 9106 low-memory) parameters."""
    return PasswordHasher()


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(
            f"The password must have at least {MIN_PASSWORD} characters.", "password"
        )
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(
            f"The password must have at most {MAX_PASSWORD} characters.", "password"
        )


def verify_password(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _check_email(email: str) -> str:
    email = normal_email(email)
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > 320 or " " in email:
        raise InvalidRequest(f"'{email}' is not an email address.", "email")
    return email


@dataclass(frozen=True, slots=True)
class Access:
    """What a user may do in one organization: their role there (operators: owner).
    ``user`` None: not a person but the platform itself (an admin key, the CLI), which acts
    as an operator does: as owner (``PeopleRoles.platform_access``)."""

    user: User | None
    org_id: str
    org_name: str
    role: OrgRole


class PeopleAdmin:
    """Users, memberships and the keys people create, changed as ``changes``' actor."""

    def __init__(
        self,
        changes: AuditedChanges,
        clock: Clock,
        master_key: bytes | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.changes = changes
        self._clock = clock
        self._master_key = master_key
        self.hasher = hasher or password_hasher()
        self.users = UserRepository(changes.database)
        self.orgs = OrganizationRepository(changes.database)

    async def create_user(self, email: str, password: str, *, operator: bool = False) -> User:
        email = _check_email(email)
        check_password(password)
        password_hash = self.hasher.hash(password)
        created: list[User] = []

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            user = await insert_user(
                conn, email, password_hash, self._clock.now_ms(), operator=operator
            )
            created.append(user)
            return AuditRecord(
                "user.create", user.id, None, {"email": user.email, "operator": operator}
            )

        await self.changes.commit(write)
        return created[0]

    async def add_member(self, user: str, org: str, role: OrgRole) -> Membership:
        """Give ``user`` (id or email) ``role`` in ``org`` (id or name); again: the new role."""
        found = await self.users.find(user)
        organization = await self.orgs.find(org)

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord | None:
            old = await upsert_membership(
                conn, found.id, organization.id, role.label, self._clock.now_ms()
            )
            if old == role.label:
                return None
            target = f"{found.id}@{organization.id}"
            return AuditRecord(
                "member.set", target, None if old is None else {"role": old}, {"role": role.label}
            )

        await self.changes.commit(write)
        return Membership(found.id, organization.id, organization.name, role.label)

    async def change_password(self, user: User, current: str, new: str) -> None:
        """The user's own change: the current password checked, every session revoked."""
        if not verify_password(self.hasher, user.password_hash, current):
            raise InvalidRequest("The current password is not right.", "current")
        check_password(new)
        password_hash = self.hasher.hash(new)
        now = self._clock.now_ms()

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            await set_password_hash(conn, user.id, password_hash)
            await revoke_user_sessions(conn, user.id, now)
            return AuditRecord("user.password", user.id)  # never the hash

        await self.changes.commit(write)

    async def access(self, user: User, org_id: str) -> Access:
        """The user's role in ``org_id``; an organization they are not in is not found."""
        for membership in await self.users.memberships(user.id):
            if membership.org_id == org_id:
                return Access(user, org_id, membership.org_name, OrgRole.parse(membership.role))
        if user.operator:
            try:
                org = await self.orgs.find(org_id)
            except NotFound:
                pass
            else:
                if org.id == org_id:
                    return Access(user, org.id, org.name, OrgRole.OWNER)
        raise NotFound(f"No organization with id '{org_id}'.")

    async def organizations(self, user: User) -> list[Membership]:
        """The organizations the user may open: their memberships; an operator: all."""
        own = await self.users.memberships(user.id)
        if not user.operator:
            return own
        mine = {m.org_id for m in own}
        others = [
            Membership(user.id, o.id, o.name, OrgRole.OWNER.label)
            for o in await self.orgs.list()
            if o.id not in mine
        ]
        return sorted(own + others, key=lambda m: m.org_name)

    async def org_keys(self, access: Access) -> list[KeyListing]:
        return await list_org_keys(self.changes.database, access.org_id)

    async def issue_key(
        self,
        access: Access,
        name: str,
        *,
        models: Iterable[str] | None = None,
        expires_at_ms: int | None = None,
    ) -> IssuedKey:
        """A member key of the organization, its creator recorded; audited as the user.
        ``models`` restricts it to those models, ``expires_at_ms`` ends it."""
        _need(access, OrgRole.MEMBER)
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidRequest("'name' must be 1 to 200 characters.", "name")
        allowed = check_restrictions(models, expires_at_ms, self._clock.now_ms())
        new = generate_key(self._master_key)
        issued: list[ApiKey] = []

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord:
            key = await insert_key(
                conn,
                access.org_id,
                name,
                "member",
                new,
                self._clock.now_ms(),
                models=allowed,
                expires_at_ms=expires_at_ms,
            )
            creator = None if access.user is None else access.user.id
            if creator is not None:
                await record_creator(conn, key.id, creator)
            issued.append(key)
            after = {"org": access.org_id, "name": name, "role": "member", "creator": creator}
            return AuditRecord("key.create", key.id, None, after | restriction_audit(key))

        await self.changes.commit(write)
        return IssuedKey(issued[0], new.token)

    async def issue_playground_key(self, access: Access, model: str, session: str) -> IssuedKey:
        """The console playground's key: a member key for ``model`` only, expiring within
        the hour, created by the person (as any key of theirs) under a name that ties it to
        their session (``session``: its token), so that signing out revokes it."""
        return await self.issue_key(
            access,
            playground_key_name(session),
            models=[model],
            expires_at_ms=self._clock.now_ms() + PLAYGROUND_KEY_MS,
        )

    async def revoke_playground_keys(self, user: User, session: str) -> int:
        """Revoke the playground keys ``user`` made in the session ``session`` (at sign-out);
        how many there were."""
        found = await live_keys_named(self.changes.database, user.id, playground_key_name(session))
        accounts = AccountsAdmin(self.changes, self._clock, self._master_key)
        for key_id in found:
            await accounts.revoke_key(key_id)
        return len(found)

    async def revoke_key(self, access: Access, key_id: str) -> None:
        """Revoke one of the organization's keys (another organization's: not found)."""
        _need(access, OrgRole.MEMBER)
        keys = {k.id for k in await self.org_keys(access)}
        if key_id not in keys:
            raise NotFound(f"No API key with id '{key_id}'.")
        await AccountsAdmin(self.changes, self._clock, self._master_key).revoke_key(key_id)


PLAYGROUND_KEY_MS = 3_600_000
"""How long a playground key lives at most (it is revoked at sign-out before that)."""


def playground_key_name(session: str) -> str:
    """The name of a session's playground keys: ``playground <12 hex digits>``, from the
    session token's SHA-256 (as the database keeps it; never the token)."""
    return "playground " + token_hash(session)[:12]


def _need(access: Access, role: OrgRole) -> None:
    if access.role < role:
        raise PermissionDenied(f"This needs the {role.label} role; you are {access.role.label}.")
