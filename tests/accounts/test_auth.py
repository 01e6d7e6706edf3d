"""Who is calling (accounts/auth.py), against a real key repository."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers

from openmaas.accounts.auth import (
    Authenticator,
    Principal,
    bearer_token,
    load_master_key,
    presented_token,
)
from openmaas.core.errors import AuthenticationFailed
from openmaas.core.keys import (
    CredentialMissing,
    InvalidToken,
    NewKey,
    SignatureInvalid,
    TokenExpired,
    TokenLifetimeTooLong,
    build_jwt,
    derive_secret,
    generate_key,
)
from openmaas.settings import Settings
from openmaas.store.repositories import ApiKeyRepository, OrganizationRepository
from tests.support.clock import ManualClock

NOW = 1709251200000
MASTER = b"k" * 32


@dataclass
class World:
    auth: Authenticator
    keys: ApiKeyRepository
    org_id: str
    member: NewKey
    admin: NewKey
    clock: ManualClock


@pytest.fixture
async def world(database: AsyncEngine) -> World:
    org = await OrganizationRepository(database).create("acme", NOW)
    keys = ApiKeyRepository(database)
    member, admin = generate_key(MASTER), generate_key(MASTER)
    await keys.create(org.id, "member key", "member", member, NOW)
    await keys.create(org.id, "admin key", "admin", admin, NOW)
    clock = ManualClock(NOW)
    auth = Authenticator(keys, MASTER, clock.now_ms)
    return World(auth, keys, org.id, member, admin, clock)


async def test_valid_key_gives_its_principal(world: World) -> None:
    principal = await world.auth.authenticate(f"Bearer {world.member.token}")
    assert principal == Principal(key_id=world.member.key_id, org_id=world.org_id, role="member")
    assert not principal.is_admin


async def test_admin_key_is_admin(world: World) -> None:
    principal = await world.auth.authenticate(f"Bearer {world.admin.token}")
    assert principal.role == "admin" and principal.is_admin
    assert principal.org_id == world.org_id


@pytest.mark.parametrize("header", ["bearer {t}", "BEARER {t}", "  Bearer {t}  ", "Bearer   {t}"])
async def test_scheme_is_case_insensitive_and_whitespace_tolerant(
    world: World, header: str
) -> None:
    principal = await world.auth.authenticate(header.format(t=world.member.token))
    assert principal.key_id == world.member.key_id


@pytest.mark.parametrize("header", [None, "", "   "], ids=["none", "empty", "blank"])
async def test_missing_header_is_refused(world: World, header: str | None) -> None:
    with pytest.raises(CredentialMissing):
        await world.auth.authenticate(header)


async def test_bare_token_without_scheme_is_accepted(world: World) -> None:
    # Older zhipuai SDKs send ``Authorization: <key>`` with no scheme.
    principal = await world.auth.authenticate(world.member.token)
    assert principal.key_id == world.member.key_id


@pytest.mark.parametrize(
    "header", ["Basic {t}", "Token {t}", "Bearer", "Bearer   ", "Bearer: {t}", "{t} {t}"]
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


# -- the other carriers: x-api-key, a headers mapping -------------------------------------
async def test_headers_mapping_reads_authorization_then_x_api_key(world: World) -> None:
    bearer = {"authorization": f"Bearer {world.member.token}"}
    by_auth = await world.auth.authenticate_headers(bearer)
    assert by_auth.key_id == world.member.key_id
    by_x = await world.auth.authenticate_headers({"x-api-key": world.admin.token})
    assert by_x.key_id == world.admin.key_id
    with pytest.raises(CredentialMissing):
        await world.auth.authenticate_headers({})
    with pytest.raises(CredentialMissing):
        await world.auth.authenticate_headers({"authorization": " ", "x-api-key": ""})
    with pytest.raises(InvalidToken):
        await world.auth.authenticate_headers({"x-api-key": "sk-nope"})


# -- JWTs as Zhipu's SDKs build them -------------------------------------------------------
def _jwt(key: NewKey, now: int = NOW, ttl: int = 210_000) -> str:
    return build_jwt(key.key_id, key.secret, now, ttl)


async def test_valid_jwt_gives_its_principal(world: World) -> None:
    principal = await world.auth.authenticate(f"Bearer {_jwt(world.member)}")
    assert principal == Principal(key_id=world.member.key_id, org_id=world.org_id, role="member")
    assert (await world.auth.authenticate(_jwt(world.admin))).is_admin  # no "Bearer" either


async def test_expired_jwt_is_refused(world: World) -> None:
    token = _jwt(world.member, ttl=1000)
    world.clock.advance(1 + 60)  # past its expiry and the allowed clock skew
    with pytest.raises(TokenExpired):
        await world.auth.authenticate(f"Bearer {token}")


async def test_jwt_expiring_years_ahead_is_refused(world: World) -> None:
    ten_years = 10 * 365 * 86_400_000
    with pytest.raises(TokenLifetimeTooLong):
        await world.auth.authenticate(f"Bearer {_jwt(world.member, ttl=ten_years)}")
    with pytest.raises(TokenLifetimeTooLong):  # the default bound is a day
        await world.auth.authenticate(f"Bearer {_jwt(world.member, ttl=25 * 3_600_000)}")
    assert await world.auth.authenticate(f"Bearer {_jwt(world.member, ttl=23 * 3_600_000)}")


async def test_the_jwt_lifetime_bound_is_the_authenticators(world: World) -> None:
    auth = Authenticator(world.keys, MASTER, world.clock.now_ms, jwt_max_lifetime_ms=60_000)
    with pytest.raises(TokenLifetimeTooLong):
        await auth.authenticate(f"Bearer {_jwt(world.member)}")  # the SDKs' 3.5 minutes
    assert await auth.authenticate(f"Bearer {_jwt(world.member, ttl=60_000)}")


async def test_jwt_signed_with_another_secret_is_refused(world: World) -> None:
    forged = build_jwt(world.member.key_id, world.admin.secret, NOW)
    with pytest.raises(SignatureInvalid):
        await world.auth.authenticate(f"Bearer {forged}")


async def test_jwt_signed_under_another_master_key_is_refused(world: World) -> None:
    other = derive_secret(b"x" * 32, world.member.key_id)
    with pytest.raises(SignatureInvalid):
        await world.auth.authenticate(f"Bearer {build_jwt(world.member.key_id, other, NOW)}")


async def test_jwt_with_a_wrong_algorithm_is_refused(world: World) -> None:
    import base64

    token = _jwt(world.member)
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        await world.auth.authenticate(f"Bearer {none_header}.{token.split('.', 1)[1]}")


@pytest.mark.parametrize("token", ["a.b.c", "..", "e30.e30.e30", "x.y.z.w"])
async def test_malformed_jwt_is_refused(world: World, token: str) -> None:
    with pytest.raises(InvalidToken):
        await world.auth.authenticate(f"Bearer {token}")


async def test_jwt_for_an_unknown_key_is_refused(world: World) -> None:
    stranger = generate_key(MASTER)  # well formed, never stored
    with pytest.raises(InvalidToken):
        await world.auth.authenticate(f"Bearer {_jwt(stranger)}")


async def test_jwt_of_a_revoked_key_is_refused(world: World) -> None:
    token = _jwt(world.member)
    assert await world.auth.authenticate(f"Bearer {token}")
    await world.keys.revoke(world.member.key_id, NOW + 1)
    with pytest.raises(AuthenticationFailed) as info:
        await world.auth.authenticate(f"Bearer {token}")
    assert "revoked" in info.value.message


async def test_jwt_of_a_key_with_a_random_secret_is_refused(world: World) -> None:
    legacy = generate_key()  # not derived from the master key: cannot be verified
    await world.keys.create(world.org_id, "legacy", "member", legacy, NOW)
    assert await world.auth.authenticate(f"Bearer {legacy.token}")  # raw key still works
    with pytest.raises(InvalidToken):
        await world.auth.authenticate(f"Bearer {_jwt(legacy)}")


async def test_authenticator_without_master_key_refuses_every_jwt(world: World) -> None:
    auth = Authenticator(world.keys, None, lambda: NOW)
    with pytest.raises(InvalidToken):
        await auth.authenticate(f"Bearer {_jwt(world.member)}")


# -- the master key --------------------------------------------------------------------------
def test_master_key_file_is_created_once_owner_only(tmp_path: Path) -> None:
    import stat

    settings = Settings(home=tmp_path / "home", embedded_models=False, secret_key=None)
    first = load_master_key(settings)
    path = settings.home / "secret-key"
    assert len(first) == 32 and path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(settings) == first
    assert sorted(p.name for p in settings.home.iterdir()) == ["secret-key"]  # no leftovers


def test_a_truncated_master_key_file_is_refused(tmp_path: Path) -> None:
    from openmaas.core.errors import ConfigurationError

    settings = Settings(home=tmp_path, embedded_models=False, secret_key=None)
    (tmp_path / "secret-key").write_bytes(b"short")
    with pytest.raises(ConfigurationError):
        load_master_key(settings)


def test_master_key_setting_wins_over_the_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", embedded_models=False, secret_key="s3cret")
    assert load_master_key(settings) == b"s3cret"
    assert not (settings.home / "secret-key").exists()


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ({"authorization": "Bearer a.b"}, "a.b"),
        ({"authorization": "a.b"}, "a.b"),
        ({"x-api-key": "a.b"}, "a.b"),
        ({"x-api-key": "a.b", "authorization": "Bearer a.b"}, "a.b"),
        ({"x-api-key": " a.b ", "authorization": ""}, "a.b"),
    ],
)
def test_presented_token_from_either_header(headers: dict[str, str], token: str) -> None:
    assert presented_token(headers) == token


@pytest.mark.parametrize("name", ["authorization", "x-api-key"])
def test_a_header_sent_twice_is_refused(name: str) -> None:
    # Which one would count is a guess a proxy and the server may make differently; the
    # first one won, so a proxy that appends its own key let the client's pass unseen.
    for second in ("Bearer c.d", "Bearer a.b"):
        headers = Headers(raw=[(name.encode(), b"Bearer a.b"), (name.encode(), second.encode())])
        with pytest.raises(AuthenticationFailed, match=f"more than one {name}"):
            presented_token(headers)
    once = Headers(raw=[(name.encode(), b"Bearer a.b"), (b"x-other", b"1")])
    assert presented_token(once) == "a.b"


def test_two_different_credentials_are_refused() -> None:
    with pytest.raises(AuthenticationFailed, match="different credentials"):
        presented_token({"x-api-key": "a.b", "authorization": "Bearer c.d"})
