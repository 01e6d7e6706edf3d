"""Anthropic Messages wire JSON <-> core types (protocols/anthropic/adapter.py)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from openmaas.core.assembly import Assembler
from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
    Finished,
    FinishReason,
    Message,
    ReasoningDelta,
    ResponseFormatKind,
    Role,
    TextDelta,
    ToolCallDelta,
    ToolChoiceKind,
    Usage,
)
from openmaas.protocols.anthropic.adapter import (
    count_request,
    message_response,
    messages_request,
    parse_body,
    stop_reason,
    tool_input,
    usage_json,
)
from openmaas.protocols.anthropic.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
)

RID = "01J0000000000000000000000A"


def _body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


def _request(**fields: Any) -> Any:
    body = parse_body(orjson.dumps(_body(**fields)), AnthropicMessagesRequest)
    return messages_request(body, RID, "served")


def _invalid(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        _request(**fields)
    return info.value


# -- parsing and validation -------------------------------------------------------------
def test_minimal_request_maps_to_core() -> None:
    request = _request()
    assert request.request_id == RID and request.model == "served"
    assert request.messages is not None and len(request.messages) == 1
    assert request.messages[0].role is Role.USER and request.messages[0].content == "hi"
    assert request.sampling.max_tokens == 16
    assert request.tools == () and request.tool_choice.kind is ToolChoiceKind.AUTO
    assert request.thinking.enabled is None and request.user is None


def test_sampling_fields_and_metadata() -> None:
    request = _request(
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        stop_sequences=["END", "\n\n"],
        metadata={"user_id": "u-1"},
    )
    assert request.sampling.temperature == 0.5 and request.sampling.top_p == 0.9
    assert request.sampling.stop == ("END", "\n\n")
    assert request.user == "u-1"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"not json", None),
        (b"[1]", None),
    ],
)
def test_malformed_bodies(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(raw, AnthropicMessagesRequest)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"thinking": {"type": "enabled", "budget_tokens": 0}}, "thinking.budget_tokens"),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        ({"tools": [{"description": "no name"}]}, "tools[0].name"),
        ({"stop_sequences": "END"}, "stop_sequences"),
    ],
)
def test_invalid_fields_are_named(fields: dict[str, Any], param: str) -> None:
    body = _body(**fields)
    if fields.get("max_tokens", 1) is None:
        del body["max_tokens"]
    with pytest.raises(InvalidRequest) as info:
        parse_body(orjson.dumps(body), AnthropicMessagesRequest)
    assert info.value.param == param
    assert param in info.value.message


def test_system_as_string_and_as_blocks() -> None:
    request = _request(system="Be brief.")
    assert request.messages is not None
    assert request.messages[0].role is Role.SYSTEM and request.messages[0].content == "Be brief."
    blocks = [
        {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Two."},
    ]
    request = _request(system=blocks)
    assert request.messages is not None and request.messages[0].content == "One.\nTwo."
    error = _invalid(system=[{"type": "image", "source": {}}])
    assert error.param == "system[0]"


def test_system_turns_are_folded_into_the_system_prompt_in_order() -> None:
    """Anthropic's mid-conversation system messages (Claude Code sends its environment as
    one): every chat template takes a leading system message, not all take a later one."""
    request = _request(
        system="Be brief.",
        messages=[
            {"role": "user", "content": "q1"},
            {"role": "system", "content": "Env."},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {
                "role": "system",
                "content": [{"type": "text", "text": "Now.", "cache_control": {"type": "x"}}],
                "output_config": {"effort": "low"},
            },
        ],
    )
    assert request.messages is not None
    assert [(m.role, m.content) for m in request.messages] == [
        (Role.SYSTEM, "Be brief.\n\nEnv.\n\nNow."),
        (Role.USER, "q1"),
        (Role.ASSISTANT, "a1"),
        (Role.USER, "q2"),
    ]
    only_turn = _request(
        messages=[{"role": "user", "content": "q"}, {"role": "system", "content": "S"}]
    )
    assert only_turn.messages is not None and only_turn.messages[0] == Message(Role.SYSTEM, "S")


def test_a_system_turn_holds_text_only() -> None:
    error = _invalid(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "image"}]},
        ]
    )
    assert error.param == "messages[1].content[1]"


def test_claude_codes_billing_block_is_not_part_of_the_prompt() -> None:
    billing = {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.1.abc;"}
    request = _request(system=[billing, {"type": "text", "text": "You are a coder."}])
    assert request.messages is not None and request.messages[0].content == "You are a coder."
    alone = _request(system=[billing])
    assert alone.messages is not None and [m.role for m in alone.messages] == [Role.USER]


def test_user_text_blocks_are_joined() -> None:
    request = _request(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert request.messages is not None and request.messages[0].content == "a\nb"


def test_tool_round_trip_maps_to_calls_and_tool_messages() -> None:
    request = _request(
        tools=[
            {
                "name": "get_weather",
                "description": "Weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should call it.", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "timeout"}],
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    )
    assert request.tools[0].name == "get_weather"
    assert request.tools[0].parameters["properties"]["city"] == {"type": "string"}
    assert request.tool_choice.kind is ToolChoiceKind.NAMED
    assert request.tool_choice.name == "get_weather"
    messages = request.messages
    assert messages is not None
    assert [m.role for m in messages] == [
        Role.USER,
        Role.ASSISTANT,
        Role.TOOL,
        Role.TOOL,
        Role.USER,
    ]
    assistant = messages[1]
    assert assistant.content == "Let me check." and assistant.reasoning == "I should call it."
    (call,) = assistant.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == (
        "toolu_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert (messages[2].tool_call_id, messages[2].content) == ("toolu_1", "18C sunny")
    assert (messages[3].tool_call_id, messages[3].content) == ("toolu_2", "Error: timeout")
    assert messages[4].content == "And tomorrow?"


def test_redacted_thinking_is_dropped() -> None:
    request = _request(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "xx"},
                    {"type": "text", "text": "a"},
                ],
            },
            {"role": "user", "content": "q2"},
        ]
    )
    assert request.messages is not None and request.messages[1].reasoning is None


def test_an_omitted_thinking_block_sent_back_is_no_reasoning() -> None:
    """With ``display: "omitted"`` a client gets, and sends back, thinking blocks with empty
    text (Claude Code does): they are no reasoning, not an empty one for the template."""
    empty = {"type": "thinking", "thinking": "", "signature": ""}
    request = _request(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [empty, {"type": "text", "text": "a"}]},
            {"role": "user", "content": "q2"},
        ]
    )
    assert request.messages is not None and request.messages[1].reasoning is None


@pytest.mark.parametrize(
    ("choice", "kind"),
    [
        ({"type": "auto"}, ToolChoiceKind.AUTO),
        ({"type": "any"}, ToolChoiceKind.REQUIRED),
        ({"type": "none"}, ToolChoiceKind.NONE),
    ],
)
def test_tool_choice_kinds(choice: dict[str, Any], kind: ToolChoiceKind) -> None:
    tools = [{"name": "t", "input_schema": {"type": "object"}}]
    assert _request(tools=tools, tool_choice=choice).tool_choice.kind is kind


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        ({"tools": [{"name": "t"}]}, "tools[0].input_schema"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "x", "name": "t", "input": {}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "x", "name": "t", "input": "not an object"}
                        ],
                    }
                ]
            },
            "messages[0].content[0].input",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "x",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0]",
        ),
    ],
)
def test_unsupported_or_invalid_content_is_named(fields: dict[str, Any], param: str) -> None:
    error = _invalid(**fields)
    assert error.param == param
    assert param in error.message


@pytest.mark.parametrize(
    ("spec", "enabled"),
    [
        ({"type": "enabled", "budget_tokens": 2048}, True),
        ({"type": "disabled"}, False),
        ({"type": "adaptive"}, None),
        (None, None),
    ],
)
def test_thinking_maps_to_core(spec: dict[str, Any] | None, enabled: bool | None) -> None:
    assert _request(thinking=spec).thinking.enabled is enabled


def _thinking_turns(**fields: Any) -> list[str | None]:
    turns: list[dict[str, Any]] = []
    for n in range(3):
        thinking = {"type": "thinking", "thinking": f"t{n}", "signature": ""}
        turns.append({"role": "user", "content": f"q{n}"})
        turns.append({"role": "assistant", "content": [thinking, {"type": "text", "text": "a"}]})
    turns.append({"role": "user", "content": "q"})
    messages = _request(messages=turns, **fields).messages
    assert messages is not None
    return [m.reasoning for m in messages if m.role is Role.ASSISTANT]


@pytest.mark.parametrize(
    ("edits", "kept"),
    [
        (None, ["t0", "t1", "t2"]),
        ([{"type": "clear_thinking_20251015", "keep": "all"}], ["t0", "t1", "t2"]),
        ([{"type": "clear_thinking_20251015"}], [None, None, "t2"]),
        (
            [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 2}}],
            [None, "t1", "t2"],
        ),
        (
            [{"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 1}}],
            ["t0", "t1", "t2"],
        ),
    ],
)
def test_context_management_clears_thinking_as_asked(
    edits: list[dict[str, Any]] | None, kept: list[str | None]
) -> None:
    """``clear_thinking_20251015`` is honoured; other edits are accepted and not applied."""
    fields = {} if edits is None else {"context_management": {"edits": edits}}
    assert _thinking_turns(**fields) == kept


def test_a_clear_thinking_edit_is_validated() -> None:
    keep = {"type": "thinking_turns", "value": -1}
    edits = [
        {"type": "clear_tool_uses_20250919"},
        {"type": "clear_thinking_20251015", "keep": keep},
    ]
    error = _invalid(context_management={"edits": edits})
    assert error.param == "context_management.edits[1].keep"


def test_count_request_carries_what_generation_would_read() -> None:
    body = parse_body(
        orjson.dumps(
            {
                "model": "alias",
                "system": "Be brief.",
                "messages": [{"role": "user", "content": "efgh"}],
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any"},
                "thinking": {"type": "disabled"},
            }
        ),
        AnthropicCountTokensRequest,
    )
    core = count_request(body, "rid", "served")
    assert core.model == "served" and core.request_id == "rid"
    assert [m.role.value for m in core.messages] == ["system", "user"]
    assert [t.name for t in core.tools] == ["t"] and core.wants_tools
    assert core.thinking.enabled is False


# -- responses --------------------------------------------------------------------------
def _assemble(*events: Any) -> Assembler:
    answer = Assembler()
    for event in events:
        answer.add(event)
    return answer


USAGE = Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=3)


def test_usage_excludes_cache_reads_from_input_tokens() -> None:
    assert usage_json(USAGE) == {
        "input_tokens": 6,
        "output_tokens": 3,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
    }


def test_text_message_response() -> None:
    answer = _assemble(TextDelta("Hel", 1), TextDelta("lo", 2), Finished(FinishReason.STOP, USAGE))
    body = message_response(RID, "served", answer)
    assert body == {
        "id": RID,
        "type": "message",
        "role": "assistant",
        "model": "served",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage_json(USAGE),
    }


def test_thinking_and_tool_use_response() -> None:
    answer = _assemble(
        ReasoningDelta("Think", 1),
        ReasoningDelta("ing.", 2),
        ToolCallDelta(0, "toolu_a", "get_weather", '{"city": ', 3),
        ToolCallDelta(0, None, None, '"Paris"}', 4),
        ToolCallDelta(1, None, "noop", "", 5),
        Finished(FinishReason.TOOL_CALLS, USAGE),
    )
    body = message_response(RID, "served", answer)
    assert body["content"] == [
        {"type": "thinking", "thinking": "Thinking.", "signature": ""},
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": f"toolu_{RID}_1", "name": "noop", "input": {}},
    ]
    assert body["stop_reason"] == "tool_use"


def test_thinking_display_omitted_empties_the_thinking_block() -> None:
    answer = _assemble(
        ReasoningDelta("Secret.", 1), TextDelta("Hi", 2), Finished(FinishReason.STOP, USAGE)
    )
    body = message_response(RID, "served", answer, omit_thinking=True)
    assert body["content"] == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": "Hi"},
    ]
    assert body["usage"] == usage_json(USAGE)  # the reasoning was generated: it is billed


@pytest.mark.parametrize(
    ("reason", "called", "expected"),
    [
        (FinishReason.STOP, False, "end_turn"),
        (FinishReason.STOP, True, "tool_use"),
        (FinishReason.LENGTH, True, "max_tokens"),
        (FinishReason.TOOL_CALLS, True, "tool_use"),
        (FinishReason.CONTENT_FILTER, False, "refusal"),
    ],
)
def test_stop_reasons(reason: FinishReason, called: bool, expected: str) -> None:
    assert stop_reason(reason, called) == expected


def test_tool_input_keeps_what_is_not_an_object() -> None:
    assert tool_input("") == {}
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("[1]") == {"_raw": "[1]"}
    assert tool_input("{broken") == {"_raw": "{broken"}


def test_a_tool_call_cut_by_max_tokens_has_its_whole_members() -> None:
    """Non-streamed, a call cut short has the members whose values are whole: what the
    anthropic SDK assembles from the same arguments streamed as input_json_delta."""
    answer = _assemble(
        ToolCallDelta(0, "toolu_a", "get_weather", '{"city":"Paris"}', 3),
        ToolCallDelta(1, "toolu_b", "get_weather", '{"city":"Oslo","days":', 8),
        ToolCallDelta(2, "toolu_c", "get_weather", "", 9),
        Finished(FinishReason.LENGTH, USAGE),
    )
    body = message_response(RID, "served", answer)
    assert [block["input"] for block in body["content"]] == [
        {"city": "Paris"},
        {"city": "Oslo"},
        {},
    ]
    assert body["stop_reason"] == "max_tokens"
    assert tool_input('{"city":"Pa', cut=True) == {}
    assert tool_input('{"a":[1,{"b":"c"}],"d":"e', cut=True) == {"a": [1, {"b": "c"}]}
    assert tool_input("[1", cut=True) == {}


def test_between_tools_thinking_is_on() -> None:
    assert _request(thinking={"type": "between_tools"}).thinking.enabled is True


def test_output_config_format_is_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = _request(
        output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "high"}
    )
    assert request.response_format.kind is ResponseFormatKind.JSON_SCHEMA
    assert request.response_format.json_schema == schema
    assert _request(output_config={"effort": "low"}).response_format.kind is ResponseFormatKind.TEXT
    assert _invalid(output_config={"format": {"type": "xml"}}).param == "output_config.format.type"
