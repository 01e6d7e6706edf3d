"""OpenAI wire JSON <-> core types (protocols/openai/adapter.py)."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.assembly import Assembler
from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
    EmbeddingResult,
    Finished,
    FinishReason,
    ReasoningDelta,
    ResponseFormatKind,
    Role,
    TextDelta,
    Thinking,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceKind,
    Usage,
)
from openmaas.protocols.openai.adapter import (
    chat_completion,
    chat_request,
    completion_request,
    embedding_request,
    embeddings,
    parse_body,
    text_completion,
    usage_json,
)
from openmaas.protocols.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequestBody,
)

RID = "01J0000000000000000000000A"


def _raw(body: Any) -> bytes:
    return orjson.dumps(body)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def _parse_chat(**fields: Any) -> ChatCompletionRequest:
    return parse_body(_raw(_chat(**fields)), ChatCompletionRequest)


def _invalid(raw: bytes, model: type) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_body(raw, model)
    return info.value


# -- parse_body -----------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"", b"{", b'{"model": }', b"\xff\xfe", b"{'a': 1}"])
def test_malformed_json_is_invalid_request_without_param(raw: bytes) -> None:
    exc = _invalid(raw, ChatCompletionRequest)
    assert exc.param is None
    assert "JSON" in exc.message


@pytest.mark.parametrize("raw", [b"[]", b"[1]", b"null", b"1", b'"text"', b"true"])
def test_json_that_is_not_an_object_is_invalid_request(raw: bytes) -> None:
    exc = _invalid(raw, ChatCompletionRequest)
    assert exc.param is None
    assert "object" in exc.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
        (
            _chat(messages=[{"role": "user", "content": "a"}, {"role": "nobody", "content": "b"}]),
            "messages[1].role",
        ),
        (_chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (_chat(temperature=2.5), "temperature"),
        (_chat(temperature=-0.1), "temperature"),
        (_chat(top_p=0), "top_p"),
        (_chat(messages=[]), "messages"),
        (_chat(max_tokens=0), "max_tokens"),
        (_chat(max_completion_tokens=0), "max_completion_tokens"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (_chat(n=0), "n"),
        (_chat(model=""), "model"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "m"}, "messages"),
        (_chat(response_format={"type": "xml"}), "response_format.type"),
        (_chat(stream="yes please"), "stream"),
    ],
)
def test_invalid_field_is_named_in_param_and_message(body: dict[str, Any], param: str) -> None:
    exc = _invalid(_raw(body), ChatCompletionRequest)
    assert exc.param == param
    assert f"'{param}'" in exc.message


def test_stop_with_too_many_items_says_what_the_limit_is() -> None:
    exc = _invalid(_raw(_chat(stop=["a", "b", "c", "d", "e"])), ChatCompletionRequest)
    assert "4" in exc.message
    assert "valid string" not in exc.message


def test_unknown_fields_are_ignored() -> None:
    body = _parse_chat(frequency_penalty=0.5, some_future_field={"x": 1})
    assert body.model == "m"


def test_valid_body_parses() -> None:
    body = _parse_chat(temperature=0.7, top_p=0.9, stop=["\n"], max_tokens=5, seed=3)
    assert body.temperature == 0.7
    assert body.max_tokens == 5


# -- chat_request ---------------------------------------------------------------------
def _chat_req(**fields: Any):
    return chat_request(_parse_chat(**fields), RID)


def test_chat_request_carries_id_model_and_sampling() -> None:
    req = _chat_req(temperature=0.5, top_p=0.8, stop="END", seed=7, max_tokens=12, user="u1")
    assert req.request_id == RID
    assert req.model == "m"
    assert req.is_chat
    assert req.prompt is None
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.stop, s.seed) == (12, 0.5, 0.8, ("END",), 7)
    assert req.user == "u1"


def test_stop_list_becomes_tuple_and_no_stop_is_empty() -> None:
    assert _chat_req(stop=["a", "b"]).sampling.stop == ("a", "b")
    assert _chat_req().sampling.stop == ()


def test_defaults_leave_sampling_to_the_engine() -> None:
    s = _chat_req().sampling
    assert s.max_tokens is None and s.temperature is None and s.top_p is None
    assert s.ignore_eos is False


def test_ignore_eos_extension_is_passed_on() -> None:
    assert _chat_req(ignore_eos=True).sampling.ignore_eos is True


@pytest.mark.parametrize("n", [1, 2, 5])
def test_n_choices_are_asked_of_the_engine(n: int) -> None:
    """Whether the engine can is its own to say (engines/base.py): 400 naming n if not."""
    assert _chat_req(n=n).sampling.n == n


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools_and_tool_choice_map_to_core() -> None:
    request = _chat_req(tools=[WEATHER])
    (tool,) = request.tools
    assert (tool.name, tool.description) == ("get_weather", "Weather for a city")
    assert tool.parameters["properties"]["city"] == {"type": "string"}
    assert request.tool_choice == ToolChoice() and request.wants_tools
    assert _chat_req(tools=[WEATHER], tool_choice="none").wants_tools is False
    assert _chat_req(tools=[WEATHER], tool_choice="required").tool_choice.kind is (
        ToolChoiceKind.REQUIRED
    )
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert _chat_req(tools=[WEATHER], tool_choice=named).tool_choice == ToolChoice(
        ToolChoiceKind.NAMED, "get_weather"
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
    ],
)
def test_bad_tool_fields_are_named(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _chat_req(**{"tools": [WEATHER], **fields})
    assert info.value.param == param


def test_required_tool_choice_without_tools_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        _chat_req(tool_choice="required")
    assert info.value.param == "tool_choice"


def test_tool_results_and_earlier_calls_come_back_as_core_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Need the tool.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"c": 18}'},
    ]
    request = _chat_req(messages=messages, tools=[WEATHER])
    _, assistant, tool = request.messages
    assert assistant.reasoning == "Need the tool."
    assert assistant.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)
    assert (tool.role, tool.tool_call_id, tool.content) == (Role.TOOL, "call_1", '{"c": 18}')


def test_tool_call_arguments_must_be_a_json_object() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]
    with pytest.raises(InvalidRequest) as info:
        _chat_req(messages=messages)
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    ("fields", "enabled", "clear"),
    [
        ({}, None, None),
        ({"reasoning_effort": "none"}, False, None),
        ({"chat_template_kwargs": {"enable_thinking": False}}, False, None),
        ({"chat_template_kwargs": {"enable_thinking": True, "clear_thinking": False}}, True, False),
        ({"thinking": {"type": "disabled"}}, False, None),
        ({"thinking": {"type": "enabled", "clear_thinking": False}}, True, False),
    ],
)
def test_thinking_controls(fields: dict, enabled: bool | None, clear: bool | None) -> None:
    assert _chat_req(**fields).thinking == Thinking(enabled, clear)


def test_logprobs_are_refused_by_name() -> None:
    with pytest.raises(InvalidRequest) as info:
        _chat_req(logprobs=True)
    assert info.value.param == "logprobs"


def test_tool_message_without_its_call_id_is_refused_with_its_index() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "calling"},
        {"role": "tool", "content": "42"},
    ]
    with pytest.raises(InvalidRequest) as info:
        _chat_req(messages=messages)
    assert info.value.param == "messages[2].tool_call_id"


def test_roles_map_and_developer_becomes_system() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    req = _chat_req(messages=messages)
    assert [m.role for m in req.messages] == [Role.SYSTEM, Role.SYSTEM, Role.USER, Role.ASSISTANT]
    assert [m.content for m in req.messages] == ["be brief", "sys", "q", "a"]


def test_text_parts_are_joined_in_order() -> None:
    content = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    req = _chat_req(messages=[{"role": "user", "content": content}])
    assert req.messages[0].content == "Hello, world"


def test_missing_content_becomes_empty_string() -> None:
    req = _chat_req(messages=[{"role": "user", "content": "x"}, {"role": "assistant"}])
    assert req.messages[1].content == ""


def test_max_completion_tokens_is_used_when_alone() -> None:
    assert _chat_req(max_completion_tokens=9).sampling.max_tokens == 9
    assert _chat_req(max_tokens=9).sampling.max_tokens == 9


def test_max_tokens_and_max_completion_tokens_may_agree() -> None:
    assert _chat_req(max_tokens=9, max_completion_tokens=9).sampling.max_tokens == 9


def test_max_tokens_and_max_completion_tokens_conflict() -> None:
    with pytest.raises(InvalidRequest) as info:
        _chat_req(max_tokens=9, max_completion_tokens=10)
    assert info.value.param == "max_completion_tokens"


def test_response_formats() -> None:
    assert _chat_req().response_format.kind is ResponseFormatKind.TEXT
    assert (
        _chat_req(response_format={"type": "text"}).response_format.kind is ResponseFormatKind.TEXT
    )
    assert (
        _chat_req(response_format={"type": "json_object"}).response_format.kind
        is ResponseFormatKind.JSON_OBJECT
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = _chat_req(
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    ).response_format
    assert rf.kind is ResponseFormatKind.JSON_SCHEMA
    assert rf.json_schema == schema
    assert rf.name == "thing"


def test_json_schema_without_schema_names_the_missing_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        _chat_req(response_format={"type": "json_schema"})
    assert info.value.param == "response_format.json_schema"


# -- completion_request ---------------------------------------------------------------
def _completion(**fields: Any):
    body = parse_body(_raw({"model": "m", "prompt": "Once", **fields}), CompletionRequest)
    return completion_request(body, RID)


def test_completion_is_a_prompt_request_with_default_16_tokens() -> None:
    req = _completion()
    assert req.prompt == "Once"
    assert not req.is_chat
    assert req.messages is None
    assert req.sampling.max_tokens == 16


def test_completion_max_tokens_is_honoured() -> None:
    assert _completion(max_tokens=3).sampling.max_tokens == 3


def test_completion_single_prompt_list_is_unwrapped() -> None:
    assert _completion(prompt=["Once upon"]).prompt == "Once upon"


@pytest.mark.parametrize("prompt", [["a", "b"], []])
def test_completion_needs_exactly_one_prompt(prompt: list[str]) -> None:
    with pytest.raises(InvalidRequest) as info:
        _completion(prompt=prompt)
    assert info.value.param == "prompt"


@pytest.mark.parametrize(("field", "value"), [("echo", True), ("suffix", "end"), ("logprobs", 2)])
def test_completion_unsupported_fields_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        _completion(**{field: value})
    assert info.value.param == field


def test_completion_logprobs_zero_is_refused_too() -> None:
    with pytest.raises(InvalidRequest) as info:
        _completion(logprobs=0)
    assert info.value.param == "logprobs"


def test_completion_n_is_asked_of_the_engine() -> None:
    assert _completion(n=3).sampling.n == 3


# -- embedding_request ----------------------------------------------------------------
def _embedding(native: int | None = 384, **fields: Any):
    body = parse_body(_raw({"model": "e", "input": "hello", **fields}), EmbeddingRequestBody)
    return embedding_request(body, RID, native)


def test_embedding_string_input_becomes_one_input() -> None:
    req = _embedding()
    assert req.inputs == ("hello",)
    assert req.request_id == RID and req.model == "e"


def test_embedding_list_input_keeps_order() -> None:
    assert _embedding(input=["a", "b", "c"]).inputs == ("a", "b", "c")


@pytest.mark.parametrize("value", [[], "", ["a", ""], [""]], ids=repr)
def test_embedding_empty_input_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        _embedding(input=value)
    assert info.value.param == "input"


@pytest.mark.parametrize(
    ("value", "inputs"), [([1, 2, 3], ((1, 2, 3),)), ([[1, 2], [3]], ((1, 2), (3,)))], ids=repr
)
def test_embedding_token_arrays_are_the_models_own_ids(value: Any, inputs: Any) -> None:
    assert _embedding(input=value).inputs == inputs


def test_embedding_dimensions_other_than_native_are_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        _embedding(dimensions=256)
    assert info.value.param == "dimensions"
    assert "384" in info.value.message


def test_embedding_dimensions_equal_to_native_are_accepted() -> None:
    assert _embedding(dimensions=384).inputs == ("hello",)


def test_embedding_bad_encoding_format_is_refused() -> None:
    exc = _invalid(
        _raw({"model": "e", "input": "x", "encoding_format": "hex"}), EmbeddingRequestBody
    )
    assert exc.param == "encoding_format"


# -- responses ------------------------------------------------------------------------
def test_usage_json_has_total_and_cached_tokens() -> None:
    assert usage_json(Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=7)) == {
        "prompt_tokens": 10,
        "completion_tokens": 7,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def _answer(*events: object) -> Assembler:
    answer = Assembler()
    for event in events:
        answer.add(event)  # type: ignore[arg-type]
    return answer


def test_chat_completion_body() -> None:
    answer = _answer(TextDelta("Hi!", 2), Finished(FinishReason.STOP, Usage(3, 0, 2)))
    body = chat_completion(RID, "m", 1700000000, answer)
    assert body["id"] == RID
    assert body["object"] == "chat.completion"
    assert body["created"] == 1700000000
    assert body["model"] == "m"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "Hi!"}
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 5


def test_text_completion_body() -> None:
    answer = _answer(
        TextDelta("upon ", 1), TextDelta("a time", 3), Finished(FinishReason.LENGTH, Usage(1, 0, 3))
    )
    body = text_completion(RID, "m", 1, answer)
    assert body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert choice["text"] == "upon a time"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_chat_completion_with_reasoning_and_tool_calls() -> None:
    answer = _answer(
        ReasoningDelta("Need ", 1),
        ReasoningDelta("the tool.", 2),
        ToolCallDelta(0, "call_1", "get_weather", '{"city": '),
        ToolCallDelta(0, None, None, '"Paris"}'),
        ToolCallDelta(1, "call_2", "get_time", "{}"),
        Finished(FinishReason.TOOL_CALLS, Usage(10, 0, 9, reasoning_tokens=2)),
    )
    body = chat_completion(RID, "m", 1, answer)
    (choice,) = body["choices"]
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls"
    assert message["content"] is None
    assert message["reasoning_content"] == "Need the tool."
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}


def test_chat_completion_cut_by_max_tokens_inside_a_tool_call() -> None:
    """The call so far, its arguments not yet valid JSON, and finish_reason "length"."""
    answer = _answer(
        ToolCallDelta(0, "call_1", "get_weather", '{"city":"Pa'),
        Finished(FinishReason.LENGTH, Usage(10, 0, 20)),
    )
    (choice,) = chat_completion(RID, "m", 1, answer)["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Pa'},
            }
        ],
    }


def _result(vectors: list[list[float]], prompt_tokens: int = 5) -> EmbeddingResult:
    return EmbeddingResult(tuple(tuple(v) for v in vectors), Usage(prompt_tokens=prompt_tokens))


def test_embeddings_float_body() -> None:
    body = embeddings("e", _result([[0.5, -1.0], [0.25, 2.0]], 6), "float")
    assert body["object"] == "list"
    assert body["model"] == "e"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    assert body["data"][1]["embedding"] == [0.25, 2.0]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(st.lists(st.lists(_f32, min_size=1, max_size=64), min_size=1, max_size=4))
def test_base64_encoding_decodes_to_the_same_floats(vectors: list[list[float]]) -> None:
    as_float = embeddings("e", _result(vectors), "float")
    as_b64 = embeddings("e", _result(vectors), "base64")
    for plain, packed in zip(as_float["data"], as_b64["data"], strict=True):
        raw = base64.b64decode(packed["embedding"])
        assert len(raw) == 4 * len(plain["embedding"])
        decoded = [v for (v,) in struct.iter_unpack("<f", raw)]
        assert decoded == plain["embedding"]


def test_base64_is_what_the_openai_sdk_decodes() -> None:
    # The openai SDK decodes with numpy.frombuffer(..., dtype="float32") (little-endian).
    vector = [1.0, -2.5, math.pi]
    packed = embeddings("e", _result([vector]), "base64")["data"][0]["embedding"]
    assert isinstance(packed, str)
    decoded = struct.unpack("<3f", base64.b64decode(packed))
    assert decoded[:2] == (1.0, -2.5)
    assert decoded[2] == pytest.approx(math.pi, rel=1e-6)
