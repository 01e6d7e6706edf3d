"""The engine host reads back exactly the request a worker sent, and its chunks carry the
engine's running counts, read by the worker as exact usage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from openmaas.core.errors import InvalidRequest, PromptTooLong
from openmaas.core.types import (
    EmbeddingRequest,
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    ReasoningDelta,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    RoutingHints,
    SamplingParams,
    StreamEvent,
    TextDelta,
    Thinking,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceKind,
    Usage,
)
from openmaas.enginehost import wire
from openmaas.engines.base import ModelKind, UsageTracker
from openmaas.engines.hosted import HostedConfig, HostedEngine, _error_of, _revive
from openmaas.engines.upstream.openai_wire import (
    SseDecoder,
    ThinkingStyle,
    chat_body,
    chunk_finish,
    completion_body,
    exact_usage,
)

RELAY = HostedEngine("m", HostedConfig(Path("/nowhere.sock"), ModelKind.CHAT, 1, 0))
WEATHER = Tool(
    "get_weather", "The weather", {"type": "object", "properties": {"city": {"type": "string"}}}
)

REQUESTS = [
    GenerationRequest("r1", "m", messages=(Message(Role.USER, "hi"),)),
    GenerationRequest(
        "r2",
        "m",
        messages=(
            Message(Role.SYSTEM, "Be brief."),
            Message(Role.USER, "Weather in Paris?", name="ann"),
            Message(
                Role.ASSISTANT,
                "",
                reasoning="They want weather.",
                tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Paris"}'),),
            ),
            Message(Role.TOOL, "sunny", tool_call_id="call_1"),
        ),
        sampling=SamplingParams(
            max_tokens=20, temperature=0.0, top_p=0.5, stop=("\n", "END"), seed=7, ignore_eos=True
        ),
        user="u-1",
        tools=(WEATHER,),
        tool_choice=ToolChoice(ToolChoiceKind.NAMED, "get_weather"),
        thinking=Thinking(enabled=False, clear_thinking=True),
    ),
    GenerationRequest(
        "r3",
        "m",
        messages=(Message(Role.USER, "json"),),
        tools=(WEATHER,),
        tool_choice=ToolChoice(ToolChoiceKind.REQUIRED),
        response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT),
    ),
    GenerationRequest(
        "r4",
        "m",
        messages=(Message(Role.USER, "json"),),
        tool_choice=ToolChoice(ToolChoiceKind.NONE),
        response_format=ResponseFormat(
            ResponseFormatKind.JSON_SCHEMA, {"type": "object"}, "answer"
        ),
        thinking=Thinking(enabled=True),
    ),
    GenerationRequest("r5", "m", prompt="Once upon", sampling=SamplingParams(max_tokens=3)),
    GenerationRequest("r6", "m", prompt="no limit"),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r.request_id)
def test_the_host_reads_back_the_very_request_the_worker_sent(request_: GenerationRequest) -> None:
    if request_.is_chat:
        body = chat_body(request_, "m", ThinkingStyle.CHAT_TEMPLATE_KWARGS)
    else:
        body = completion_body(request_, "m")
    read = wire.generation_request(orjson.dumps(body), request_.request_id)
    assert read == dataclasses.replace(request_, routing=read.routing)


def test_the_host_reads_back_texts_and_token_ids_to_embed() -> None:
    for inputs in (("one", "two"), ((101, 7592, 102), (101, 102))):
        body = orjson.dumps({"model": "m", "input": list(inputs), "encoding_format": "float"})
        assert wire.embedding_request(body, "r") == EmbeddingRequest("r", "m", inputs)


def test_an_unreadable_body_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        wire.generation_request(b'{"messages": [{"role": "nobody"}]}', "r")


def _read(frames: bytes, chat: bool) -> tuple[list[StreamEvent], UsageTracker, FinishReason | None]:
    """What a worker's relay makes of the frames (engines/upstream/openai_http.py's steps)."""
    tracker = UsageTracker()
    tracker.estimated = True
    events: list[StreamEvent] = []
    reason = None
    for payload in SseDecoder().feed(frames):
        if payload == b"[DONE]":
            continue
        chunk = orjson.loads(payload)
        events += RELAY._chunk_events(chunk, chat, tracker, lambda text: 1)
        reason = chunk_finish(chunk, "host") or reason
        if chunk.get("usage"):
            exact_usage(chunk["usage"], tracker)
    return events, tracker, reason


def test_every_chunk_carries_the_engines_running_count() -> None:
    writer = wire.ChunkWriter("r", "m", chat=True)
    sent: list[StreamEvent] = [
        ReasoningDelta("hmm", 1),
        TextDelta("Hi", 2, 10, 4),
        ToolCallDelta(0, "call_r_0", "f", '{"a":1}', 9),
    ]
    frames = writer.event(sent[0], Usage(10, 4, 1))
    frames += writer.event(sent[1], Usage(10, 4, 2))
    frames += writer.event(sent[2], Usage(10, 4, 9))
    events, tracker, reason = _read(frames, chat=True)
    assert events == sent  # with the very counts the host's engine gave them
    # Cut here: the counts are the engine's, not estimates.
    assert (tracker.prompt_tokens, tracker.cached_tokens, tracker.completion_tokens) == (10, 4, 9)
    assert not tracker.estimated and reason is None

    frames += writer.event(Finished(FinishReason.TOOL_CALLS, Usage(10, 4, 11)), Usage(10, 4, 9))
    _events, tracker, reason = _read(frames, chat=True)
    assert reason is FinishReason.TOOL_CALLS
    assert tracker.snapshot() == Usage(10, 4, 11)


def test_text_completion_chunks() -> None:
    writer = wire.ChunkWriter("r", "m", chat=False)
    frames = writer.event(TextDelta(" there", 1, 3), Usage(3, 0, 1))
    frames += writer.event(Finished(FinishReason.LENGTH, Usage(3, 0, 1)), Usage(3, 0, 1))
    events, tracker, reason = _read(frames, chat=False)
    assert [e.text for e in events if isinstance(e, TextDelta)] == [" there"]
    assert reason is FinishReason.LENGTH and tracker.snapshot() == Usage(3, 0, 1)


def test_an_error_keeps_its_class_and_message() -> None:
    status, body = wire.error_body(PromptTooLong("too long for the context", param="messages"))
    assert status == 400
    revived = _revive(_error_of(orjson.dumps(body)), "m")
    assert isinstance(revived, PromptTooLong)
    assert (revived.message, revived.param) == ("too long for the context", "messages")
    counted = PromptTooLong("over", "messages", prompt_tokens=3031, context_length=2048)
    revived = _revive(_error_of(orjson.dumps(wire.error_body(counted)[1])), "m")
    assert isinstance(revived, PromptTooLong) and revived.message == "over"
    assert (revived.prompt_tokens, revived.context_length) == (3031, 2048)


def test_the_host_reads_the_requests_fairness_key_and_weight() -> None:
    routing = RoutingHints(cache_scope="scope-a", share_weight=3)
    request = GenerationRequest("r7", "m", prompt="hi", routing=routing)
    hosted = HostedEngine("m", HostedConfig(Path("/x.sock"), ModelKind.CHAT, 1, 0))
    body = completion_body(request, "m", cache_salt=True)
    headers = hosted._headers_for(request)
    read = wire.generation_request(orjson.dumps(body), "r7", headers)
    assert (read.routing.cache_scope, read.routing.share_weight) == ("scope-a", 3)
    embedding = EmbeddingRequest("r8", "m", ("one",), routing=routing)
    raw = orjson.dumps({"model": "m", "input": ["one"]})
    read_embedding = wire.embedding_request(raw, "r8", hosted._headers_for(embedding))
    assert read_embedding.routing == RoutingHints(cache_scope="scope-a", share_weight=3)
    # no headers (or nonsense in them): one shared key of weight 1
    assert wire.embedding_request(raw, "r9").routing == RoutingHints()
    nonsense = {"x-openmaas-share-weight": "lots"}
    assert wire.embedding_request(raw, "r9", nonsense).routing.share_weight == 1
