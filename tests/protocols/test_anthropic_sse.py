"""Core stream events -> Anthropic SSE (protocols/anthropic/sse.py), read back as a client would."""

from __future__ import annotations

from typing import Any

import orjson

from openmaas.core.types import (
    Finished,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.protocols.anthropic.errors import error_body
from openmaas.protocols.anthropic.sse import MessageStreamWriter

RID = "01J0000000000000000000000A"
USAGE = Usage(prompt_tokens=9, cached_tokens=2, completion_tokens=5)


def parse_sse(stream: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) pairs; every frame has both lines and its name matches its type."""
    assert stream.endswith(b"\n\n")
    frames = []
    for raw in stream.split(b"\n\n")[:-1]:
        event_line, data_line = raw.split(b"\n")
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        name = event_line[len(b"event: ") :].decode()
        payload = orjson.loads(data_line[len(b"data: ") :])
        assert payload["type"] == name
        frames.append((name, payload))
    return frames


def run(*events: StreamEvent) -> list[tuple[str, dict[str, Any]]]:
    writer = MessageStreamWriter(RID, "served")
    return parse_sse(b"".join(writer.event(e) for e in events))


def test_text_stream_sequence() -> None:
    frames = run(
        TextDelta("Hel", 1, prompt_tokens=9, cached_tokens=2),
        TextDelta("lo", 2, prompt_tokens=9, cached_tokens=2),
        Finished(FinishReason.STOP, USAGE),
    )
    assert [name for name, _ in frames] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = frames[0][1]["message"]
    assert start["id"] == RID and start["model"] == "served" and start["role"] == "assistant"
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 7 and start["usage"]["cache_read_input_tokens"] == 2
    assert frames[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert frames[3][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert frames[5][1] == {"type": "content_block_stop", "index": 0}
    delta = frames[6][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {
        "input_tokens": 7,
        "output_tokens": 5,
        "cache_read_input_tokens": 2,
        "cache_creation_input_tokens": 0,
    }


def test_thinking_then_text_then_tools_are_blocks_in_order() -> None:
    frames = run(
        ReasoningDelta("Let me ", 1),
        ReasoningDelta("think.", 2),
        TextDelta("Calling.", 3),
        ToolCallDelta(0, "toolu_a", "get_weather", '{"city":', 4),
        ToolCallDelta(0, None, None, ' "Paris"}', 5),
        ToolCallDelta(1, "toolu_b", "get_time", "{}", 6),
        Finished(FinishReason.TOOL_CALLS, USAGE),
    )
    starts = [p for n, p in frames if n == "content_block_start"]
    assert [(p["index"], p["content_block"]["type"]) for p in starts] == [
        (0, "thinking"),
        (1, "text"),
        (2, "tool_use"),
        (3, "tool_use"),
    ]
    assert starts[2]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_a",
        "name": "get_weather",
        "input": {},
    }
    deltas = [(p["index"], p["delta"]) for n, p in frames if n == "content_block_delta"]
    assert deltas == [
        (0, {"type": "thinking_delta", "thinking": "Let me "}),
        (0, {"type": "thinking_delta", "thinking": "think."}),
        (0, {"type": "signature_delta", "signature": ""}),
        (1, {"type": "text_delta", "text": "Calling."}),
        (2, {"type": "input_json_delta", "partial_json": '{"city":'}),
        (2, {"type": "input_json_delta", "partial_json": ' "Paris"}'}),
        (3, {"type": "input_json_delta", "partial_json": "{}"}),
    ]
    stops = [p["index"] for n, p in frames if n == "content_block_stop"]
    assert stops == [0, 1, 2, 3]
    # every block is closed before the next one opens
    order = [(n, p.get("index")) for n, p in frames if n.startswith("content_block_s")]
    assert order == [
        ("content_block_start", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_stop", 2),
        ("content_block_start", 3),
        ("content_block_stop", 3),
    ]
    message_delta = next(p for n, p in frames if n == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert frames[-1][0] == "message_stop"


def test_tool_call_after_stop_reason_stop_is_tool_use_and_gets_an_id() -> None:
    frames = run(ToolCallDelta(0, None, "t", ""), Finished(FinishReason.STOP, USAGE))
    start = next(p for n, p in frames if n == "content_block_start")
    assert start["content_block"]["id"] == f"toolu_{RID}_0"
    assert not [p for n, p in frames if n == "content_block_delta"]
    assert next(p for n, p in frames if n == "message_delta")["delta"]["stop_reason"] == "tool_use"


def test_empty_output_and_length() -> None:
    frames = run(TextDelta("", 0), Finished(FinishReason.LENGTH, USAGE))
    assert [n for n, _ in frames] == ["message_start", "ping", "message_delta", "message_stop"]
    assert frames[2][1]["delta"]["stop_reason"] == "max_tokens"


def test_a_tool_call_cut_by_max_tokens() -> None:
    frames = run(
        ToolCallDelta(0, "toolu_a", "get_weather", '{"city":"Pa', 5),
        Finished(FinishReason.LENGTH, USAGE),
    )
    names = [n for n, _ in frames]
    assert names[2:] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert frames[3][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Pa'}
    assert frames[5][1]["delta"]["stop_reason"] == "max_tokens"


def test_finish_as_first_event_still_starts_the_message() -> None:
    frames = run(Finished(FinishReason.STOP, USAGE))
    assert [n for n, _ in frames] == ["message_start", "ping", "message_delta", "message_stop"]


def test_error_frame_mid_stream() -> None:
    writer = MessageStreamWriter(RID, "served")
    out = writer.event(TextDelta("a", 1)) + writer.error(error_body("api_error", "boom"))
    frames = parse_sse(out)
    assert frames[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "boom"}},
    )
    assert "message_stop" not in [n for n, _ in frames]


def test_thinking_display_omitted_streams_the_block_without_its_text() -> None:
    """``thinking.display: "omitted"``: the block opens and closes with its signature, and
    no ``thinking_delta`` carries the reasoning (as Anthropic streams it)."""
    writer = MessageStreamWriter(RID, "served", omit_thinking=True)
    events = (
        ReasoningDelta("Secret ", 1),
        ReasoningDelta("plan.", 2),
        TextDelta("Hi", 3),
        Finished(FinishReason.STOP, USAGE),
    )
    frames = parse_sse(b"".join(writer.event(e) for e in events))
    deltas = [p["delta"] for name, p in frames if name == "content_block_delta"]
    assert deltas == [
        {"type": "signature_delta", "signature": ""},
        {"type": "text_delta", "text": "Hi"},
    ]
    starts = [p["content_block"]["type"] for name, p in frames if name == "content_block_start"]
    assert starts == ["thinking", "text"]
    assert b"Secret" not in b"".join(writer.event(e) for e in events[:1])
