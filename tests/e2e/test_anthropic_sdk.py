"""The official ``anthropic`` SDK, exactly as its users call it, against the live server.

Plain text, streaming, counting, auth and errors run on the embedded model; thinking and
tool use run on the scripted ``fake-claude`` (served under the alias ``claude-haiku-4-5``).
"""

from __future__ import annotations

import threading
from typing import Any

import anthropic
import httpx
import pytest

from tests.e2e.live import CHAT_MODEL, LiveServer

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather of a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def client(live: LiveServer, admin_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.base_url, api_key=admin_key, max_retries=0)


def _check_usage_recorded(live: LiveServer, message: Any, model: str) -> dict[str, Any]:
    row = live.usage_row(message.id)
    usage = message.usage
    assert row["prompt_tokens"] == usage.input_tokens + usage.cache_read_input_tokens
    assert row["cached_tokens"] == usage.cache_read_input_tokens
    assert row["completion_tokens"] == usage.output_tokens
    assert usage.cache_creation_input_tokens == 0
    assert row["model"] == model and row["endpoint"] == "messages"
    return row


# -- text -------------------------------------------------------------------------------
def test_create_message(client: anthropic.Anthropic, live: LiveServer) -> None:
    raw = client.messages.with_raw_response.create(
        model=CHAT_MODEL,
        max_tokens=12,
        system="You are a helpful assistant.",
        messages=[{"role": "user", "content": "Name a colour."}],
        extra_body={"temperature": 0, "top_k": 40},  # this SDK version has no such arguments
        metadata={"user_id": "end-user-1"},
    )
    message = raw.parse()
    assert message.id == raw.headers["x-request-id"]
    assert message.type == "message" and message.role == "assistant"
    assert message.model == CHAT_MODEL
    assert message.content and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in {"end_turn", "max_tokens"}
    assert 0 < message.usage.output_tokens <= 12 and message.usage.input_tokens > 0
    row = _check_usage_recorded(live, message, CHAT_MODEL)
    assert row["termination"] == ("length" if message.stop_reason == "max_tokens" else "finished")


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CHAT_MODEL,
        max_tokens=3,
        messages=[{"role": "user", "content": "Write a long story about the sea."}],
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_claude_model_alias_is_served_by_the_local_model(
    client: anthropic.Anthropic, live: LiveServer
) -> None:
    message = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=4,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    )
    assert message.model == CHAT_MODEL
    _check_usage_recorded(live, message, CHAT_MODEL)


def test_stream_text_and_final_usage(client: anthropic.Anthropic, live: LiveServer) -> None:
    with client.messages.stream(
        model=CHAT_MODEL, max_tokens=10, messages=[{"role": "user", "content": "Say hello."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason in {"end_turn", "max_tokens"}
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    _check_usage_recorded(live, final, CHAT_MODEL)


def test_raw_stream_event_sequence(live: LiveServer, admin_key: str) -> None:
    body = {
        "model": CHAT_MODEL,
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    headers = {"x-api-key": admin_key, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST", f"{live.base_url}/v1/messages", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        names = [
            line[len("event: ") :] for line in response.iter_lines() if line.startswith("event: ")
        ]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}


# -- counting ---------------------------------------------------------------------------
def test_count_tokens_is_free(client: anthropic.Anthropic, live: LiveServer) -> None:
    before = live.usage_count()
    count = client.messages.count_tokens(
        model="claude-sonnet-4-6",
        system="Be brief.",
        messages=[{"role": "user", "content": "How many tokens is this message?"}],
        tools=[WEATHER_TOOL],
    )
    assert count.input_tokens > 10
    assert live.usage_count() == before
    # Exact: what generating from the same request reads, tools and template included.
    message = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=1,
        system="Be brief.",
        messages=[{"role": "user", "content": "How many tokens is this message?"}],
        tools=[WEATHER_TOOL],
    )
    assert count.input_tokens == message.usage.input_tokens + (
        message.usage.cache_read_input_tokens or 0
    )
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )


# -- auth -------------------------------------------------------------------------------
def test_bearer_auth_token_works(live: LiveServer, admin_key: str) -> None:
    bearer = anthropic.Anthropic(base_url=live.base_url, auth_token=admin_key, max_retries=0)
    message = bearer.messages.create(
        model=CHAT_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.usage.output_tokens > 0


def test_two_different_credentials_are_refused(live: LiveServer, admin_key: str) -> None:
    body = {"model": CHAT_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    url = f"{live.base_url}/v1/messages"
    conflicting = {"x-api-key": admin_key, "authorization": "Bearer sk-wrong"}
    response = httpx.post(url, json=body, headers=conflicting, timeout=30)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    same = {"x-api-key": admin_key, "authorization": f"Bearer {admin_key}"}
    assert httpx.post(url, json=body, headers=same, timeout=30).status_code == 200


def test_wrong_or_missing_key_is_authentication_error(live: LiveServer) -> None:
    wrong = anthropic.Anthropic(base_url=live.base_url, api_key="sk-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(
            model=CHAT_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    response = httpx.post(f"{live.base_url}/v1/messages", json={}, timeout=10)
    assert response.status_code == 401
    assert response.json()["type"] == "error"


# -- errors -----------------------------------------------------------------------------
def test_unknown_model_is_not_found(client: anthropic.Anthropic, live: LiveServer) -> None:
    before = live.usage_count()
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model="claude-unknown", max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert live.usage_count() == before


def test_invalid_request_is_bad_request_naming_the_field(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=CHAT_MODEL,
            max_tokens=2,
            extra_body={"temperature": 5},
            messages=[{"role": "user", "content": "Hi"}],
        )
    error = info.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "temperature" in error["message"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"max_tokens": None}, "max_tokens"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_invalid_body_over_http(
    live: LiveServer, admin_key: str, patch: dict[str, Any], field: str
) -> None:
    body = {"model": CHAT_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    body.update(patch)
    body = {k: v for k, v in body.items() if v is not None}
    response = httpx.post(
        f"{live.base_url}/v1/messages", json=body, headers={"x-api-key": admin_key}, timeout=10
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and field in error["message"]


def test_error_mid_stream_is_an_error_event(client: anthropic.Anthropic, live: LiveServer) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(
            model="fake-fail-mid", max_tokens=20, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            for _ in stream.text_stream:
                pass
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_full_engine_is_overloaded_and_retryable(live: LiveServer, admin_key: str) -> None:
    # fake-busy has one slot, no queue, and takes 3 s to its first token.
    sdk = anthropic.Anthropic(base_url=live.base_url, api_key=admin_key, max_retries=0)
    outcomes: list[Any] = []

    def call() -> None:
        try:
            outcomes.append(
                sdk.messages.create(
                    model="fake-busy", max_tokens=2, messages=[{"role": "user", "content": "x"}]
                )
            )
        except anthropic.APIStatusError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [o for o in outcomes if isinstance(o, anthropic.APIStatusError)]
    assert len(refused) == 1 and len(outcomes) == 2
    assert isinstance(refused[0], anthropic.OverloadedError)
    assert refused[0].status_code == 529 and int(refused[0].response.headers["retry-after"]) >= 1


# -- thinking and tools (scripted engine) -------------------------------------------------
def test_thinking_and_tool_use_round_trip(client: anthropic.Anthropic, live: LiveServer) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=50,
        messages=[question],
        tools=[WEATHER_TOOL],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert first.model == "fake-claude" and first.stop_reason == "tool_use"
    assert [block.type for block in first.content] == ["thinking", "tool_use"]
    thinking, call = first.content
    assert thinking.type == "thinking" and call.type == "tool_use"
    assert thinking.thinking == "The user wants weather."
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    _check_usage_recorded(live, first, "fake-claude")

    second = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=50,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "none"},
        thinking={"type": "disabled"},
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert [block.type for block in second.content] == ["text"]
    assert second.content[0].text == "Sunny all day."  # type: ignore[union-attr]


def test_streamed_tool_use_is_accumulated_by_the_sdk(
    client: anthropic.Anthropic, live: LiveServer
) -> None:
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=50,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert "message_start" in events and "message_stop" in events
    assert [block.type for block in final.content] == ["thinking", "tool_use"]
    assert final.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 5
    # message_start knew no input count yet (reasoning came first); message_delta's did
    _check_usage_recorded(live, final, "fake-claude")
    assert final.usage.input_tokens > 0


def test_real_model_tool_use_round_trip(client: anthropic.Anthropic, live: LiveServer) -> None:
    """The embedded model, forced to call a tool (llama.cpp constrains its reply), then
    answering from the tool's result: what Claude Code does on every turn."""
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        messages=[question],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"temperature": 0},  # room for the whole constrained reply, repeatably
    )
    assert first.stop_reason == "tool_use"
    calls = [block for block in first.content if block.type == "tool_use"]
    assert calls and calls[0].name == "get_weather" and isinstance(calls[0].input, dict)
    _check_usage_recorded(live, first, CHAT_MODEL)
    second = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=20,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": calls[0].id, "content": "18C, sunny"}
                ],
            },
        ],
    )
    assert second.stop_reason in {"end_turn", "max_tokens", "tool_use"}
    assert second.content and second.usage.input_tokens + second.usage.cache_read_input_tokens > 0


def test_openapi_document_describes_the_messages_routes(live: LiveServer) -> None:
    spec = httpx.get(f"{live.base_url}/openapi.json", timeout=10).json()
    for path, model in (
        ("/v1/messages", "AnthropicMessagesRequest"),
        ("/v1/messages/count_tokens", "AnthropicCountTokensRequest"),
    ):
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["$ref"].endswith("/" + model)
        assert "messages" in spec["components"]["schemas"][model]["properties"]


def test_stream_cut_by_client_is_billed_for_what_was_made(live: LiveServer, admin_key: str) -> None:
    body = {
        "model": "fake-slow",
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Go on."}],
    }
    with httpx.stream(
        "POST",
        f"{live.base_url}/v1/messages",
        json=body,
        headers={"x-api-key": admin_key},
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        deltas = 0
        for line in response.iter_lines():
            deltas += line == "event: content_block_delta"
            if deltas == 6:
                break
    row = live.usage_row(request_id)
    assert row["termination"] == "client_disconnected" and row["endpoint"] == "messages"
    assert 5 <= row["completion_tokens"] < 100
