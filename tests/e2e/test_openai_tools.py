"""Tool calls and reasoning through the official ``openai`` SDK."""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.live import LiveServer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client(live: LiveServer, admin_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=admin_key, max_retries=0)


def test_tool_call_and_reasoning_non_streamed(client: openai.OpenAI, live: LiveServer) -> None:
    reply = client.chat.completions.create(model="fake-agent", messages=ASK, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    assert choice.message.model_extra["reasoning_content"] == "The user wants the weather."
    row = live.usage_row(reply.id)
    assert row["termination"] == "finished"
    assert row["completion_tokens"] == reply.usage.completion_tokens == 6  # 5 words + 1 call


def test_tool_call_streamed_reassembles(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-agent",
        messages=ASK,
        tools=[WEATHER],
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, calls, finish = "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = part.id or entry["id"]
            if part.function:
                entry["name"] += part.function.name or ""
                entry["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning == "The user wants the weather."
    assert finish == "tool_calls"
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": 2}


def test_tool_result_round_trip_and_tool_choice_none(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="fake-agent", messages=ASK, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    follow_up = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"c": 18}'},
    ]
    reply = client.chat.completions.create(
        model="fake-agent", messages=follow_up, tools=[WEATHER], tool_choice="none"
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == "It is sunny."


def test_thinking_can_be_turned_off(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="fake-agent", messages=ASK, reasoning_effort="none"
    )
    assert "reasoning_content" not in (reply.choices[0].message.model_extra or {})
    assert reply.choices[0].message.content == "It is sunny."


def test_unknown_named_tool_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="fake-agent",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    assert info.value.param == "tool_choice.function.name"


def test_embedded_model_makes_a_well_formed_call(client: openai.OpenAI, live: LiveServer) -> None:
    from tests.e2e.live import CHAT_MODEL

    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=ASK,
            tools=[WEATHER],
            tool_choice=choice,
            temperature=0,
            max_tokens=200,
        )
        message = reply.choices[0].message
        if choice == "auto" and not message.tool_calls:
            assert message.content  # answering instead of calling is allowed under auto
            continue
        assert reply.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls  # one or more (parallel) calls, each well formed
        for call in message.tool_calls:
            assert call.id and call.function.name == "get_weather"
            arguments = json.loads(call.function.arguments)
            assert isinstance(arguments, dict) and isinstance(arguments.get("city"), str)
            # compact, as the model was made to write it: no whitespace billed
            assert call.function.arguments == json.dumps(arguments, separators=(",", ":"))
        assert live.usage_row(reply.id)["completion_tokens"] == reply.usage.completion_tokens


def test_embedded_model_answers_from_a_tool_result(client: openai.OpenAI) -> None:
    from tests.e2e.live import CHAT_MODEL

    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        temperature=0,
        max_tokens=60,
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18}'},
        ],
    )
    assert reply.choices[0].message.content
