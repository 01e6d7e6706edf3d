"""The playground and the SDK page (server/console/play.py): the key the playground
makes (the session's person's, one model, an hour, revoked at sign-out), the stream it
reads through the public API with reasoning apart, and base URLs from the request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.people import World, csrf_of, make_world, sign_in
from tests.support.waiting import wait_until

FAKES = {
    "fake-chat": {"text": "one two three"},
    "fake-reasoner": {
        "reasoning": "let me think",
        "text": "the answer",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Beijing"}}],
    },
}


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


def playground_key(client: TestClient, org: str, model: str) -> dict[str, Any]:
    page = client.get(f"/console/orgs/{org}/playground")
    assert page.status_code == 200
    reply = client.post(
        f"/console/orgs/{org}/playground/key",
        data={"csrf": csrf_of(page), "model": model},
        headers={"Origin": "https://testserver"},  # what fetch() sends
    )
    assert reply.status_code == 201, reply.text
    assert reply.headers["cache-control"] == "no-store"
    return dict(reply.json())


def stream(client: TestClient, token: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion, as the page's script reads them."""
    reply = client.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 200, reply.text
    frames = [f.removeprefix("data: ") for f in reply.text.split("\n\n") if f.strip()]
    assert frames[-1] == "[DONE]"
    return [json.loads(f) for f in frames[:-1]]


def test_the_playground_key_is_the_persons_for_one_model_and_an_hour(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    made = playground_key(client, world.org_a, "fake-reasoner")
    assert made["model"] == "fake-reasoner" and made["key"].startswith(made["id"] + ".")
    chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    other = client.post(
        "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {made['key']}"}
    )
    assert other.status_code == 404  # restricted to the model it was made for
    row = client.get(f"/console/orgs/{world.org_a}/keys").text.split(f'data-key="{made["id"]}"')[1]
    row = row.split("</tr>")[0]
    assert "member@example.com" in row and "fake-reasoner" in row and "until " in row


def test_the_stream_carries_reasoning_apart_from_the_answer_and_tool_calls(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    token = playground_key(client, world.org_a, "fake-reasoner")["key"]
    messages = [{"role": "user", "content": "weather?"}]
    plain = stream(client, token, {"model": "fake-reasoner", "messages": messages})
    deltas = [c["choices"][0]["delta"] for c in plain if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    answer = "".join(d.get("content") or "" for d in deltas)
    assert reasoning.split() == ["let", "me", "think"] and answer.split() == ["the", "answer"]
    assert plain[-1]["usage"]["completion_tokens"] > 0  # what the page shows under the turn
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    with_tools = stream(
        client,
        token,
        {"model": "fake-reasoner", "messages": messages, "tools": [tool], "temperature": 0.2},
    )
    calls = [
        call
        for c in with_tools
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(c["function"].get("arguments") or "" for c in calls)
    assert json.loads(arguments) == {"city": "Beijing"}


def test_signing_out_revokes_the_sessions_playground_keys_only(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    keys = f"/console/orgs/{world.org_a}/keys"
    own = client.post(keys, data={"csrf": csrf_of(client.get(keys)), "name": "kept"})
    kept = own.text.split('id="new-key" class="mono" readonly value="')[1].split('"')[0]
    played = playground_key(client, world.org_a, "fake-chat")["key"]
    for token in (kept, played):
        reply = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200
    out = client.post(
        "/console/sign-out", data={"csrf": csrf_of(client.get(keys))}, follow_redirects=False
    )
    assert out.status_code == 303

    def refused(token: str) -> bool:
        reply = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        return reply.status_code == 401

    wait_until(lambda: refused(played), what="the playground key refused after sign-out")
    assert not refused(kept)


def test_a_model_not_served_gets_no_key(console: tuple[TestClient, World]) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    page = client.get(f"/console/orgs/{world.org_a}/playground")
    reply = client.post(
        f"/console/orgs/{world.org_a}/playground/key",
        data={"csrf": csrf_of(page), "model": "no-such-model"},
    )
    assert reply.status_code == 400 and "no-such-model" in reply.json()["error"]


def test_the_playground_page_has_its_controls_code_and_no_inline_script(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "member@example.com")
    page = client.get(f"/console/orgs/{world.org_a}/playground")
    html = unescape(page.text)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in html and " on" + "click=" not in html  # no inline code
    for control in ("play-model", "play-temperature", "play-max-tokens", "play-tools"):
        assert f'id="{control}"' in html
    assert '<option value="fake-reasoner"' in html
    assert "curl https://testserver/v1/chat/completions" in html
    assert 'OpenAI(base_url="https://testserver/v1"' in html
    assert 'base_url="https://testserver/api/paas/v4/"' in html
    assert "/playground" in client.get(f"/console/orgs/{world.org_a}/keys").text  # in the nav


def test_a_viewer_has_no_playground_but_has_the_sdk_page(
    console: tuple[TestClient, World],
) -> None:
    client, world = console
    sign_in(client, "viewer@example.com")
    assert client.get(f"/console/orgs/{world.org_a}/playground").status_code == 403
    assert "/playground" not in client.get(f"/console/orgs/{world.org_a}/keys").text
    assert client.get(f"/console/orgs/{world.org_a}/sdk").status_code == 200


@pytest.mark.parametrize(
    ("base", "headers", "lang_text"),
    [
        ("https://testserver", {}, "Use the API from your code"),
        ("http://gpu.example.cn:8443", {"Accept-Language": "zh-CN,zh;q=0.9"}, "在代码中调用 API"),
    ],
)
def test_the_sdk_page_gives_this_servers_base_urls_in_both_languages(
    console: tuple[TestClient, World], base: str, headers: dict[str, str], lang_text: str
) -> None:
    client, world = console
    client.base_url = base
    sign_in(client, "viewer@example.com")
    html = unescape(client.get(f"/console/orgs/{world.org_a}/sdk", headers=headers).text)
    assert lang_text in html
    assert f'id="url-openai">{base}/v1<' in html
    assert f'id="url-zhipu">{base}/api/paas/v4/<' in html
    assert f'id="url-anthropic">{base}<' in html
    assert f"export ANTHROPIC_BASE_URL={base}\n" in html
    assert f'OpenAI(base_url="{base}/v1"' in html and "ZhipuAiClient(" in html
