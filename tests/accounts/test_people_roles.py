"""Members, invitations and users' platform roles (accounts/people_roles.py) on SQLite and
PostgreSQL: who may change whom, the last owner, single-use expiring invitations stored
as hashes, and every change audited with the person as the actor."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.people import Access, OrgRole, PeopleAdmin, actor_of
from openmaas.accounts.people_roles import InvitationClosed, PeopleRoles
from openmaas.core.errors import InvalidRequest, NotFound, PermissionDenied
from openmaas.platform import Platform
from openmaas.store.audit import read_audit
from openmaas.store.people.schema import invitations
from openmaas.store.people.users import User
from tests.support.clock import ManualClock

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    return request.getfixturevalue("new_pg_database")()  # type: ignore[no-any-return]


def people(platform: Platform) -> PeopleAdmin:
    return PeopleAdmin(platform.changes("cli:test"), platform.clock, platform.master_key)


def roles(platform: Platform, user: User | None = None) -> PeopleRoles:
    actor = actor_of(user) if user else "cli:test"
    return PeopleRoles(platform.changes(actor), platform.clock, invitation_hours=72)


async def _org(platform: Platform) -> tuple[str, dict[str, User]]:
    """An organization with an owner, an admin, a member and a viewer."""
    org = await platform.accounts_admin("cli:test").create_org(NewOrganization(name="acme"))
    found = {}
    for role in OrgRole:
        user = await people(platform).create_user(f"{role.label}@example.com", PASSWORD)
        await people(platform).add_member(user.id, org.id, role)
        found[role.label] = user
    return org.id, found


async def _as(platform: Platform, user: User, org: str) -> Access:
    return await people(platform).access(user, org)


async def test_admins_manage_members_but_only_owners_touch_owners_and_one_owner_stays(
    platform: Platform,
) -> None:
    org, who = await _org(platform)
    admin = await _as(platform, who["admin"], org)
    service = roles(platform, who["admin"])
    await service.set_role(admin, who["viewer"].id, OrgRole.MEMBER)
    with pytest.raises(PermissionDenied):
        await service.set_role(admin, who["member"].id, OrgRole.OWNER)  # above their own
    with pytest.raises(PermissionDenied):
        await service.remove(admin, who["owner"].id)  # only an owner touches an owner
    member = await _as(platform, who["member"], org)
    with pytest.raises(PermissionDenied):
        await roles(platform, who["member"]).remove(member, who["viewer"].id)

    owner = await _as(platform, who["owner"], org)
    by_owner = roles(platform, who["owner"])
    with pytest.raises(InvalidRequest, match="last owner"):
        await by_owner.remove(owner, who["owner"].id)
    with pytest.raises(InvalidRequest, match="at least one owner"):
        await by_owner.set_role(owner, who["owner"].id, OrgRole.ADMIN)
    await by_owner.set_role(owner, who["admin"].id, OrgRole.OWNER)  # two owners now
    await by_owner.remove(owner, who["owner"].id)  # so the first may leave
    with pytest.raises(NotFound):
        await by_owner.remove(owner, who["owner"].id)

    listed = {m.email: m.role for m in await service.members(admin)}
    assert listed == {
        "admin@example.com": "owner",
        "member@example.com": "member",
        "viewer@example.com": "member",
    }
    changes = [
        (e.actor, e.action, e.before, e.after)
        for e in reversed(await read_audit(platform.database, 100))
        if e.actor.startswith("user:")
    ]
    assert changes == [
        (actor_of(who["admin"]), "member.set", {"role": "viewer"}, {"role": "member"}),
        (actor_of(who["owner"]), "member.set", {"role": "admin"}, {"role": "owner"}),
        (actor_of(who["owner"]), "member.remove", {"role": "owner"}, None),
    ]


async def test_an_invitation_is_stored_as_a_hash_works_once_and_only_for_its_email(
    platform: Platform,
) -> None:
    org, who = await _org(platform)
    admin = await _as(platform, who["admin"], org)
    service = roles(platform, who["admin"])
    with pytest.raises(PermissionDenied):
        await service.invite(admin, "x@example.com", OrgRole.OWNER)
    made = await service.invite(admin, "New@Example.com", OrgRole.MEMBER)
    async with platform.database.connect() as conn:
        stored = (await conn.execute(select(invitations))).one()
    assert stored.token_hash == hashlib.sha256(made.token.encode()).hexdigest()
    assert made.token not in str(stored) and stored.email == "new@example.com"

    stranger = await people(platform).create_user("other@example.com", PASSWORD)
    with pytest.raises(PermissionDenied):
        await roles(platform, stranger).accept(made.token, stranger)
    newcomer = await people(platform).create_user("new@example.com", PASSWORD)
    found = await roles(platform, newcomer).accept(made.token, newcomer)
    assert found.org_id == org
    assert (await _as(platform, newcomer, org)).role is OrgRole.MEMBER
    with pytest.raises(InvitationClosed):
        await roles(platform, newcomer).accept(made.token, newcomer)  # once

    entries = {e.action: e for e in await read_audit(platform.database, 100)}
    assert entries["invitation.create"].actor == actor_of(who["admin"])
    assert made.token not in str(entries["invitation.create"].after)
    assert entries["invitation.accept"].actor == actor_of(newcomer)


async def test_an_invitation_expires_can_be_revoked_and_signs_up_a_new_person(
    platform: Platform, clock: ManualClock
) -> None:
    org, who = await _org(platform)
    owner = await _as(platform, who["owner"], org)
    service = roles(platform, who["owner"])
    late = await service.invite(owner, "late@example.com", OrgRole.VIEWER)
    clock.advance(72 * 3600)
    with pytest.raises(InvitationClosed):
        await service.invitation(late.token)

    revoked = await service.invite(owner, "gone@example.com", OrgRole.VIEWER)
    await service.revoke_invitation(owner, revoked.id)
    with pytest.raises(InvitationClosed):
        await service.invitation(revoked.token)
    other_org = await platform.accounts_admin("cli:test").create_org(NewOrganization(name="b"))
    with pytest.raises(NotFound):  # another organization's invitation: not found
        await roles(platform).revoke_invitation(
            Access(who["owner"], other_org.id, "b", OrgRole.OWNER), late.id
        )

    fresh = await service.invite(owner, "fresh@example.com", OrgRole.ADMIN)
    user = await roles(platform).sign_up(fresh.token, PASSWORD, people(platform))
    assert user.email == "fresh@example.com"
    assert (await _as(platform, user, org)).role is OrgRole.ADMIN
    with pytest.raises(InvitationClosed):
        await roles(platform).sign_up(fresh.token, PASSWORD, people(platform))
    existing = await service.invite(owner, "member@example.com", OrgRole.ADMIN)
    with pytest.raises(InvalidRequest, match="has an account"):
        await roles(platform).sign_up(existing.token, PASSWORD, people(platform))


async def test_operators_make_operators_and_disable_users_but_never_themselves(
    platform: Platform,
) -> None:
    ops = await people(platform).create_user("ops@example.com", PASSWORD, operator=True)
    dev = await people(platform).create_user("dev@example.com", PASSWORD)
    with pytest.raises(PermissionDenied):
        await roles(platform, dev).set_operator(dev, dev.id, True)
    service = roles(platform, ops)
    await service.set_operator(ops, dev.id, True)
    await service.set_operator(ops, dev.id, True)  # no change: not audited again
    with pytest.raises(InvalidRequest):
        await service.set_operator(ops, ops.id, False)
    with pytest.raises(InvalidRequest):
        await service.set_disabled(ops, ops.id, True)
    await service.set_disabled(ops, dev.id, True)
    assert (await people(platform).users.find(dev.id)).disabled
    await service.set_disabled(ops, "dev@example.com", False)
    mine = [
        e.action for e in reversed(await read_audit(platform.database)) if e.actor == actor_of(ops)
    ]
    assert mine == ["user.operator", "user.disable", "user.enable"]
