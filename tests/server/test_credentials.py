"""Credentials over HTTP, in every protocol's shape: a Zhipu SDK JWT whose ``exp`` lies
beyond ``OPENMAAS_JWT_MAX_LIFETIME_SECONDS`` is a 401, and so is a request that sends
``Authorization`` (or ``x-api-key``) more than once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.accounts.admin import NewOrganization
from openmaas.core.keys import build_jwt, split_key
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings

MODEL = "fake-echo"
MESSAGES = [{"role": "user", "content": "hi"}]
HOUR_MS = 3_600_000

# (path, body, how the protocol's 401 body is recognized)
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
    ("/v1/messages", {"model": MODEL, "messages": MESSAGES, "max_tokens": 5}),
    ("/api/paas/v4/chat/completions", {"model": MODEL, "messages": MESSAGES}),
]


def _is_a_401_in_its_protocols_shape(path: str, reply: Any) -> bool:
    body = reply.json()
    if reply.status_code != 401:
        return False
    if path.startswith("/v1/messages"):
        return bool(body["type"] == "error" and body["error"]["type"] == "authentication_error")
    if path.startswith("/api/paas/v4"):
        return bool(body["error"]["code"] == "1002")
    return bool(body["error"]["code"] == "invalid_api_key")


async def _member_key(settings: Settings) -> str:
    async with open_platform(settings) as platform:
        accounts = platform.accounts_admin("test")
        org = await accounts.create_org(NewOrganization(name="acme"))
        return (await accounts.issue_key(org.id, "app")).token


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    settings = Settings(
        home=tmp_path_factory.mktemp("credentials") / "home",
        embedded_models=False,
        fake_models={MODEL: {"text": "a b"}},
        jwt_max_lifetime_seconds=2 * 3600,
    )
    key = asyncio.run(_member_key(settings))
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        yield client, key


def _jwt(key: str, ttl_ms: int) -> str:
    key_id, secret = split_key(key)
    return build_jwt(key_id, secret, int(time.time() * 1000), ttl_ms)


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=lambda r: str(r))
def test_a_jwt_expiring_beyond_the_setting_is_a_401(
    site: tuple[TestClient, str], path: str, body: dict[str, Any]
) -> None:
    client, key = site
    for ttl in (3 * HOUR_MS, 10 * 365 * 24 * HOUR_MS, 2**63 - 1 - int(time.time() * 1000)):
        reply = client.post(path, json=body, headers={"Authorization": _jwt(key, ttl)})
        assert _is_a_401_in_its_protocols_shape(path, reply), reply.text
        assert "'exp'" in reply.json()["error"]["message"]
    within = client.post(path, json=body, headers={"Authorization": _jwt(key, HOUR_MS)})
    assert within.status_code == 200, within.text


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=lambda r: str(r))
@pytest.mark.parametrize("name", ["Authorization", "x-api-key"])
def test_a_credential_header_sent_twice_is_a_401(
    site: tuple[TestClient, str], path: str, body: dict[str, Any], name: str
) -> None:
    client, key = site
    stranger = "om0123456789abcdef." + "x" * 43
    for first, second in ((key, stranger), (stranger, key), (key, key)):
        headers = [(name, f"Bearer {first}"), (name, f"Bearer {second}")]
        reply = client.post(path, json=body, headers=headers)
        assert reply.status_code == 401, reply.text
        message = reply.json()["error"]["message"]
        assert f"more than one {name.lower()}" in message.lower()
