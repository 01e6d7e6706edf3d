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
    # a named tool is called once; otherwise parallel calls are allowed
    assert schema["properties"]["tool_calls"].get("maxItems") == (
        1 if kind is ToolChoiceKind.NAMED else None
    )
    names = [
        b["properties"]["name"]["const"]
        for b in schema["properties"]["tool_calls"]["items"]["anyOf"]
    ]
    assert names == (["get_time"] if kind is ToolChoiceKind.NAMED else ["get_weather", "get_time"])
    prompt = gt.system_prompt((WEATHER, TIME), choice)
    assert '{"content"' not in prompt
    if kind is ToolChoiceKind.NAMED:
        assert "get_weather" not in prompt and "'get_time'" in prompt


def test_the_reply_holds_only_the_listed_properties() -> None:
    """A small model given room for extra keys fills it (copying "type", "description" ...
    from the tool listing into the arguments); every object without its own
    additionalProperties is closed, the wrapper's and the arguments' alike."""
    nested = Tool(
        "book",
        "Book a trip",
        {
            "type": "object",
            "properties": {
                "to": {"type": "object", "properties": {"city": {"type": "string"}}},
                "extra": {"type": "object", "additionalProperties": True},
                "legs": {"type": "array", "items": {"type": "object", "properties": {}}},
            },
        },
    )
    schema = gt.reply_schema((WEATHER, nested), ToolChoice(ToolChoiceKind.REQUIRED))
    assert schema["additionalProperties"] is False
    weather, book = schema["properties"]["tool_calls"]["items"]["anyOf"]
    assert weather["additionalProperties"] is False
    assert weather["properties"]["arguments"]["additionalProperties"] is False
    arguments = book["properties"]["arguments"]
    assert arguments["properties"]["to"]["additionalProperties"] is False
    assert arguments["properties"]["extra"]["additionalProperties"] is True
    assert arguments["properties"]["legs"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in WEATHER.parameters  # the caller's schema is untouched
    answer = gt.reply_schema((WEATHER,), ToolChoice())["anyOf"][1]
    assert answer["additionalProperties"] is False


def test_prompt_and_history_show_compact_json() -> None:
    """The model is shown the compact form it is constrained to write."""
    prompt = gt.system_prompt((WEATHER,), ToolChoice())
    assert '{"tool_calls":[{"name":' in prompt and '{"content":' in prompt
    assert '"parameters":{"type":"object"' in prompt
    (turn,) = gt.plain_messages(
        (Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "t", '{"a": 1}'),)),)
    )
    assert turn["content"] == '{"tool_calls":[{"name":"t","arguments":{"a":1}}]}'


def test_parse_reply_calls_and_answers() -> None:
    reply = gt.parse_reply(
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}', "r"
    )
    assert reply.complete and reply.content is None
    assert reply.calls == (ToolCall("call_r_0", "get_weather", '{"city": "Oslo"}'),)
    assert gt.parse_reply('{"content": "Hello"}', "r") == gt.Reply("Hello", (), True)


def _wrapper(calls: list[tuple[str, dict[str, object]]], compact: bool) -> str:
    body = {"tool_calls": [{"name": name, "arguments": args} for name, args in calls]}
    return json.dumps(body, separators=(",", ":")) if compact else json.dumps(body, indent=2)


CUT = '{"tool_calls":[{"name":"get_weather","arguments":{"city":"Oslo"}},{"name":"get_time",'


def test_a_reply_cut_short_never_leaks_the_wrapper() -> None:
    # Cut inside the second call's arguments: the first call is whole, the second has its
    # name and the arguments so far.
    reply = gt.parse_reply(CUT + '"arguments":{"zone":"Eu', "r")
    assert not reply.complete and reply.content is None
    assert reply.calls == (
        ToolCall("call_r_0", "get_weather", '{"city":"Oslo"}'),
        ToolCall("call_r_1", "get_time", '{"zone":"Eu'),
    )
    # Cut after the name, before the arguments began: the call, with no arguments yet.
    assert gt.parse_reply(CUT + '"argu', "r").calls[1] == ToolCall("call_r_1", "get_time", "")
    # Cut inside a name: that call is left out.
    assert gt.parse_reply(CUT[:-12], "r").calls == (
        ToolCall("call_r_0", "get_weather", '{"city":"Oslo"}'),
    )
    # Cut before any name is whole: nothing at all, and no text.
    for text in ("", "{", '{"tool_calls":[{"name":"get_wea', '{\n  "tool_calls": [\n   '):
        assert gt.parse_reply(text, "r") == gt.Reply(None, (), False)


def test_an_answer_cut_short_is_its_text_so_far() -> None:
    assert gt.parse_reply('{"content":"Hello, wor', "r") == gt.Reply("Hello, wor", (), False)
    # An escape cut in the middle is left out until it is whole.
    assert gt.parse_reply('{"content":"caf\\u00', "r").content == "caf"
    assert gt.parse_reply('{"content":"a\\', "r").content == "a"
    assert gt.parse_reply('{"content":"a\\nb', "r").content == "a\nb"
    assert gt.parse_reply('{"cont', "r") == gt.Reply(None, (), False)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["get_weather", "get_time"]),
            st.dictionaries(st.text(max_size=5), st.text(max_size=8) | st.integers(), max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
    st.data(),
)
def test_every_cut_of_a_call_reply_yields_whole_calls_then_at_most_one_partial(
    calls: list[tuple[str, dict[str, object]]], compact: bool, data: st.DataObject
) -> None:
    text = _wrapper(calls, compact)
    cut = data.draw(st.integers(0, len(text) - 1))
    reply = gt.parse_reply(text[:cut], "r")
    assert not reply.complete and reply.content is None
    assert len(reply.calls) <= len(calls)
    for index, call in enumerate(reply.calls):
        name, arguments = calls[index]
        assert call.id == f"call_r_{index}" and call.name == name
        if index < len(reply.calls) - 1:
            assert json.loads(call.arguments) == arguments
        else:  # the last one may be cut: its arguments are a prefix of the whole
            whole = gt.parse_reply(text, "r").calls[index].arguments
            assert whole.startswith(call.arguments)


@given(st.text())
def test_any_reply_parses_without_crashing(text: str) -> None:
    reply = gt.parse_reply(text, "r")
    if reply.content is not None:
        assert reply.complete  # wrapper text is never passed on as an answer


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
