"""Zhipu paas/v4 requests -> core (protocols/zhipu/adapter.py), and non-streamed answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

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
    ToolCall,
    ToolCallDelta,
    ToolChoiceKind,
    Usage,
)
from openmaas.protocols.zhipu import adapter
from openmaas.protocols.zhipu.adapter import MalformedBody, MissingField
from openmaas.protocols.zhipu.schemas import ZhipuChatRequest, ZhipuEmbeddingRequest

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any):
    body = adapter.parse_body(
        orjson.dumps({"model": "glm-4.7", "messages": USER, **fields}), ZhipuChatRequest
    )
    return body, adapter.chat_request(body, "rid")


def test_what_the_zai_sdk_sends_is_accepted() -> None:
    # Exact body of zai-sdk 0.2.2 (reference §3): explicit nulls mean "absent".
    body, core = chat(temperature=0.99, top_p=0.99, response_format=None, thinking=None)
    assert core.request_id == "rid" and core.model == "glm-4.7"
    assert core.sampling.temperature == 0.99 and core.sampling.top_p == 0.99
    assert core.response_format.kind is ResponseFormatKind.TEXT
    assert core.thinking.enabled is None and core.thinking.clear_thinking is None
    assert core.messages is not None and core.messages[0].role is Role.USER
    assert body.stream is False and body.tool_stream is False


def test_do_sample_false_means_greedy() -> None:
    _, core = chat(do_sample=False, temperature=0.7, top_p=0.5)
    assert core.sampling.temperature == 0.0 and core.sampling.top_p is None
    _, core = chat(do_sample=True, temperature=0.7)
    assert core.sampling.temperature == 0.7


def test_sampling_fields_map() -> None:
    _, core = chat(max_tokens=12, stop=["\n", "END"], seed=7, user_id="user-123456")
    assert core.sampling.max_tokens == 12
    assert core.sampling.stop == ("\n", "END")
    assert core.sampling.seed == 7
    assert core.user == "user-123456"
    _, core = chat(stop="x")
    assert core.sampling.stop == ("x",)


@pytest.mark.parametrize(
    ("spec", "enabled", "clear"),
    [
        ({"type": "enabled"}, True, None),
        ({"type": "disabled"}, False, None),
        ({"type": "enabled", "clear_thinking": False}, True, False),
        ({"type": "enabled", "clear_thinking": True}, True, True),
    ],
)
def test_thinking_maps_to_core(spec: dict[str, Any], enabled: bool, clear: bool | None) -> None:
    _, core = chat(thinking=spec)
    assert core.thinking.enabled is enabled and core.thinking.clear_thinking is clear


def test_response_format_json_object() -> None:
    _, core = chat(response_format={"type": "json_object"})
    assert core.response_format.kind is ResponseFormatKind.JSON_OBJECT


def test_tools_and_tool_choice_map() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
    }
    _, core = chat(tools=[tool], tool_choice="auto")
    assert core.tools[0].name == "f" and core.tools[0].parameters == {"type": "object"}
    assert core.tool_choice.kind is ToolChoiceKind.AUTO and core.wants_tools
    _, core = chat(tools=[tool], tool_choice="none")
    assert not core.wants_tools
    _, core = chat(tools=[tool], tool_choice={"type": "function", "function": {"name": "f"}})
    assert core.tool_choice.kind is ToolChoiceKind.NAMED and core.tool_choice.name == "f"


def test_web_search_tools_are_refused_by_name() -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(tools=[{"type": "web_search", "web_search": {"enable": True}}])
    assert info.value.param == "tools[0].type"


def test_bad_tool_choice_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(tool_choice="sometimes")
    assert info.value.param == "tool_choice"


def test_history_with_reasoning_tool_calls_and_results() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "weather "}, {"type": "text", "text": "?"}],
        },
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "need the tool",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "w", "arguments": {"city": "P"}},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"city":"L"}'},
                },
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ]
    _, core = chat(messages=messages)
    assert core.messages is not None
    system, user, assistant, tool = core.messages
    assert system.role is Role.SYSTEM and user.content == "weather ?"
    assert assistant.reasoning == "need the tool" and assistant.content == ""
    assert assistant.tool_calls == (
        ToolCall("c1", "w", '{"city":"P"}'),
        ToolCall("c2", "w", '{"city":"L"}'),
    )
    assert tool.role is Role.TOOL and tool.tool_call_id == "c1" and tool.content == "sunny"


def test_image_parts_are_refused_by_name() -> None:
    content = [{"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(InvalidRequest) as info:
        chat(messages=[{"role": "user", "content": content}])
    assert info.value.param == "messages[0].content[0].type"


def test_missing_field_is_its_own_error() -> None:
    with pytest.raises(MissingField) as info:
        adapter.parse_body(b'{"messages": [{"role": "user", "content": "x"}]}', ZhipuChatRequest)
    assert info.value.param == "model"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
    ],
)
def test_invalid_fields_are_named(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(**fields)
    assert not isinstance(info.value, MissingField)
    assert info.value.param == param


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b"3"])
def test_a_body_that_is_not_an_object_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedBody):
        adapter.parse_body(raw, ZhipuChatRequest)


def _answer(*events: Any) -> Assembler:
    answer = Assembler()
    for event in events:
        answer.add(event)
    return answer


def test_non_streamed_answer_shape() -> None:
    usage = Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=6, reasoning_tokens=2)
    answer = _answer(
        ReasoningDelta("hmm", 1), TextDelta("Hi", 2), Finished(FinishReason.STOP, usage)
    )
    body = adapter.chat_completion("ours", "theirs", "glm-4.7", 123, answer)
    assert body["id"] == "ours" and body["request_id"] == "theirs"
    assert body["created"] == 123 and body["model"] == "glm-4.7"
    assert body["choices"] == [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Hi", "reasoning_content": "hmm"},
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 6,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }


def test_request_id_defaults_to_ours_and_reasoning_tokens_only_when_nonzero() -> None:
    answer = _answer(TextDelta("x", 1), Finished(FinishReason.LENGTH, Usage(1, 0, 1)))
    body = adapter.chat_completion("ours", None, "m", 1, answer)
    assert body["request_id"] == "ours"
    assert "completion_tokens_details" not in body["usage"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert "reasoning_content" not in body["choices"][0]["message"]


def test_tool_call_answer_and_sensitive_finish() -> None:
    answer = _answer(
        ToolCallDelta(0, "c1", "w", '{"ci'),
        ToolCallDelta(0, None, None, 'ty":"P"}'),
        Finished(FinishReason.TOOL_CALLS, Usage()),
    )
    message = adapter.choices_json(answer)[0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"P"}'}}
    ]
    cut = _answer(TextDelta("x", 1), Finished(FinishReason.CONTENT_FILTER, Usage()))
    assert adapter.choices_json(cut)[0]["finish_reason"] == "sensitive"


def test_tool_call_cut_by_max_tokens() -> None:
    answer = _answer(
        ToolCallDelta(0, "c1", "w", '{"city":"P'), Finished(FinishReason.LENGTH, Usage())
    )
    (choice,) = adapter.choices_json(answer)
    assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "w", "arguments": '{"city":"P'}


def test_every_core_finish_reason_has_a_zhipu_name() -> None:
    assert set(adapter.FINISH_REASONS) == set(FinishReason)


def test_embeddings_request_and_response() -> None:
    body = adapter.parse_body(b'{"model": "e", "input": ["a", "b"]}', ZhipuEmbeddingRequest)
    core = adapter.embedding_request(body, "rid", 3)
    assert core.inputs == ("a", "b")
    result = EmbeddingResult(((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), Usage(prompt_tokens=2))
    out = adapter.embeddings("e", result)
    assert out["data"][1] == {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]}
    assert out["usage"]["total_tokens"] == 2
    for bad in (
        b'{"model": "e", "input": []}',
        b'{"model": "e", "input": [1, 2]}',
        b'{"model": "e", "input": "x", "dimensions": 7}',
    ):
        with pytest.raises(InvalidRequest):
            adapter.embedding_request(adapter.parse_body(bad, ZhipuEmbeddingRequest), "r", 3)
