"""Core stream events -> OpenAI SSE frames (protocols/openai/sse.py), read back as a client
would."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from openmaas.core.types import (
    Finished,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.protocols.openai.sse import ChunkWriter

RID = "01J0000000000000000000000A"
USAGE = Usage(prompt_tokens=4, cached_tokens=1, completion_tokens=3)


def parse_sse(stream: bytes) -> tuple[list[dict[str, Any]], bool]:
    """Events as an SSE client sees them: JSON payloads, and whether the stream ended in [DONE]."""
    assert stream.endswith(b"\n\n")
    events = stream.split(b"\n\n")[:-1]
    payloads: list[dict[str, Any]] = []
    done = False
    for event in events:
        assert event.startswith(b"data: "), event
        data = event[len(b"data: ") :]
        assert not done, "nothing may follow [DONE]"
        if data == b"[DONE]":
            done = True
        else:
            payloads.append(orjson.loads(data))
    return payloads, done


def run(
    writer: ChunkWriter, texts: list[str], reason: FinishReason = FinishReason.STOP
) -> tuple[list[dict[str, Any]], bool]:
    out = b""
    for i, text in enumerate(texts, 1):
        out += writer.delta(TextDelta(text, completion_tokens=i))
    out += writer.finish(Finished(reason, USAGE))
    return parse_sse(out)


def chat_writer(include_usage: bool = False) -> ChunkWriter:
    return ChunkWriter(RID, "m", 1700000000, chat=True, include_usage=include_usage)


def text_writer(include_usage: bool = False) -> ChunkWriter:
    return ChunkWriter(RID, "m", 1700000000, chat=False, include_usage=include_usage)


def test_chat_stream_shape() -> None:
    chunks, done = run(chat_writer(), ["Hel", "lo", "!"])
    assert done
    assert all(c["id"] == RID and c["model"] == "m" and c["created"] == 1700000000 for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(len(c["choices"]) == 1 and c["choices"][0]["index"] == 0 for c in chunks)
    # role first, once
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sum("role" in c["choices"][0]["delta"] for c in chunks) == 1
    # then the text, in order
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert contents == ["Hel", "lo", "!"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    # then the finish
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["delta"] == {}
    # no usage unless asked for
    assert all("usage" not in c for c in chunks)


def test_chat_stream_text_reassembles() -> None:
    chunks, _ = run(chat_writer(), ["a ", "b ", "c"])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "a b c"


def test_length_finish_reason() -> None:
    chunks, _ = run(chat_writer(), ["a"], FinishReason.LENGTH)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("texts", [[], ["only"]], ids=["empty", "one"])
def test_chat_stream_always_has_exactly_one_role_chunk(texts: list[str]) -> None:
    chunks, done = run(chat_writer(), texts)
    assert done
    roles = [c for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert len(roles) == 1
    assert chunks[0] is roles[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_empty_generation_is_role_then_finish() -> None:
    chunks, done = run(chat_writer(), [])
    assert done
    assert len(chunks) == 2
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


def test_include_usage_adds_a_final_usage_chunk() -> None:
    chunks, done = run(chat_writer(include_usage=True), ["a", "b"])
    assert done
    *rest, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 1},
    }
    assert last["id"] == RID and last["object"] == "chat.completion.chunk"
    # every other chunk carries "usage": null, as OpenAI sends it
    assert rest and all("usage" in c and c["usage"] is None for c in rest)
    assert rest[-1]["choices"][0]["finish_reason"] == "stop"


def test_include_usage_on_an_empty_generation() -> None:
    chunks, done = run(chat_writer(include_usage=True), [])
    assert done
    assert [bool(c["choices"]) for c in chunks] == [True, True, False]
    assert chunks[-1]["usage"]["total_tokens"] == 7


def test_text_completion_stream() -> None:
    chunks, done = run(text_writer(), ["Once ", "upon"], FinishReason.LENGTH)
    assert done
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all("delta" not in c["choices"][0] and "role" not in c["choices"][0] for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks] == ["Once ", "upon", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]


def test_text_completion_stream_with_usage() -> None:
    chunks, done = run(text_writer(include_usage=True), ["x"])
    assert done
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["object"] == "text_completion"
    assert all(c["usage"] is None for c in chunks[:-1])


def test_empty_text_completion_has_only_the_finish() -> None:
    chunks, done = run(text_writer(), [])
    assert done
    assert len(chunks) == 1
    assert chunks[0]["choices"][0]["finish_reason"] == "stop"


def test_unicode_text_survives_framing() -> None:
    text = "你好，世界 🌍\nline two"
    chunks, _ = run(chat_writer(), [text])
    assert chunks[1]["choices"][0]["delta"]["content"] == text


def test_error_frame_then_done() -> None:
    body = {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "engine_error"}
    }
    writer = chat_writer()
    out = writer.delta(TextDelta("partial", 1)) + writer.error(body)
    chunks, done = parse_sse(out)
    assert done
    assert chunks[-1] == body


def test_reasoning_and_tool_call_deltas() -> None:
    writer = chat_writer()
    out = b"".join(
        writer.event(e)
        for e in (
            ReasoningDelta("Need ", 1),
            ReasoningDelta("a tool.", 2),
            ToolCallDelta(0, "call_1", "get_weather", '{"city": ', 3),
            ToolCallDelta(0, None, None, '"Paris"}', 4),
            Finished(FinishReason.TOOL_CALLS, USAGE),
        )
    )
    payloads, done = parse_sse(out)
    assert done
    deltas = [p["choices"][0]["delta"] for p in payloads]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d.get("reasoning_content") for d in deltas[1:3]] == ["Need ", "a tool."]
    first, second = deltas[3]["tool_calls"][0], deltas[4]["tool_calls"][0]
    assert first == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": '},
    }
    assert second == {"index": 0, "function": {"arguments": '"Paris"}'}}
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_tool_call_cut_by_max_tokens() -> None:
    writer = chat_writer()
    out = writer.tool_call(ToolCallDelta(0, "call_1", "get_weather", '{"city":"Pa'))
    chunks, done = parse_sse(out + writer.finish(Finished(FinishReason.LENGTH, USAGE)))
    assert done
    (call,) = chunks[1]["choices"][0]["delta"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Pa'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
