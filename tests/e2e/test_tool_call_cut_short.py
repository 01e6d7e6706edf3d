"""A tool call of the embedded model cut by ``max_tokens``, through each protocol's client.

The embedded model writes its calls as constrained JSON (engines/generic_tools.py); cut
short, that JSON must never reach the client as text. Every protocol ends with its
"length" reason and carries the part that parsed: here the call's name is whole after 20
tokens, its arguments are not (see docs/api.md, "Tool calls cut by max_tokens").
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.e2e.live import CHAT_MODEL, LiveServer

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": PARAMETERS,
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
CUT = 20  # tokens: the name is whole, the arguments are not
WRAPPER = '"tool_calls"'


@pytest.fixture(scope="module")
def oai(live: LiveServer, admin_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=admin_key, max_retries=0)


def _check_partial_call(name: str, arguments: str) -> None:
    assert name == "get_weather"
    assert arguments.startswith('{"city":') and WRAPPER not in arguments
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)


# -- OpenAI -------------------------------------------------------------------------------
def test_openai_non_streamed(oai: openai.OpenAI, live: LiveServer) -> None:
    reply = oai.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=[OPENAI_TOOL],
        tool_choice=NAMED,
        temperature=0,
        max_tokens=CUT,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.id and call.type == "function"
    _check_partial_call(call.function.name, call.function.arguments)
    assert reply.usage.completion_tokens == CUT
    assert live.usage_row(reply.id)["completion_tokens"] == CUT


def test_openai_streamed(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=[OPENAI_TOOL],
        tool_choice=NAMED,
        temperature=0,
        max_tokens=CUT,
        stream=True,
        stream_options={"include_usage": True},
    )
    content, name, arguments, finish, usage = "", "", "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or []:
            name += part.function.name or ""
            arguments += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "length" and content == ""
    _check_partial_call(name, arguments)
    assert usage is not None and usage.completion_tokens == CUT


def test_openai_cut_before_the_name_is_whole_has_no_call_and_no_text(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=[OPENAI_TOOL],
        tool_choice=NAMED,
        temperature=0,
        max_tokens=4,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.content and not choice.message.tool_calls


# -- Anthropic ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def claude(live: LiveServer, admin_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.base_url, api_key=admin_key, max_retries=0)


ANTHROPIC_ARGS: dict[str, Any] = {
    "model": CHAT_MODEL,
    "max_tokens": CUT,
    "extra_body": {"temperature": 0},  # this SDK version has no temperature argument
    "messages": ASK,
    "tools": [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": PARAMETERS}
    ],
    "tool_choice": {"type": "tool", "name": "get_weather"},
}


def test_anthropic_non_streamed_and_streamed(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(**ANTHROPIC_ARGS)
    assert message.stop_reason == "max_tokens"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    # input holds the members whose values are whole, as the SDK assembles them from a stream
    assert isinstance(block.input, dict) and set(block.input) <= {"city", "days"}
    assert message.usage.output_tokens == CUT

    with claude.messages.stream(**ANTHROPIC_ARGS) as stream:
        partial = "".join(event.partial_json for event in stream if event.type == "input_json")
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    (streamed,) = final.content
    assert streamed.type == "tool_use" and streamed.name == "get_weather"
    assert streamed.input == block.input
    _check_partial_call(streamed.name, partial)


# -- Zhipu --------------------------------------------------------------------------------
@pytest.fixture()
def zhipu(live: LiveServer, admin_key: str) -> Any:
    with httpx.Client(
        base_url=f"{live.base_url}/api/paas/v4", headers={"Authorization": admin_key}, timeout=60
    ) as client:
        yield client


ZHIPU_BODY: dict[str, Any] = {
    "model": CHAT_MODEL,
    "messages": ASK,
    "tools": [OPENAI_TOOL],
    "tool_choice": NAMED,
    "temperature": 0,
    "max_tokens": CUT,
}


def test_zhipu_non_streamed(zhipu: httpx.Client) -> None:
    body = zhipu.post("/chat/completions", json=ZHIPU_BODY).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert not choice["message"]["content"]
    (call,) = choice["message"]["tool_calls"]
    _check_partial_call(call["function"]["name"], call["function"]["arguments"])


@pytest.mark.parametrize("tool_stream", [False, True])
def test_zhipu_streamed(zhipu: httpx.Client, tool_stream: bool) -> None:
    body = {**ZHIPU_BODY, "stream": True, "tool_stream": tool_stream}
    text = zhipu.post("/chat/completions", json=body).text
    frames = [
        orjson.loads(line[6:])
        for line in text.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    assert frames[-1]["choices"][0]["finish_reason"] == "length"
    deltas = [f["choices"][0]["delta"] for f in frames]
    assert not "".join(d.get("content") or "" for d in deltas)
    parts = [p for d in deltas for p in d.get("tool_calls") or []]
    name = "".join(p["function"].get("name") or "" for p in parts)
    _check_partial_call(name, "".join(p["function"].get("arguments") or "" for p in parts))
