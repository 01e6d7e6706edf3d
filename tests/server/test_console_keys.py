"""The console's key form: a key restricted to models and with an expiry, made by a person,
works for its models only, is listed with both, and its restriction is in the audit log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.people import World, make_world, post_form, sign_in
from tests.support.waiting import wait_until

FAKES = {"fake-chat": {"text": "one two three"}, "fake-other": {"text": "four"}}


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[TestClient, World]]:
    settings = Settings(
        home=tmp_path / "home",
        database_url="sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db"),
        embedded_models=False,
        fake_models=FAKES,
    )
    world = asyncio.run(make_world(settings))
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engines")
        yield client, world


def new_token(page: str) -> str:
    return page.split('id="new-key" class="mono" readonly value="')[1].split('"')[0]


def chat(client: TestClient, token: str, model: str) -> int:
    reply = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {token}"},
    )
    return reply.status_code


def test_a_key_made_in_the_console_for_one_model_with_an_expiry(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    form = client.get(keys).text
    assert 'name="model.fake-chat"' in form and 'name="model.fake-other"' in form
    assert '<option value="7d">in 7 days</option>' in form
    made = post_form(client, keys, keys, name="one-model", expires="7d", **{"model.fake-chat": "1"})
    assert made.status_code == 201, made.text
    token = new_token(made.text)
    assert chat(client, token, "fake-chat") == 200
    assert chat(client, token, "fake-other") == 404
    listed = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).json()
    assert [m["id"] for m in listed["data"]] == ["fake-chat"]
    row = client.get(keys).text.split(f'data-key="{token.split(".")[0]}"')[1].split("</tr>")[0]
    assert '<span class="mono">fake-chat</span>' in row and "fake-other" not in row
    assert "until " in row  # its expiry, a week from now
    audit = client.portal.call(audit_of_creation, client, token.split(".")[0])  # type: ignore[union-attr]
    assert audit["models"] == ["fake-chat"] and audit["expires_at"].endswith("Z")


async def audit_of_creation(client: TestClient, key_id: str) -> dict[str, Any]:
    from openmaas.store.audit import read_audit
    from tests.support.app import app_state

    entries = await read_audit(app_state(client).platform.database, 100)
    entry = next(e for e in entries if e.action == "key.create" and e.target == key_id)
    assert entry.actor.startswith("user:") and entry.after is not None
    return dict(entry.after)


def test_a_key_for_every_model_is_listed_as_such(console: tuple[TestClient, World]) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    made = post_form(client, keys, keys, name="any")
    token = new_token(made.text)
    assert chat(client, token, "fake-other") == 200
    row = client.get(keys).text.split(f'data-key="{token.split(".")[0]}"')[1].split("</tr>")[0]
    assert "every model" in row and "until" not in row


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ({"model.no-such-model": "1"}, "There is no model “no-such-model”"),
        ({"expires": "forever"}, "not one of the choices"),
    ],
)
def test_a_restriction_that_cannot_be_made_is_refused_on_the_page(
    console: tuple[TestClient, World], fields: dict[str, str], shown: str
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    refused = post_form(client, keys, keys, name="nope", **fields)
    assert refused.status_code == 400 and shown in refused.text
    assert ">nope<" not in client.get(keys).text
