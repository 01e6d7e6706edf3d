"""People (accounts/people.py, people_sessions.py) on SQLite and PostgreSQL: users,
memberships and their roles, the keys people create, sign-in with lockout, sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.people import OrgRole, PeopleAdmin, actor_of
from openmaas.accounts.people_sessions import LockedOut, SignIn, SignInPolicy, SignInRefused
from openmaas.core.errors import InvalidRequest, NotFound, PermissionDenied
from openmaas.core.keys import hash_secret, split_key
from openmaas.platform import Platform
from openmaas.store.audit import read_audit
from openmaas.store.repositories import ApiKeyRepository
from tests.support.clock import ManualClock

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    return request.getfixturevalue("new_pg_database")()  # type: ignore[no-any-return]


def people(platform: Platform, actor: str = "cli:test") -> PeopleAdmin:
    return PeopleAdmin(platform.changes(actor), platform.clock, platform.master_key)


def sign_in(platform: Platform, policy: SignInPolicy | None = None) -> SignIn:
    return SignIn(platform.database, platform.clock, policy or SignInPolicy())


async def test_emails_are_unique_whatever_their_case_and_creation_is_audited(
    platform: Platform,
) -> None:
    user = await people(platform).create_user("Ada@Example.COM", PASSWORD, operator=True)
    assert user.email == "ada@example.com" and user.operator
    with pytest.raises(InvalidRequest) as refused:
        await people(platform).create_user("ADA@example.com", PASSWORD)
    assert refused.value.param == "email"
    (entry,) = await read_audit(platform.database)
    assert (entry.actor, entry.action, entry.target) == ("cli:test", "user.create", user.id)
    assert entry.after == {"email": "ada@example.com", "operator": True}
    assert "argon2" not in str(entry.after) and user.password_hash.startswith("$argon2id$")


async def test_a_short_password_or_a_bad_email_is_refused(platform: Platform) -> None:
    with pytest.raises(InvalidRequest, match="at least 10"):
        await people(platform).create_user("bob@example.com", "short")
    with pytest.raises(InvalidRequest, match="not an email"):
        await people(platform).create_user("bob", PASSWORD)


async def test_roles_per_organization_and_keys_created_by_people(platform: Platform) -> None:
    accounts = platform.accounts_admin("cli:test")
    org_a = await accounts.create_org(NewOrganization(name="org-a"))
    org_b = await accounts.create_org(NewOrganization(name="org-b"))
    cli_key = await accounts.issue_key(org_a.id, "from-cli")
    member = await people(platform).create_user("m@example.com", PASSWORD)
    viewer = await people(platform).create_user("v@example.com", PASSWORD)
    await people(platform).add_member("M@example.com", "org-a", OrgRole.MEMBER)
    await people(platform).add_member(viewer.id, org_a.id, OrgRole.VIEWER)

    as_member = people(platform, actor_of(member))
    access = await as_member.access(member, org_a.id)
    assert access.role is OrgRole.MEMBER
    with pytest.raises(NotFound):  # another organization's pages do not exist for them
        await as_member.access(member, org_b.id)

    issued = await as_member.issue_key(access, "laptop")
    key_id, secret = split_key(issued.token)
    stored = await ApiKeyRepository(platform.database).get(key_id)
    assert stored is not None and stored.secret_hash == hash_secret(secret)
    listed = {k.id: k for k in await as_member.org_keys(access)}
    assert listed[key_id].creator == "m@example.com"
    assert listed[cli_key.key.id].creator is None  # made by the CLI: no person

    as_viewer = people(platform, actor_of(viewer))
    viewing = await as_viewer.access(viewer, org_a.id)
    with pytest.raises(PermissionDenied):
        await as_viewer.issue_key(viewing, "nope")
    with pytest.raises(PermissionDenied):
        await as_viewer.revoke_key(viewing, key_id)

    other_key = await accounts.issue_key(org_b.id, "b's")
    with pytest.raises(NotFound):
        await as_member.revoke_key(access, other_key.key.id)
    await as_member.revoke_key(access, key_id)
    revoked = await ApiKeyRepository(platform.database).get(key_id)
    assert revoked is not None and revoked.revoked

    entries = [(e.actor, e.action) for e in await read_audit(platform.database)]
    assert (actor_of(member), "key.create") in entries
    assert (actor_of(member), "key.revoke") in entries
    assert ("cli:test", "member.set") in entries


async def test_an_operator_opens_every_organization_as_owner(platform: Platform) -> None:
    org = await platform.accounts_admin("cli:test").create_org(NewOrganization(name="acme"))
    operator = await people(platform).create_user("ops@example.com", PASSWORD, operator=True)
    access = await people(platform).access(operator, org.id)
    assert access.role is OrgRole.OWNER
    assert [m.org_id for m in await people(platform).organizations(operator)] == [org.id]


async def test_sign_in_makes_a_new_session_each_time_and_sign_out_ends_it(
    platform: Platform,
) -> None:
    await people(platform).create_user("ada@example.com", PASSWORD)
    signing = sign_in(platform)
    with pytest.raises(SignInRefused, match="email or the password"):
        await signing.sign_in("ada@example.com", "wrong password!", "10.0.0.1")
    with pytest.raises(SignInRefused, match="email or the password"):
        await signing.sign_in("nobody@example.com", PASSWORD, "10.0.0.1")
    first = await signing.sign_in("ADA@example.com", PASSWORD, "10.0.0.1")
    second = await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.1")
    assert first.token != second.token and first.csrf_token != second.csrf_token
    found = await signing.session(first.token)
    assert found is not None and found.user.email == "ada@example.com"
    await signing.sign_out(first.token)
    assert await signing.session(first.token) is None
    assert await signing.session(second.token) is not None


async def test_a_password_change_ends_every_session(platform: Platform) -> None:
    user = await people(platform).create_user("ada@example.com", PASSWORD)
    signing = sign_in(platform)
    session = await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.1")
    with pytest.raises(InvalidRequest, match="current password"):
        await people(platform, actor_of(user)).change_password(user, "not it at all", "x" * 12)
    await people(platform, actor_of(user)).change_password(user, PASSWORD, "a new passphrase")
    assert await signing.session(session.token) is None
    with pytest.raises(SignInRefused):
        await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.1")
    assert await signing.sign_in("ada@example.com", "a new passphrase", "10.0.0.1")
    (entry, *_) = await read_audit(platform.database)
    assert (entry.actor, entry.action) == (actor_of(user), "user.password")


async def test_sessions_end_when_idle(platform: Platform, clock: ManualClock) -> None:
    await people(platform).create_user("ada@example.com", PASSWORD)
    signing = sign_in(platform, SignInPolicy(idle_ms=60 * 60_000))
    session = await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.1")
    clock.advance(59 * 60)
    assert await signing.session(session.token) is not None  # seen: idle again from here
    clock.advance(59 * 60)
    assert await signing.session(session.token) is not None
    clock.advance(61 * 60)
    assert await signing.session(session.token) is None


async def test_failed_sign_ins_lock_the_account_with_a_clear_message(
    platform: Platform, clock: ManualClock
) -> None:
    await people(platform).create_user("ada@example.com", PASSWORD)
    signing = sign_in(platform, SignInPolicy(max_failures=3, lockout_ms=10 * 60_000))
    for _ in range(2):
        with pytest.raises(SignInRefused):
            await signing.sign_in("ada@example.com", "wrong password!", "10.0.0.1")
    with pytest.raises(LockedOut, match="Try again in 10 minutes"):
        await signing.sign_in("ada@example.com", "wrong password!", "10.0.0.2")
    with pytest.raises(LockedOut):  # even the right password, from anywhere
        await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.3")
    clock.advance(10 * 60 + 1)
    assert await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.3")


async def test_failed_sign_ins_lock_the_address(platform: Platform) -> None:
    await people(platform).create_user("ada@example.com", PASSWORD)
    signing = sign_in(platform, SignInPolicy(max_failures=100, max_address_failures=3))
    for name in ("a", "b"):
        with pytest.raises(SignInRefused):
            await signing.sign_in(f"{name}@example.com", "wrong password!", "10.0.0.9")
    with pytest.raises(LockedOut):
        await signing.sign_in("c@example.com", "wrong password!", "10.0.0.9")
    with pytest.raises(LockedOut):
        await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.9")
    assert await signing.sign_in("ada@example.com", PASSWORD, "10.0.0.10")


async def test_a_persons_key_for_some_models_with_an_expiry_and_their_playground_keys(
    platform: Platform,
) -> None:
    from openmaas.accounts.people import PLAYGROUND_KEY_MS

    accounts = platform.accounts_admin("cli:test")
    org = await accounts.create_org(NewOrganization(name="org-a"))
    member = await people(platform).create_user("m@example.com", PASSWORD)
    await people(platform).add_member(member.id, org.id, OrgRole.MEMBER)
    as_member = people(platform, actor_of(member))
    access = await as_member.access(member, org.id)
    now = platform.clock.now_ms()
    issued = await as_member.issue_key(
        access, "bot", models=["glm-4", "fake-chat"], expires_at_ms=now + 86_400_000
    )
    listed = {k.id: k for k in await as_member.org_keys(access)}
    assert listed[issued.key.id].models == ("fake-chat", "glm-4")
    assert listed[issued.key.id].expires_at_ms == now + 86_400_000

    played = await as_member.issue_playground_key(access, "fake-chat", "session-one")
    other = await as_member.issue_playground_key(access, "fake-chat", "session-two")
    assert played.key.models == frozenset({"fake-chat"})
    assert played.key.expires_at_ms == now + PLAYGROUND_KEY_MS
    assert await as_member.revoke_playground_keys(member, "session-one") == 1
    keys = ApiKeyRepository(platform.database)
    assert [(await keys.get(k.key.id)).revoked for k in (played, other, issued)] == [  # type: ignore[union-attr]
        True,
        False,
        False,
    ]
    revoked = [e for e in await read_audit(platform.database) if e.action == "key.revoke"]
    assert [(e.actor, e.target) for e in revoked] == [(actor_of(member), played.key.id)]
