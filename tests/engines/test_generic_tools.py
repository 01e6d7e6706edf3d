"""engines/generic_tools.py: tool calling by constrained JSON for models without a format."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.types import Message, Role, Tool, ToolCall, ToolChoice, ToolChoiceKind
from openmaas.engines import generic_tools as gt

WEATHER = Tool(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}},
)
TIME = Tool("get_time", "The time", {"type": "object"})


def test_auto_lets_the_model_answer_or_call() -> None:
    schema = gt.reply_schema((WEATHER, TIME), ToolChoice())
    calls, answer = schema["anyOf"]
    names = [
        b["properties"]["name"]["const"]
        for b in calls["properties"]["tool_calls"]["items"]["anyOf"]
    ]
    assert names == ["get_weather", "get_time"]
    assert answer["required"] == ["content"]
    assert '{"content"' in gt.system_prompt((WEATHER,), ToolChoice())


@pytest.mark.parametrize("kind", [ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED])
def test_required_and_named_force_a_call(kind: ToolChoiceKind) -> None:
    choice = ToolChoice(kind, "get_time" if kind is ToolChoiceKind.NAMED else None)
    schema = gt.reply_schema((WEATHER, TIME), choice)
    assert schema["required"] == ["tool_calls"]
    assert schema["properties"]["tool_calls"]["minItems"] == 1
    names = [
        b["properties"]["name"]["const"]
        for b in schema["properties"]["tool_calls"]["items"]["anyOf"]
    ]
    assert names == (["get_time"] if kind is ToolChoiceKind.NAMED else ["get_weather", "get_time"])
    prompt = gt.system_prompt((WEATHER, TIME), choice)
    assert '{"content"' not in prompt
    if kind is ToolChoiceKind.NAMED:
        assert "get_weather" not in prompt and "'get_time'" in prompt


def test_parse_reply_calls_and_answers() -> None:
    content, calls = gt.parse_reply(
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}', "r"
    )
    assert content is None
    assert calls == (ToolCall("call_r_0", "get_weather", '{"city": "Oslo"}'),)
    assert gt.parse_reply('{"content": "Hello"}', "r") == ("Hello", ())


@given(st.text())
def test_any_reply_parses_without_crashing(text: str) -> None:
    content, calls = gt.parse_reply(text, "r")
    assert content is not None or calls


def test_history_is_flattened_to_plain_roles() -> None:
    history = (
        Message(Role.USER, "Weather?"),
        Message(
            Role.ASSISTANT,
            "",
            reasoning="r",
            tool_calls=(ToolCall("c1", "get_weather", '{"city": "Oslo"}'),),
        ),
        Message(Role.TOOL, '{"c": 3}', tool_call_id="c1"),
    )
    assert gt.needs_flattening(history)
    flat = gt.plain_messages(history)
    assert [m["role"] for m in flat] == ["user", "assistant", "user"]
    assert json.loads(flat[1]["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    }
    assert "c1" in flat[2]["content"] and '{"c": 3}' in flat[2]["content"]
    assert not gt.needs_flattening(history[:1])
