"""Keys restricted to models and with an expiry, through the admin API, on every protocol:
a model the key may not use is refused as one that does not exist, in each protocol's
shape, before anything is admitted; the model lists show only the key's models; an expired
key is refused as a revoked one is (401)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.accounts.admin import NewOrganization
from openmaas.platform import open_platform
from openmaas.server.app import create_app
from openmaas.settings import Settings
from openmaas.store.schema import usage_records
from tests.support.app import count_rows
from tests.support.clock import ManualClock
from tests.support.waiting import wait_until

FAKES = {
    "fake-chat": {"text": "one two three"},
    "fake-other": {"text": "four five"},
}
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Site:
    client: TestClient
    admin: dict[str, str]
    org: str
    expired: str  # a key of the organization whose expiry passed before the tests began

    def key(self, **body: Any) -> str:
        """A new key of the organization, made through the admin API."""
        reply = self.client.post(
            f"/admin/v1/orgs/{self.org}/keys", json={"name": "k", **body}, headers=self.admin
        )
        assert reply.status_code == 201, reply.text
        return str(reply.json()["key"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("key-restrictions")
    settings = Settings(
        home=root / "home",
        database_url="sqlite+aiosqlite:///" + str(root / "openmaas.db"),
        embedded_models=False,
        fake_models=FAKES,
        model_aliases={"chat-latest": "fake-chat"},
    )

    async def seed() -> tuple[str, str]:
        async with open_platform(settings) as platform:
            await platform.first_run()
            org = await platform.accounts_admin("test").create_org(NewOrganization(name="acme"))
        # made in September 2026 to expire an hour later: long passed for the server's clock
        past = ManualClock()
        async with open_platform(settings, clock=past) as platform:
            old = await platform.accounts_admin("test").issue_key(
                org.id, "old", expires_at_ms=past.now_ms() + 3_600_000
            )
        return org.id, old.token

    org, expired = asyncio.run(seed())
    admin = bearer(settings.admin_key_file.read_text().strip())
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engines")
        yield Site(client, admin, org, expired)


# -- the admin API -------------------------------------------------------------------------


def test_the_admin_api_creates_and_lists_a_restricted_key(site: Site) -> None:
    reply = site.client.post(
        f"/admin/v1/orgs/{site.org}/keys",
        json={"name": "ci", "models": ["fake-chat"], "expires_at": "2099-01-01"},
        headers=site.admin,
    )
    assert reply.status_code == 201, reply.text
    created = reply.json()
    assert created["models"] == ["fake-chat"]
    assert created["expires_at"] == "2099-01-01T00:00:00.000Z"
    assert created["role"] == "member" and created["key"].startswith(created["id"] + ".")
    listed = site.client.get(f"/admin/v1/orgs/{site.org}/keys", headers=site.admin).json()
    mine = next(k for k in listed["data"] if k["id"] == created["id"])
    assert mine["models"] == ["fake-chat"] and "key" not in mine
    assert all("secret" not in str(k) for k in listed["data"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"models": []}, "models"),
        ({"models": "fake-chat"}, "models"),
        ({"expires_at": "2001-01-01"}, "expires_at"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"role": "owner"}, "role"),
    ],
)
def test_the_admin_api_refuses_a_restriction_naming_the_field(
    site: Site, body: dict[str, Any], param: str
) -> None:
    reply = site.client.post(
        f"/admin/v1/orgs/{site.org}/keys", json={"name": "ci", **body}, headers=site.admin
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_the_openapi_document_lists_the_new_fields(site: Site) -> None:
    document = site.client.get("/openapi.json").json()
    operation = document["paths"]["/admin/v1/orgs/{org}/keys"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert {"name", "role", "models", "expires_at"} <= set(schema["properties"])
    assert schema["required"] == ["name"]


# -- the request path: every protocol ------------------------------------------------------


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES}


# (path, body of a request for model, the status and a check of the refusal's shape)
REFUSALS: dict[str, tuple[str, Any, int]] = {
    "openai chat": ("/v1/chat/completions", chat, 404),
    "openai completions": ("/v1/completions", lambda m: {"model": m, "prompt": "hi"}, 404),
    "openai responses": ("/v1/responses", lambda m: {"model": m, "input": "hi"}, 404),
    "openai embeddings": ("/v1/embeddings", lambda m: {"model": m, "input": "hi"}, 404),
    "anthropic messages": (
        "/v1/messages",
        lambda m: {"model": m, "max_tokens": 16, "messages": MESSAGES},
        404,
    ),
    "anthropic count_tokens": (
        "/v1/messages/count_tokens",
        lambda m: {"model": m, "messages": MESSAGES},
        404,
    ),
    "zhipu chat": ("/api/paas/v4/chat/completions", chat, 400),
    "zhipu async": ("/api/paas/v4/async/chat/completions", chat, 400),
    "zhipu embeddings": ("/api/paas/v4/embeddings", lambda m: {"model": m, "input": "hi"}, 400),
}


def refusal_shape(path: str, body: dict[str, Any]) -> str:
    """The refusal's code or type, as its protocol writes it."""
    if path.startswith("/api/paas"):
        return str(body["error"]["code"])  # Zhipu: "1211", the model does not exist
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"
        return str(body["error"]["type"])
    return str(body["error"]["code"])


SHAPE = {"/api/paas": "1211", "/v1/messages": "not_found_error", "/v1/": "model_not_found"}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_model_the_key_may_not_use_is_refused_in_each_protocols_shape(
    site: Site, name: str
) -> None:
    path, body, status = REFUSALS[name]
    token = site.key(models=["fake-chat"])
    before = count_rows(site.client, usage_records)
    reply = site.client.post(path, json=body("fake-other"), headers=bearer(token))
    assert reply.status_code == status, reply.text
    expected = next(code for prefix, code in SHAPE.items() if path.startswith(prefix))
    assert refusal_shape(path, reply.json()) == expected
    assert "fake-other" in reply.text
    assert count_rows(site.client, usage_records) == before  # refused before admission


@pytest.mark.parametrize(
    "name", sorted(n for n in REFUSALS if "embeddings" not in n)
)  # the fakes serve chat only: an allowed chat model is the embeddings routes' 400
def test_the_model_the_key_may_use_is_served_on_every_protocol(site: Site, name: str) -> None:
    path, body, _ = REFUSALS[name]
    token = site.key(models=["fake-chat"])
    reply = site.client.post(path, json=body("fake-chat"), headers=bearer(token))
    assert reply.status_code == 200, reply.text


def test_an_allowed_chat_model_reaches_the_embeddings_routes_kind_check(site: Site) -> None:
    token = site.key(models=["fake-chat"])
    for path in ("/v1/embeddings", "/api/paas/v4/embeddings"):
        reply = site.client.post(
            path, json={"model": "fake-chat", "input": "x"}, headers=bearer(token)
        )
        assert reply.status_code == 400 and "chat model" in reply.text, reply.text


def test_an_alias_of_an_allowed_model_is_allowed_and_a_restriction_by_alias_holds(
    site: Site,
) -> None:
    by_name = site.key(models=["fake-chat"])
    by_alias = site.key(models=["chat-latest"])
    for token in (by_name, by_alias):
        for model in ("fake-chat", "chat-latest"):
            reply = site.client.post(
                "/v1/messages",
                json={"model": model, "max_tokens": 8, "messages": MESSAGES},
                headers=bearer(token),
            )
            assert reply.status_code == 200, (model, reply.text)
        other = site.client.post(
            "/v1/chat/completions", json=chat("fake-other"), headers=bearer(token)
        )
        assert other.status_code == 404


def test_the_model_lists_show_only_the_keys_models(site: Site) -> None:
    token = site.key(models=["fake-chat"])
    for path in ("/v1/models", "/api/paas/v4/models"):
        listed = site.client.get(path, headers=bearer(token)).json()
        assert [m["id"] for m in listed["data"]] == ["fake-chat"]
        everything = site.client.get(path, headers=bearer(site.key())).json()
        assert {m["id"] for m in everything["data"]} == {"fake-chat", "fake-other"}
    assert site.client.get("/v1/models/fake-chat", headers=bearer(token)).status_code == 200
    hidden = site.client.get("/v1/models/fake-other", headers=bearer(token))
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat("fake-chat")),
        ("/v1/messages", {"model": "fake-chat", "max_tokens": 8, "messages": MESSAGES}),
        ("/api/paas/v4/chat/completions", chat("fake-chat")),
        ("/v1/models", None),
    ],
)
def test_an_expired_key_is_refused_like_a_revoked_one(
    site: Site, path: str, body: dict[str, Any] | None
) -> None:
    headers = bearer(site.expired)
    if body is None:
        reply = site.client.get(path, headers=headers)
    else:
        reply = site.client.post(path, json=body, headers=headers)
    assert reply.status_code == 401, reply.text
    assert "expired" in reply.text


def test_an_expired_key_is_refused_by_the_admin_api_too(site: Site) -> None:
    reply = site.client.get("/admin/v1/orgs", headers=bearer(site.expired))
    assert reply.status_code == 401
