"""Core events -> Zhipu SSE frames (protocols/zhipu/sse.py)."""

from __future__ import annotations

from typing import Any

import orjson

from openmaas.core.types import (
    Finished,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.protocols.zhipu.sse import DONE, ChunkWriter


def frames(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        assert block.startswith(b"data: ")
        payload = block[len(b"data: ") :]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def writer(tool_stream: bool = False, client_id: str | None = None) -> ChunkWriter:
    return ChunkWriter("ours", client_id, "glm-4.7", 100, tool_stream=tool_stream)


def test_reasoning_then_text_then_final_chunk_with_usage_and_done() -> None:
    w = writer(client_id="theirs")
    usage = Usage(prompt_tokens=3, cached_tokens=1, completion_tokens=2, reasoning_tokens=1)
    raw = (
        w.event(ReasoningDelta("Let me", 1))
        + w.event(TextDelta("Hi", 2))
        + w.event(Finished(FinishReason.STOP, usage))
    )
    assert raw.endswith(DONE)
    first, second, last, done = frames(raw)
    for chunk in (first, second, last):
        assert chunk["id"] == "ours" and chunk["request_id"] == "theirs"
        assert chunk["model"] == "glm-4.7" and chunk["created"] == 100
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "reasoning_content": "Let me"}}
    ]
    assert second["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]
    assert "usage" not in first and "usage" not in second
    assert last["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
    ]
    assert last["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    assert done == "[DONE]"


def test_empty_deltas_send_nothing() -> None:
    w = writer()
    assert w.event(TextDelta("", 1)) == b"" and w.event(ReasoningDelta("", 1)) == b""


def test_finish_reasons_in_zhipu_names() -> None:
    for reason, name in [
        (FinishReason.LENGTH, "length"),
        (FinishReason.TOOL_CALLS, "tool_calls"),
        (FinishReason.CONTENT_FILTER, "sensitive"),
    ]:
        last = frames(writer().event(Finished(reason, Usage())))[0]
        assert last["choices"][0]["finish_reason"] == name
        assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        assert "completion_tokens_details" not in last["usage"]


CALL_EVENTS = [
    ToolCallDelta(0, "c0", "weather", '{"ci'),
    ToolCallDelta(0, None, None, 'ty": "Paris"}'),
    ToolCallDelta(1, "c1", "time", "{"),
    ToolCallDelta(1, None, None, "}"),
]


def test_without_tool_stream_each_call_is_sent_whole() -> None:
    w = writer(tool_stream=False)
    out = [w.event(e) for e in CALL_EVENTS]
    assert out[0] == b"" and out[1] == b"" and out[3] == b""
    first_call = frames(out[2])  # call 0 is complete once call 1 begins
    assert first_call[0]["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 0,
            "id": "c0",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    rest = frames(w.event(Finished(FinishReason.TOOL_CALLS, Usage())))
    assert rest[0]["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 1,
            "id": "c1",
            "type": "function",
            "function": {"name": "time", "arguments": "{}"},
        }
    ]
    assert rest[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert rest[2] == "[DONE]"


def test_with_tool_stream_fragments_stream_and_concatenate_by_index() -> None:
    w = writer(tool_stream=True)
    chunks = [c for e in CALL_EVENTS for c in frames(w.event(e))]
    assert len(chunks) == 4
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first == {
        "index": 0,
        "id": "c0",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"ci'},
    }
    follow = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert "id" not in follow and "name" not in follow["function"]
    joined: dict[int, str] = {}
    for chunk in chunks:
        part = chunk["choices"][0]["delta"]["tool_calls"][0]
        joined[part["index"]] = joined.get(part["index"], "") + part["function"]["arguments"]
    assert joined == {0: '{"city": "Paris"}', 1: "{}"}
    end = frames(w.event(Finished(FinishReason.TOOL_CALLS, Usage())))
    assert len(end) == 2  # nothing buffered: the final chunk and [DONE]


def test_error_frame_is_a_top_level_error_then_done() -> None:
    body = {"error": {"code": "500", "message": "boom"}}
    assert frames(writer().error(body)) == [body, "[DONE]"]


def test_a_call_cut_by_max_tokens_is_sent_as_far_as_it_goes() -> None:
    for tool_stream in (False, True):
        w = writer(tool_stream=tool_stream)
        out = w.event(ToolCallDelta(0, "c0", "weather", '{"city":"Pa'))
        out += w.event(Finished(FinishReason.LENGTH, Usage()))
        sent = [f for f in frames(out) if f != "[DONE]"]
        parts = [p for f in sent for p in f["choices"][0]["delta"].get("tool_calls", [])]
        assert [p["function"]["arguments"] for p in parts] == ['{"city":"Pa']
        assert sent[-1]["choices"][0]["finish_reason"] == "length"
