"""POST /v1/responses in-process over the fake engine: items to messages, output items and
the stream's events, stored responses owned by their organization, metering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.orgs import member_keys

FAKES = {
    "fake-echo": {"text": "one two three"},
    "fake-fail-mid": {"text": "a b c d e f", "fail_after_tokens": 3},
    "fake-agent": {
        "text": "It is sunny.",
        "reasoning": "The user wants the weather.",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    },
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    settings = Settings(home=tmp_path / "home", embedded_models=False, fake_models=FAKES)
    mine, other = asyncio.run(member_keys(settings, "mine", "other"))
    with TestClient(create_app(settings)) as client:
        client.get("/readyz")
        yield client, {"Authorization": f"Bearer {mine}"}, {"Authorization": f"Bearer {other}"}


def _events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        event = json.loads(data.removeprefix("data: "))
        assert event["type"] == kind.removeprefix("event: ")
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_a_plain_response(app: tuple[TestClient, dict[str, str], dict[str, str]]) -> None:
    client, auth, _ = app
    reply = client.post(
        "/v1/responses", json={"model": "fake-echo", "input": "hi there"}, headers=auth
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"] == "resp_" + reply.headers["x-request-id"]
    assert body["object"] == "response" and body["status"] == "completed"
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["text"] == "one two three"
    assert body["usage"]["input_tokens"] == 2 and body["usage"]["output_tokens"] == 3


def test_reasoning_and_a_function_call_streamed(
    app: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, auth, _ = app
    request = {
        "model": "fake-agent",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}],
        "tools": [WEATHER],
        "stream": True,
    }
    with client.stream("POST", "/v1/responses", json=request, headers=auth) as reply:
        assert reply.status_code == 200
        events = _events(reply.read().decode())
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds
    assert "response.function_call_arguments.delta" in kinds
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "function_call"]
    call = final["output"][1]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == final["output"]


def test_previous_response_id_continues_the_conversation_of_its_own_organization(
    app: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, auth, other = app
    first = client.post(
        "/v1/responses",
        json={"model": "fake-agent", "input": "Weather?", "tools": [WEATHER]},
        headers=auth,
    ).json()
    call = first["output"][-1]
    follow = {
        "model": "fake-agent",
        "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sun"}],
    }
    second = client.post("/v1/responses", json=follow, headers=auth)
    assert second.status_code == 200, second.text
    # the fake counts prompt words: the user's, the call's output, nothing of the call itself
    assert second.json()["usage"]["input_tokens"] == 2
    assert client.get(f"/v1/responses/{first['id']}", headers=auth).json() == first
    stranger = client.post("/v1/responses", json=follow, headers=other)
    assert stranger.status_code == 404
    assert stranger.json()["error"]["param"] == "previous_response_id"
    assert client.get(f"/v1/responses/{first['id']}", headers=other).status_code == 404


def test_store_false_stores_nothing(
    app: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, auth, _ = app
    body = client.post(
        "/v1/responses", json={"model": "fake-echo", "input": "hi", "store": False}, headers=auth
    ).json()
    assert body["store"] is False
    assert client.get(f"/v1/responses/{body['id']}", headers=auth).status_code == 404
    follow = {"model": "fake-echo", "input": "more", "previous_response_id": body["id"]}
    assert client.post("/v1/responses", json=follow, headers=auth).status_code == 404


def test_what_cannot_be_served_is_refused_by_name(
    app: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, auth, _ = app
    cases = [
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "namespace", "name": "n", "tools": [{"type": "x"}]}]},
            "tools[0].tools[0].type",
        ),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, None),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ]
    for extra, param in cases:
        reply = client.post(
            "/v1/responses", json={"model": "fake-echo", "input": "hi", **extra}, headers=auth
        )
        assert reply.status_code == 400, extra
        if param is not None:
            assert reply.json()["error"]["param"] == param


def test_codex_cli_tools_namespaced_functions_are_offered_and_hosted_tools_ignored(
    app: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    """Codex CLI (0.171) sends function tools, a ``namespace`` of function tools and OpenAI's
    hosted ``web_search``, which it cannot do without: the namespace's functions are offered
    by their own names, the hosted tool is left out, and the request is served (before: 400
    on the namespace, so Codex CLI could not run at all)."""
    client, auth, _ = app
    request = {
        "model": "fake-agent",
        "input": [{"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
                  {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}],
        "tools": [
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {"type": "namespace", "name": "weather_v1", "description": "Weather tools",
             "tools": [WEATHER]},
            {"type": "web_search", "external_web_access": False},
        ],
        "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
        "prompt_cache_key": "a-session",
    }  # fmt: skip
    reply = client.post("/v1/responses", json=request, headers=auth)
    assert reply.status_code == 200, reply.text
    calls = [item for item in reply.json()["output"] if item["type"] == "function_call"]
    assert [c["name"] for c in calls] == ["get_weather"]  # offered from inside the namespace


def test_a_stream_that_breaks_ends_with_response_failed(
    app: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, auth, _ = app
    request = {"model": "fake-fail-mid", "input": "go", "stream": True}
    with client.stream("POST", "/v1/responses", json=request, headers=auth) as reply:
        events = _events(reply.read().decode())
    kinds = [e["type"] for e in events]
    assert kinds.count("response.output_text.delta") == 3
    assert kinds[-2:] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == "a b c "
