"""LiteLLM as a client library (``litellm.completion``, streamed, ``litellm.embedding``),
exactly as its users point it at an OpenAI-compatible server, against a live server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.live import CHAT_MODEL, EMBEDDING_MODEL, LiveServer

# LiteLLM fetches its model price list from the internet on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402


@pytest.fixture()
def server(live: LiveServer, admin_key: str) -> Iterator[dict[str, Any]]:
    yield {"api_base": f"{live.base_url}/v1", "api_key": admin_key, "num_retries": 0}


def test_completion(server: dict[str, Any], live: LiveServer) -> None:
    reply = litellm.completion(
        model="openai/fake-echo", messages=[{"role": "user", "content": "count"}], **server
    )
    assert reply.choices[0].message.content == "one two three four five"
    assert reply.usage.completion_tokens == 5
    assert live.usage_row(reply.id)["endpoint"] == "chat.completions"


def test_completion_streamed_on_the_embedded_model(server: dict[str, Any]) -> None:
    chunks = list(
        litellm.completion(
            model=f"openai/{CHAT_MODEL}",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=12,
            stream=True,
            **server,
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_completion_with_tools(server: dict[str, Any]) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    reply = litellm.completion(
        model="openai/fake-agent",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool],
        **server,
    )
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert reply.choices[0].finish_reason == "tool_calls"


def test_embedding(server: dict[str, Any]) -> None:
    result = litellm.embedding(
        model=f"openai/{EMBEDDING_MODEL}", input=["hello", "world"], **server
    )
    vectors = [item["embedding"] for item in result.data]
    assert [len(v) for v in vectors] == [384, 384]
    assert result.usage.prompt_tokens > 0
