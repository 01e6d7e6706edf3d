"""Administration of organizations and keys, and first-run bootstrap (accounts/admin.py),
through the composition root; each change leaves its audit row."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from openmaas.accounts.admin import DEFAULT_ORG, AccountsAdmin, IssuedKey, NewOrganization
from openmaas.accounts.auth import Authenticator, load_master_key
from openmaas.core.errors import AuthenticationFailed, InvalidRequest, NotFound
from openmaas.core.keys import build_jwt, derive_secret, secret_matches
from openmaas.platform import FIRST_RUN_ACTOR, open_platform
from openmaas.settings import Settings
from openmaas.store.audit import read_audit


def settings_for(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", embedded_models=False)


@asynccontextmanager
async def open_admin(settings: Settings) -> AsyncIterator[AccountsAdmin]:
    async with open_platform(settings) as platform:
        yield platform.accounts_admin("cli:alice")


async def first_run(settings: Settings) -> IssuedKey | None:
    async with open_platform(settings) as platform:
        return await platform.first_run()


def new_org(name: str) -> NewOrganization:
    return NewOrganization(name=name)


async def audit_actions(settings: Settings) -> list[tuple[str, str]]:
    async with open_platform(settings) as platform:
        return [(e.actor, e.action) for e in reversed(await read_audit(platform.database))]


async def authenticate(settings: Settings, token: str):
    async with open_admin(settings) as admin:
        return await Authenticator(admin.keys, load_master_key(settings)).authenticate(
            f"Bearer {token}"
        )


async def test_first_run_creates_default_org_and_admin_key(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    issued = await first_run(settings)
    assert issued is not None
    assert issued.key.role == "admin"
    assert issued.token.count(".") == 1

    async with open_admin(settings) as admin:
        orgs = await admin.orgs.list()
        assert [o.name for o in orgs] == [DEFAULT_ORG]
        keys = await admin.keys.list()
        assert [(k.id, k.role, k.org_id) for k in keys] == [(issued.key.id, "admin", orgs[0].id)]
    # Both are administrative changes: audited like any other.
    assert await audit_actions(settings) == [
        (FIRST_RUN_ACTOR, "org.create"),
        (FIRST_RUN_ACTOR, "key.create"),
    ]


async def test_first_run_writes_an_owner_only_key_file_that_authenticates(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    issued = await first_run(settings)
    assert issued is not None
    key_file = settings.admin_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700
    token = key_file.read_text().strip()
    assert token == issued.token
    principal = await authenticate(settings, token)
    assert principal.is_admin
    assert principal.key_id == issued.key.id


async def test_second_first_run_changes_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    issued = await first_run(settings)
    assert issued is not None
    before = settings.admin_key_file.read_bytes()
    before_mtime = settings.admin_key_file.stat().st_mtime_ns

    assert await first_run(settings) is None
    assert settings.admin_key_file.read_bytes() == before
    assert settings.admin_key_file.stat().st_mtime_ns == before_mtime
    async with open_admin(settings) as admin:
        assert await admin.orgs.count() == 1
        assert len(await admin.keys.list()) == 1
    assert (await authenticate(settings, before.decode().strip())).is_admin


async def test_issue_and_revoke_keys(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with open_admin(settings) as admin:
        created = await admin.create_org(new_org("acme"))
        issued = await admin.issue_key("acme", "ci")  # by name
        by_id = await admin.issue_key(created.id, "ops", role="admin")  # by id
        assert issued.key.role == "member" and issued.key.org_id == created.id
        assert by_id.key.role == "admin"
        assert issued.token.split(".")[0] == issued.key.id
        assert issued.token.split(".")[1] not in issued.key.secret_hash
        # The secret is derived from the master key, so the server can verify SDK JWTs.
        master = load_master_key(settings)
        assert issued.token.split(".")[1] == derive_secret(master, issued.key.id)
        assert secret_matches(derive_secret(master, issued.key.id), issued.key.secret_hash)

    jwt = build_jwt(issued.key.id, issued.token.split(".")[1], time.time_ns() // 10**6)
    assert (await authenticate(settings, jwt)).key_id == issued.key.id

    assert (await authenticate(settings, issued.token)).org_id == created.id

    async with open_admin(settings) as admin:
        await admin.revoke_key(issued.key.id)
        await admin.revoke_key(issued.key.id)  # again: changes nothing, audited once
    assert await audit_actions(settings) == [
        ("cli:alice", "org.create"),
        ("cli:alice", "key.create"),
        ("cli:alice", "key.create"),
        ("cli:alice", "key.revoke"),
    ]
    with pytest.raises(AuthenticationFailed) as info:
        await authenticate(settings, issued.token)
    assert "revoked" in info.value.message


async def test_admin_refuses_bad_input(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with open_admin(settings) as admin:
        await admin.create_org(new_org("acme"))
        with pytest.raises(InvalidRequest):
            await admin.create_org(new_org("acme"))
        with pytest.raises(InvalidRequest):
            await admin.issue_key("acme", "k", role="owner")  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await admin.issue_key("nobody", "k")
        with pytest.raises(NotFound):
            await admin.revoke_key("om" + "0" * 16)
        assert await admin.keys.list() == []
    assert await audit_actions(settings) == [("cli:alice", "org.create")]  # refusals: no row


async def test_a_key_restricted_to_models_with_an_expiry_is_stored_and_audited(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    later = int(time.time() * 1000) + 3_600_000
    async with open_admin(settings) as admin:
        await admin.create_org(new_org("acme"))
        issued = await admin.issue_key(
            "acme", "ci", models=["glm-4", " fake-chat ", "glm-4"], expires_at_ms=later
        )
        stored = await admin.keys.get(issued.key.id)
    assert stored is not None
    assert stored.models == frozenset({"glm-4", "fake-chat"}) and stored.expires_at_ms == later
    async with open_platform(settings) as platform:
        created = next(e for e in await read_audit(platform.database) if e.action == "key.create")
    assert created.after is not None
    assert created.after["models"] == ["fake-chat", "glm-4"]
    assert created.after["expires_at"].endswith("Z")


@pytest.mark.parametrize(
    ("models", "expires_in_ms", "field"),
    [([], None, "models"), ([" "], None, "models"), (None, -1, "expires_at")],
    ids=["no-model", "blank-model", "expiry-passed"],
)
async def test_a_restriction_that_cannot_work_is_refused(
    tmp_path: Path, models: list[str] | None, expires_in_ms: int | None, field: str
) -> None:
    settings = settings_for(tmp_path)
    expires = None if expires_in_ms is None else int(time.time() * 1000) + expires_in_ms
    async with open_admin(settings) as admin:
        await admin.create_org(new_org("acme"))
        with pytest.raises(InvalidRequest) as info:
            await admin.issue_key("acme", "ci", models=models, expires_at_ms=expires)
        assert info.value.param == field
        assert await admin.keys.list() == []
