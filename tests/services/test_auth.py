"""Who is calling (services/auth.py), against a real key repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openmaas.core.errors import AuthenticationFailed
from openmaas.core.keys import NewKey, generate_key
from openmaas.services.auth import Authenticator, Principal, bearer_token
from openmaas.store.database import migrate, open_database
from openmaas.store.repositories import ApiKeyRepository, OrganizationRepository

NOW = 1709251200000


@dataclass
class World:
    auth: Authenticator
    keys: ApiKeyRepository
    org_id: str
    member: NewKey
    admin: NewKey


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    database = open_database("sqlite+aiosqlite:///" + str(tmp_path / "auth.db"))
    await migrate(database)
    try:
        org = await OrganizationRepository(database).create("acme", NOW)
        keys = ApiKeyRepository(database)
        member, admin = generate_key(), generate_key()
        await keys.create(org.id, "member key", "member", member, NOW)
        await keys.create(org.id, "admin key", "admin", admin, NOW)
        yield World(Authenticator(keys), keys, org.id, member, admin)
    finally:
        await database.dispose()


async def test_valid_key_gives_its_principal(world: World) -> None:
    principal = await world.auth.authenticate(f"Bearer {world.member.token}")
    assert principal == Principal(key_id=world.member.key_id, org_id=world.org_id, role="member")
    assert not principal.is_admin


async def test_admin_key_is_admin(world: World) -> None:
    principal = await world.auth.authenticate(f"Bearer {world.admin.token}")
    assert principal.role == "admin" and principal.is_admin
    assert principal.org_id == world.org_id


@pytest.mark.parametrize("header", ["bearer {t}", "BEARER {t}", "  Bearer {t}  ", "Bearer   {t}"])
async def test_scheme_is_case_insensitive_and_whitespace_tolerant(world: World, header: str) -> None:
    principal = await world.auth.authenticate(header.format(t=world.member.token))
    assert principal.key_id == world.member.key_id


@pytest.mark.parametrize("header", [None, "", "   "], ids=["none", "empty", "blank"])
async def test_missing_header_is_refused(world: World, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed):
        await world.auth.authenticate(header)


@pytest.mark.parametrize(
    "header", ["Basic {t}", "Token {t}", "{t}", "Bearer", "Bearer   ", "Bearer: {t}"]
)
async def test_non_bearer_scheme_is_refused(world: World, header: str) -> None:
    with pytest.raises(AuthenticationFailed):
        await world.auth.authenticate(header.format(t=world.member.token))


@pytest.mark.parametrize(
    "token", ["sk-abc", "not.a.key", "om123.short", "{id}", "{id}.{secret}.x", "{id}..{secret}"]
)
async def test_malformed_key_is_refused(world: World, token: str) -> None:
    token = token.format(id=world.member.key_id, secret=world.member.secret)
    with pytest.raises(AuthenticationFailed):
        await world.auth.authenticate(f"Bearer {token}")


async def test_unknown_key_id_is_refused(world: World) -> None:
    stranger = generate_key()  # well formed, never stored
    with pytest.raises(AuthenticationFailed):
        await world.auth.authenticate(f"Bearer {stranger.token}")


async def test_wrong_secret_is_refused(world: World) -> None:
    forged = f"{world.member.key_id}.{world.admin.secret}"
    with pytest.raises(AuthenticationFailed) as info:
        await world.auth.authenticate(f"Bearer {forged}")
    assert "revoked" not in info.value.message  # a guesser learns nothing about the key


async def test_revoked_key_is_refused_at_once(world: World) -> None:
    header = f"Bearer {world.member.token}"
    assert await world.auth.authenticate(header)
    await world.keys.revoke(world.member.key_id, NOW + 1)
    with pytest.raises(AuthenticationFailed) as info:
        await world.auth.authenticate(header)
    assert "revoked" in info.value.message
    # other keys keep working
    assert (await world.auth.authenticate(f"Bearer {world.admin.token}")).is_admin


async def test_revoked_key_with_wrong_secret_does_not_reveal_revocation(world: World) -> None:
    await world.keys.revoke(world.member.key_id, NOW + 1)
    with pytest.raises(AuthenticationFailed) as info:
        await world.auth.authenticate(f"Bearer {world.member.key_id}.{world.admin.secret}")
    assert "revoked" not in info.value.message


def test_bearer_token_extracts_the_token() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("  bearer   abc.def  ") == "abc.def"
