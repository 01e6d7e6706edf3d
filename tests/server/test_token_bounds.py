"""A request's token budget is bounded at the edge, in every protocol: a ``max_tokens`` (or
``max_completion_tokens``, ``max_output_tokens``) above ``MAX_TOKENS_LIMIT`` is a 400 naming
the parameter, and no engine sees it (llama.cpp reads the value as a 32-bit integer: 10^18
wrapped around to a negative number, 2^63 to a valid one)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.accounts.admin import NewOrganization
from openmaas.core.types import MAX_TOKENS_LIMIT
from openmaas.engines.base import ModelKind
from openmaas.engines.fake import FakeEngine
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.server.state import AppState
from openmaas.settings import Settings

MODEL = "fake-echo"
MESSAGES = [{"role": "user", "content": "hi"}]
ANTHROPIC = {"anthropic-version": "2023-06-01"}

# (path, body without the bounded field, the field)
ROUTES: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}, "max_completion_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi"}, "max_tokens"),
    ("/v1/responses", {"model": MODEL, "input": "hi", "store": False}, "max_output_tokens"),
    ("/v1/messages", {"model": MODEL, "messages": MESSAGES}, "max_tokens"),
    ("/api/paas/v4/chat/completions", {"model": MODEL, "messages": MESSAGES}, "max_tokens"),
    ("/api/paas/v4/async/chat/completions", {"model": MODEL, "messages": MESSAGES}, "max_tokens"),
]


async def _member_key(settings: Settings) -> str:
    async with open_platform(settings) as platform:
        accounts = platform.accounts_admin("test")
        org = await accounts.create_org(NewOrganization(name="acme"))
        return (await accounts.issue_key(org.id, "app")).token


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    home = tmp_path_factory.mktemp("bounds") / "home"
    settings = Settings(home=home, embedded_models=False, fake_models={MODEL: {"text": "a b"}})
    key = asyncio.run(_member_key(settings))
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        yield client, key


def _fake(client: TestClient) -> FakeEngine:
    state: AppState = client.app.state.openmaas  # type: ignore[attr-defined]
    engine = state.catalog.for_kind(MODEL, ModelKind.CHAT).engine
    assert isinstance(engine, FakeEngine)
    return engine


def _post(client: TestClient, key: str, path: str, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {key}", **ANTHROPIC}
    return client.post(path, json=body, headers=headers)


@pytest.mark.parametrize("value", [MAX_TOKENS_LIMIT + 1, 10**18, 2**63], ids=str)
@pytest.mark.parametrize(("path", "body", "field"), ROUTES, ids=lambda r: str(r))
def test_a_token_budget_above_the_limit_is_a_400_naming_it(
    site: tuple[TestClient, str], path: str, body: dict[str, Any], field: str, value: int
) -> None:
    client, key = site
    started = _fake(client).stats.streams_started
    reply = _post(client, key, path, {**body, field: value})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert field in error["message"] and str(MAX_TOKENS_LIMIT) in error["message"]
    if path.startswith("/v1/") and path != "/v1/messages":  # OpenAI's shape names it in param
        assert error["param"] == field
    assert _fake(client).stats.streams_started == started  # no engine saw it


@pytest.mark.parametrize(("path", "body", "field"), ROUTES, ids=lambda r: str(r))
def test_the_limit_itself_is_accepted(
    site: tuple[TestClient, str], path: str, body: dict[str, Any], field: str
) -> None:
    client, key = site
    reply = _post(client, key, path, {**body, field: MAX_TOKENS_LIMIT})
    assert reply.status_code == 200, reply.text
