"""The OpenAI-compatible HTTP engine against a real local upstream (tests/engines/upstream.py):
what it sends, what it makes of what comes back, and how each failure and timeout ends."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.core.errors import (
    EngineFailure,
    EngineTimeout,
    InvalidRequest,
    OpenMaaSError,
    UpstreamUnavailable,
)
from openmaas.core.money import Currency, Money
from openmaas.core.prices import AppliedPrice, ModelPrice
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
from openmaas.engines.base import ModelKind
from openmaas.engines.upstream.openai_http import (
    OpenAIHttpConfig,
    OpenAIHttpEngine,
    ThinkingStyle,
    Timeouts,
)
from openmaas.engines.upstream.openai_wire import SseDecoder
from tests.engines.upstream import (
    KEY,
    Behaviour,
    Engines,
    ToolCallSpec,
    Upstream,
    collect,
    text_of,
)
from tests.support.clock import ManualClock

LONG = " ".join(f"w{i}" for i in range(60))


def chat(text: str = "Say hello", **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        "req-1", "relay", messages=(Message(Role.USER, text),), sampling=SamplingParams(**sampling)
    )


# -- what is sent ---------------------------------------------------------------------------
async def test_chat_request_is_relayed_faithfully(upstream: Upstream, engines: Engines) -> None:
    engine = await engines(headers={"X-Tenant": "acme"})
    request = GenerationRequest(
        "req-map",
        "relay",
        messages=(
            Message(Role.SYSTEM, "Be brief."),
            Message(Role.USER, "Weather in Paris?"),
            Message(
                Role.ASSISTANT,
                "",
                reasoning="Need the tool.",
                tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Paris"}'),),
            ),
            Message(Role.TOOL, "18C", tool_call_id="call_1"),
        ),
        sampling=SamplingParams(
            max_tokens=64, temperature=0.2, top_p=0.9, stop=("END",), seed=7, ignore_eos=True
        ),
        response_format=ResponseFormat(
            ResponseFormatKind.JSON_SCHEMA, {"type": "object"}, name="answer"
        ),
        user="user-42",
        tools=(Tool("get_weather", "Current weather", {"type": "object"}),),
        tool_choice=ToolChoice(ToolChoiceKind.NAMED, "get_weather"),
        thinking=Thinking(enabled=False, clear_thinking=False),
    )
    await collect(engine.stream(request))

    received = upstream.requests[-1]
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {KEY}"
    assert received.headers["x-tenant"] == "acme"
    assert received.body == {
        "model": "upstream-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "Need the tool.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": "18C", "tool_call_id": "call_1"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "ignore_eos": True,
        "user": "user-42",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object"},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}},
        },
        "chat_template_kwargs": {"enable_thinking": False, "clear_thinking": False},
    }


async def test_minimal_request_always_asks_for_usage(upstream: Upstream, engines: Engines) -> None:
    engine = await engines(api_key=None)
    await collect(engine.stream(chat("hi")))
    received = upstream.requests[-1]
    assert received.body == {
        "model": "upstream-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert "authorization" not in received.headers


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        (ThinkingStyle.ZHIPU, {"thinking": {"type": "enabled", "clear_thinking": False}}),
        (
            ThinkingStyle.CHAT_TEMPLATE_KWARGS,
            {"chat_template_kwargs": {"enable_thinking": True, "clear_thinking": False}},
        ),
        (ThinkingStyle.NONE, {}),
    ],
)
async def test_thinking_is_spelled_for_the_upstream(
    upstream: Upstream, engines: Engines, style: ThinkingStyle, expected: dict[str, Any]
) -> None:
    engine = await engines(thinking_style=style)
    request = GenerationRequest(
        "r", "relay", messages=(Message(Role.USER, "hi"),), thinking=Thinking(True, False)
    )
    await collect(engine.stream(request))
    body = upstream.requests[-1].body
    sent = {k: body[k] for k in ("thinking", "chat_template_kwargs") if k in body}
    assert sent == expected


# -- what comes back ------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["whole", "split-and-keepalive"])
async def test_stream_yields_reasoning_text_and_exact_usage(
    upstream: Upstream, engines: Engines, framing: str
) -> None:
    split = framing != "whole"
    upstream.behaviour = Behaviour(
        reasoning="Let me think",
        text="Hello there, friend.",
        prompt_tokens=20,
        cached_tokens=8,
        split_chunks=split,
        keepalive=split,
    )
    engine = await engines()
    stream = engine.stream(chat())
    events = await collect(stream)

    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert reasoning == "Let me think"
    assert text_of(events) == "Hello there, friend."
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason is FinishReason.STOP
    # 3 reasoning chunks + 3 text chunks, as the upstream counted them
    assert finished.usage == Usage(
        prompt_tokens=20, cached_tokens=8, completion_tokens=6, reasoning_tokens=3
    )
    assert stream.tracker.snapshot() == Usage(20, 8, 6)
    counts = [e.completion_tokens for e in events if isinstance(e, TextDelta | ReasoningDelta)]
    assert counts == sorted(counts) and counts[0] >= 1


async def test_tool_call_deltas(upstream: Upstream, engines: Engines) -> None:
    upstream.behaviour = Behaviour(
        tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="call_abc")]
    )
    engine = await engines()
    request = GenerationRequest(
        "r", "relay", messages=(Message(Role.USER, "weather?"),), tools=(Tool("get_weather"),)
    )
    events = await collect(engine.stream(request))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(c.index, c.id, c.name) for c in calls] == [
        (0, "call_abc", "get_weather"),
        (0, None, None),
    ]
    assert "".join(c.arguments for c in calls) == '{"city": "Paris"}'
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason is FinishReason.TOOL_CALLS


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("length", FinishReason.LENGTH),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("sensitive", FinishReason.CONTENT_FILTER),
        ("tool_calls", FinishReason.TOOL_CALLS),
        ("stop", FinishReason.STOP),
    ],
)
async def test_finish_reasons(
    upstream: Upstream, engines: Engines, wire: str, reason: FinishReason
) -> None:
    upstream.behaviour = Behaviour(text="a b", finish_reason=wire)
    engine = await engines()
    events = await collect(engine.stream(chat()))
    assert isinstance(events[-1], Finished) and events[-1].reason is reason


async def test_zhipu_chunks_with_usage_on_the_finishing_chunk(
    upstream: Upstream, engines: Engines
) -> None:
    def chunk(delta: dict[str, Any], **extra: Any) -> str:
        return json.dumps({"id": "1", "choices": [{"index": 0, "delta": delta}], **extra})

    usage = {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    final = json.loads(chunk({"role": "assistant", "content": ""}, usage=usage))
    final["choices"][0]["finish_reason"] = "stop"
    upstream.behaviour = Behaviour(
        raw_events=[
            chunk({"role": "assistant", "reasoning_content": "Let me"}),
            chunk({"role": "assistant", "content": "Hi there"}),
            json.dumps(final),
            "[DONE]",
        ]
    )
    engine = await engines(thinking_style=ThinkingStyle.ZHIPU)
    events = await collect(engine.stream(chat()))
    assert [type(e).__name__ for e in events] == ["ReasoningDelta", "TextDelta", "Finished"]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.usage == Usage(3, 1, 4, reasoning_tokens=2)


async def test_a_chunk_of_the_wrong_shape_is_an_engine_failure(
    upstream: Upstream, engines: Engines
) -> None:
    upstream.script(Behaviour(raw_events=['{"choices": ["not an object"]}', "[DONE]"]))
    engine = await engines()
    error = await first_error(engine, chat())
    assert type(error) is EngineFailure and "malformed" in error.message


async def test_without_usage_the_counts_are_an_estimate(
    upstream: Upstream, engines: Engines
) -> None:
    upstream.behaviour = Behaviour(text="one two three four", usage=False)
    engine = await engines()
    stream = engine.stream(chat("Please count to four"))
    events = await collect(stream)
    finished = events[-1]
    assert isinstance(finished, Finished)
    usage = finished.usage
    assert usage.estimated
    assert usage.completion_tokens >= 4  # at least one per chunk
    assert usage.prompt_tokens >= 4  # at least the words of the prompt
    assert stream.tracker.snapshot().estimated


async def test_a_long_prompt_is_estimated_too(upstream: Upstream, engines: Engines) -> None:
    upstream.behaviour = Behaviour(text="ok", usage=False)
    engine = await engines()
    words = 3000  # more than is counted on the event loop: counted on a thread
    events = await collect(engine.stream(chat(" ".join(["token"] * words))))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.usage.estimated
    assert finished.usage.prompt_tokens >= words


class _CallbacksLate(asyncio.Future[int]):
    """A finished estimate whose done-callbacks have not run yet (a busy loop runs them on
    a later turn than the stream's)."""

    def add_done_callback(self, fn, *, context=None):  # type: ignore[no-untyped-def, override]
        pass


@pytest.mark.parametrize("broken", [False, True])
async def test_a_long_prompts_estimate_counts_even_before_its_callback_ran(
    upstream: Upstream, engines: Engines, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    """The stream's end reads the estimate itself: CI once billed such a prompt as 0 tokens
    on a loaded machine. Also when the upstream breaks off (billed on the estimate)."""
    upstream.behaviour = (
        Behaviour(text="a b c d e f", usage=False, drop_after_tokens=2)
        if broken
        else Behaviour(text="ok", usage=False)
    )
    engine = await engines()
    estimate = _CallbacksLate()
    estimate.set_result(3_000)
    estimator = type(engine._estimator())
    monkeypatch.setattr(estimator, "prompt_now", lambda self, request: None)
    monkeypatch.setattr(estimator, "prompt", lambda self, request: estimate)
    stream = engine.stream(chat("a long prompt"))
    if broken:
        with pytest.raises(EngineFailure):
            await collect(stream)
        assert stream.tracker.snapshot().prompt_tokens == 3_000
    else:
        finished = (await collect(stream))[-1]
        assert isinstance(finished, Finished) and finished.usage.prompt_tokens == 3_000


async def test_completions_relay_a_plain_prompt(upstream: Upstream, engines: Engines) -> None:
    upstream.behaviour = Behaviour(text="4 5 6", prompt_tokens=3)
    engine = await engines()
    request = GenerationRequest("r", "relay", prompt="1 2 3", sampling=SamplingParams(max_tokens=3))
    events = await collect(engine.stream(request))
    received = upstream.requests[-1]
    assert received.path == "/v1/completions"
    assert received.body == {
        "model": "upstream-model",
        "prompt": "1 2 3",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
    }
    assert text_of(events) == "4 5 6"
    assert isinstance(events[-1], Finished)
    assert events[-1].usage == Usage(prompt_tokens=3, completion_tokens=3)


@pytest.mark.parametrize("reports_usage", [True, False])
async def test_embeddings(upstream: Upstream, engines: Engines, reports_usage: bool) -> None:
    upstream.behaviour = Behaviour(usage=reports_usage, embedding_dimensions=3)
    engine = await engines(kind=ModelKind.EMBEDDING, upstream_model="embedder")
    result = await engine.embed(EmbeddingRequest("r", "relay", ("a b", "c d e")))
    assert result.vectors == ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert upstream.requests[-1].path == "/v1/embeddings"
    assert upstream.requests[-1].body["input"] == ["a b", "c d e"]
    assert upstream.requests[-1].body["model"] == "embedder"
    assert result.usage.estimated is not reports_usage
    if reports_usage:
        assert result.usage.prompt_tokens == 5
    else:
        assert result.usage.prompt_tokens >= 5


async def test_prompt_count_is_an_upper_bound(upstream: Upstream, engines: Engines) -> None:
    engine = await engines()
    text = "Wie spät ist es in 北京? Answer in one word."
    request = chat(text)
    bound = await engine.count_prompt_tokens(request)
    assert bound >= len(text.encode())  # at least one token per byte, plus the frame
    stream = engine.stream(request)
    await collect(stream)
    upstream.behaviour = Behaviour(usage=False)
    estimate_stream = engine.stream(request)
    await collect(estimate_stream)
    assert bound >= estimate_stream.tracker.prompt_tokens


# -- errors ---------------------------------------------------------------------------------
async def first_error(engine: OpenAIHttpEngine, request: GenerationRequest) -> OpenMaaSError:
    stream = engine.stream(request)
    with pytest.raises(OpenMaaSError) as caught:
        await collect(stream)
    assert engine.capacity().in_flight == 0
    return caught.value


async def test_429_is_unavailable_with_retry_after(upstream: Upstream, engines: Engines) -> None:
    upstream.script(Behaviour(status=429, retry_after="7"))
    engine = await engines()
    error = await first_error(engine, chat())
    assert isinstance(error, UpstreamUnavailable)
    assert (error.status, error.deployment, error.retry_after_seconds) == (429, "dep-1", 7.0)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_are_unavailable(
    upstream: Upstream, engines: Engines, status: int
) -> None:
    upstream.script(Behaviour(status=status))
    engine = await engines()
    error = await first_error(engine, chat())
    assert isinstance(error, UpstreamUnavailable) and error.status == status


async def test_500_is_an_engine_failure(upstream: Upstream, engines: Engines) -> None:
    upstream.script(Behaviour(status=500, error_message="CUDA out of memory"))
    engine = await engines()
    error = await first_error(engine, chat())
    assert type(error) is EngineFailure
    assert "500" in error.message and "CUDA out of memory" in error.message


def structured(kind: ResponseFormatKind = ResponseFormatKind.JSON_SCHEMA) -> GenerationRequest:
    schema = {"type": "not-a-type"} if kind is ResponseFormatKind.JSON_SCHEMA else None
    return GenerationRequest(
        "req-1",
        "relay",
        messages=(Message(Role.USER, "json please"),),
        response_format=ResponseFormat(kind, schema),
    )


VLLM_SCHEMA_ERRORS = [
    "Grammar error: Invalid type: not-a-type",
    "The provided JSON schema contains features not supported by xgrammar.",
    "Failed to initialize samplers: failed to parse grammar",
]


@pytest.mark.parametrize("message", VLLM_SCHEMA_ERRORS)
async def test_a_500_naming_the_requests_schema_is_the_requests_fault(
    upstream: Upstream, engines: Engines, message: str
) -> None:
    """vLLM answers some schemas it cannot compile with 500 (vllm-project/vllm#57725)."""
    upstream.script(Behaviour(status=500, error_message=message))
    engine = await engines()
    error = await first_error(engine, structured())
    assert type(error) is InvalidRequest and error.param == "response_format.json_schema.schema"
    assert message in error.message and "HTTP" not in error.message


async def test_json_mode_and_tools_are_named_too(upstream: Upstream, engines: Engines) -> None:
    engine = await engines()
    upstream.script(Behaviour(status=500, error_message="guided_json: invalid"))
    error = await first_error(engine, structured(ResponseFormatKind.JSON_OBJECT))
    assert isinstance(error, InvalidRequest) and error.param == "response_format"
    tools = GenerationRequest(
        "r", "relay", messages=(Message(Role.USER, "hi"),), tools=(Tool("t"),)
    )
    upstream.script(Behaviour(status=500, error_message="Grammar error: bad $ref"))
    error = await first_error(engine, tools)
    assert isinstance(error, InvalidRequest) and error.param == "tools"


async def test_an_error_event_naming_the_schema_before_any_token_is_the_requests_fault(
    upstream: Upstream, engines: Engines
) -> None:
    upstream.script(Behaviour(error_event_after_tokens=0, error_message=VLLM_SCHEMA_ERRORS[0]))
    engine = await engines()
    error = await first_error(engine, structured())
    assert isinstance(error, InvalidRequest)


async def test_schema_words_without_a_schema_or_after_tokens_stay_engine_failures(
    upstream: Upstream, engines: Engines
) -> None:
    engine = await engines()
    upstream.script(Behaviour(status=500, error_message=VLLM_SCHEMA_ERRORS[0]))
    assert type(await first_error(engine, chat())) is EngineFailure  # no schema was sent
    upstream.script(Behaviour(status=500, error_message=""))  # vLLM's empty 500: unknown
    assert type(await first_error(engine, structured())) is EngineFailure
    upstream.script(Behaviour(status=401, error_message="grammar of our key"))
    assert type(await first_error(engine, structured())) is EngineFailure
    upstream.script(Behaviour(error_event_after_tokens=2, error_message=VLLM_SCHEMA_ERRORS[0]))
    assert type(await first_error(engine, structured())) is EngineFailure  # output was sent


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_refused_requests_are_invalid(
    upstream: Upstream, engines: Engines, status: int
) -> None:
    upstream.script(Behaviour(status=status, error_message="temperature is out of range"))
    engine = await engines()
    error = await first_error(engine, chat())
    assert isinstance(error, InvalidRequest)
    assert "temperature is out of range" in error.message


async def test_connection_refused_is_unavailable(engines: Engines) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = await engines(base_url=f"http://127.0.0.1:{port}/v1")
    error = await first_error(engine, chat())
    assert isinstance(error, UpstreamUnavailable) and error.status is None


async def test_drop_before_the_first_token_is_unavailable(
    upstream: Upstream, engines: Engines
) -> None:
    upstream.script(Behaviour(drop_after_tokens=0))
    engine = await engines()
    error = await first_error(engine, chat())
    assert isinstance(error, UpstreamUnavailable)


async def test_drop_mid_stream_fails_with_the_tokens_so_far(
    upstream: Upstream, engines: Engines
) -> None:
    upstream.script(Behaviour(text=LONG, drop_after_tokens=3))
    engine = await engines()
    stream = engine.stream(chat())
    seen: list[StreamEvent] = []
    with pytest.raises(EngineFailure) as caught:
        try:
            async for event in stream:
                seen.append(event)
        finally:
            await stream.aclose()
    assert type(caught.value) is EngineFailure
    assert text_of(seen) == "w0 w1 w2 "
    usage = stream.tracker.snapshot()
    assert usage.completion_tokens >= 3 and usage.prompt_tokens > 0 and usage.estimated


@pytest.mark.parametrize("fault", ["malformed_after_tokens", "error_event_after_tokens"])
async def test_broken_stream_after_tokens_is_an_engine_failure(
    upstream: Upstream, engines: Engines, fault: str
) -> None:
    upstream.script(Behaviour(text=LONG, **{fault: 2}))
    engine = await engines()
    error = await first_error(engine, chat())
    assert type(error) is EngineFailure


# -- timeouts -------------------------------------------------------------------------------
async def test_connect_timeout(engines: Engines) -> None:
    # A listener whose backlog is full: the connection is never accepted.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        try:
            engine = await engines(
                base_url=f"http://127.0.0.1:{port}/v1", timeouts=Timeouts(connect=0.2)
            )
            error = await first_error(engine, chat())
        finally:
            for filler in fillers:
                filler.close()
    assert isinstance(error, EngineTimeout) and error.phase == "connect"


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour(hang_before_headers=True), Behaviour(first_token_delay=30)],
    ids=["no-headers", "slow-first-token"],
)
async def test_first_token_timeout(
    upstream: Upstream, engines: Engines, behaviour: Behaviour
) -> None:
    upstream.script(behaviour)
    engine = await engines(timeouts=Timeouts(first_token=0.2))
    error = await first_error(engine, chat())
    assert isinstance(error, EngineTimeout) and error.phase == "first_token"
    await upstream.wait_for(lambda: upstream.requests[-1].disconnected)


async def test_idle_timeout_keeps_the_tokens_so_far(upstream: Upstream, engines: Engines) -> None:
    upstream.script(Behaviour(text=LONG, hang_after_tokens=2, keepalive=True))
    engine = await engines(timeouts=Timeouts(idle=0.2))
    stream = engine.stream(chat())
    seen: list[StreamEvent] = []
    with pytest.raises(EngineTimeout) as caught:
        try:
            async for event in stream:
                seen.append(event)
        finally:
            await stream.aclose()
    assert caught.value.phase == "idle"
    assert text_of(seen) == "w0 w1 "
    assert stream.tracker.completion_tokens >= 2
    await upstream.wait_for(lambda: upstream.requests[-1].disconnected)


async def test_total_timeout(upstream: Upstream, engines: Engines) -> None:
    upstream.script(Behaviour(text=LONG, token_delay=0.05))
    engine = await engines(timeouts=Timeouts(first_token=None, idle=None, total=0.3))
    error = await first_error(engine, chat())
    assert isinstance(error, EngineTimeout) and error.phase == "total"
    await upstream.wait_for(lambda: upstream.requests[-1].disconnected)


# -- closing, capacity, connections ---------------------------------------------------------
async def test_closing_early_disconnects_the_upstream(upstream: Upstream, engines: Engines) -> None:
    upstream.script(Behaviour(text=LONG, token_delay=0.02))
    engine = await engines()
    stream = engine.stream(chat())
    first = await stream.__anext__()
    second = await stream.__anext__()
    assert isinstance(first, TextDelta) and isinstance(second, TextDelta)
    await stream.aclose()
    received = upstream.requests[-1]
    await upstream.wait_for(lambda: received.disconnected)
    assert received.tokens_sent < 60  # it stopped streaming
    assert not received.completed
    assert engine.capacity().in_flight == 0
    assert stream.tracker.completion_tokens >= 2


async def test_connections_are_kept_alive_and_capped_at_slots(
    upstream: Upstream, engines: Engines
) -> None:
    engine = await engines(slots=2, queue=4)  # one key may fill half the queue
    await collect(engine.stream(chat()))
    await collect(engine.stream(chat()))
    assert upstream.requests[0].client_port == upstream.requests[1].client_port

    upstream.behaviour = Behaviour(text="a b c d", token_delay=0.05)
    results = await asyncio.gather(*(collect(engine.stream(chat())) for _ in range(4)))
    assert all(text_of(events) == "a b c d" for events in results)
    assert upstream.max_in_flight == 2


async def test_probe_models_when_configured(upstream: Upstream) -> None:
    engine = OpenAIHttpEngine(
        "relay",
        OpenAIHttpConfig(upstream.base_url, "upstream-model", probe_models=True),
    )
    await engine.start()
    await engine.stop()
    assert upstream.requests[-1].path == "/v1/models"

    upstream.behaviour = Behaviour(hang_before_headers=True)
    failing = OpenAIHttpEngine(
        "relay",
        OpenAIHttpConfig(upstream.base_url, "m", probe_models=True, timeouts=Timeouts(total=0.2)),
    )
    with pytest.raises(UpstreamUnavailable):
        await failing.start()
    assert failing.health().state.value == "failed"


# -- secrets --------------------------------------------------------------------------------
async def test_the_key_is_never_logged_or_shown(
    upstream: Upstream, engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = await engines(headers={"X-Api-Key": KEY})
    errors: list[OpenMaaSError] = []
    upstream.behaviour = Behaviour(usage=False)
    await collect(engine.stream(chat()))
    for status in (401, 403, 400, 429, 500):
        upstream.script(Behaviour(status=status, error_message=f"Incorrect API key: {KEY}"))
        errors.append(await first_error(engine, chat()))
    upstream.script(Behaviour(text=LONG, error_event_after_tokens=1, error_message=KEY))
    errors.append(await first_error(engine, chat()))

    assert upstream.requests[0].headers["authorization"] == f"Bearer {KEY}"
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
    assert any("credentials" in e.message for e in errors)
    assert KEY not in caplog.text
    assert KEY not in repr(engine) and KEY not in repr(engine.config)
    assert KEY not in str(engine.config)


# -- upstream cost --------------------------------------------------------------------------
PRICE = ModelPrice(
    "upstream-model",
    input_per_million=2_000_000,
    cached_input_per_million=500_000,
    output_per_million=8_000_000,
    currency=Currency.USD,
)


async def test_upstream_cost_from_the_configured_price(
    upstream: Upstream, engines: Engines
) -> None:
    upstream.behaviour = Behaviour(text="a b c", prompt_tokens=1000, cached_tokens=400)
    engine = await engines(price=PRICE)
    stream = engine.stream(chat())
    events = await collect(stream)
    assert isinstance(events[-1], Finished)
    usage = events[-1].usage
    expected = AppliedPrice(PRICE).charge(usage).money
    # 600 input at 2 + 400 cached at 0.5 + 3 output at 8 (USD per 1M)
    assert expected == Money(1200 + 200 + 24, Currency.USD)
    assert stream.route.upstream_cost == expected


async def test_upstream_cost_as_reported(upstream: Upstream, engines: Engines) -> None:
    upstream.behaviour = Behaviour(text="a b c", cost=0.0012345)
    engine = await engines(price=PRICE)  # the reported cost wins over the price
    stream = engine.stream(chat())
    await collect(stream)
    assert stream.route.upstream_cost == Money(1235, Currency.USD)  # rounded up to the micro


async def test_upstream_cost_of_an_interrupted_stream(upstream: Upstream, engines: Engines) -> None:
    upstream.script(Behaviour(text=LONG, drop_after_tokens=3))
    engine = await engines(price=PRICE)
    stream = engine.stream(chat())
    with pytest.raises(EngineFailure):
        await collect(stream)
    cost = stream.route.upstream_cost
    assert cost is not None and cost.micros > 0
    assert cost == AppliedPrice(PRICE).charge(stream.tracker.snapshot()).money


# -- the SSE decoder ------------------------------------------------------------------------
def test_sse_decoder_is_robust_to_any_split() -> None:
    wire = (
        b": keep-alive\r\n\r\n"
        b'data: {"a": 1}\r\n\r\n'
        b"event: message\ndata: line one\ndata: line two\n\n"
        b"id: 3\rdata: cr only\r\r"
        b"data: [DONE]\n\n"
    )
    expected = [b'{"a": 1}', b"line one\nline two", b"cr only", b"[DONE]"]
    for size in (1, 2, 3, 5, 7, len(wire)):
        decoder = SseDecoder()
        payloads: list[bytes] = []
        for start in range(0, len(wire), size):
            payloads += decoder.feed(wire[start : start + size])
        payloads += decoder.flush()
        assert payloads == expected, size


@pytest.mark.parametrize(
    "wire",
    [
        b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n',
        b"data: one\n\n\n\ndata: two\n\n",  # blank lines between events
        b"data: x\n\n: keep-alive\n\ndata: y\n\n",  # a comment among them
        b"data: first line\ndata: second\n\ndata: z\n\n",  # an event of two lines
        b"data:no space\n\ndata:  two spaces\n\ndata: \n\n",
        b"event: message\ndata: named\n\n",
    ],
)
def test_sse_decoder_reads_whole_events_at_once_as_byte_by_byte(wire: bytes) -> None:
    whole, one_by_one = SseDecoder(), SseDecoder()
    at_once = whole.feed(wire) + whole.flush()
    bytewise = [p for i in range(len(wire)) for p in one_by_one.feed(wire[i : i + 1])]
    assert at_once == bytewise + one_by_one.flush()
    assert at_once  # every case carries events


def test_sse_decoder_flushes_an_unterminated_last_event() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: x\n\ndata: [DONE]") == [b"x"]
    assert decoder.flush() == [b"[DONE]"]


# -- through the gateway --------------------------------------------------------------------
async def test_gateway_records_upstream_usage_cost_and_timeouts(
    database: AsyncEngine, upstream: Upstream
) -> None:
    from openmaas.accounts.auth import Principal
    from openmaas.billing.accountant import Accountant
    from openmaas.billing.limiter import InProcessLimiter
    from openmaas.catalog.served import ModelCatalog, ServedModel
    from openmaas.core.ids import new_request_id
    from openmaas.serving.gateway import Gateway
    from openmaas.store.ledger.log import LedgerStore
    from openmaas.store.repositories import UsageRepository

    upstream.behaviour = Behaviour(text="Hi from afar.", prompt_tokens=9, cached_tokens=4)
    engine = OpenAIHttpEngine(
        "relayed",
        OpenAIHttpConfig(
            upstream.base_url,
            "upstream-model",
            api_key=KEY,
            price=PRICE,
            timeouts=Timeouts(idle=0.3),
        ),
    )
    await engine.start()
    try:
        clock = ManualClock(1709251200000, monotonic=100.0, tick=0.01)
        usage_repo = UsageRepository(database)
        billing = Accountant(
            database, LedgerStore(database, clock.now_ms), InProcessLimiter(), clock
        )
        gateway = Gateway(
            ModelCatalog([ServedModel("relayed", engine)]), billing, clock, lambda: False
        )
        principal = Principal(key_id="om0123456789abcdef", org_id="org_test", role="member")
        request = GenerationRequest(
            new_request_id(), "relayed", messages=(Message(Role.USER, "hello"),)
        )
        generation = await gateway.generate(principal, request, "chat.completions")
        try:
            events = [event async for event in generation]
        finally:
            await generation.aclose()
        assert text_of(events) == "Hi from afar."
        row = await usage_repo.get(request.request_id)

        # An upstream that goes quiet mid-stream: a timeout, billed on the estimate so far.
        upstream.script(Behaviour(text=LONG, hang_after_tokens=2, usage=False))
        stalled = GenerationRequest(
            new_request_id(), "relayed", messages=(Message(Role.USER, "hello"),)
        )
        generation = await gateway.generate(principal, stalled, "chat.completions")
        with pytest.raises(EngineTimeout):
            try:
                async for _ in generation:
                    pass
            finally:
                await generation.aclose()
        timed_out = await usage_repo.get(stalled.request_id)
    finally:
        await engine.stop()
    assert row is not None
    assert row["termination"] == "finished"
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (9, 4, 3)
    assert row["estimated"] == 0
    expected = AppliedPrice(PRICE).charge(Usage(9, 4, 3)).micros
    assert row["upstream_cost_micros"] == expected

    assert timed_out is not None
    assert timed_out["termination"] == "timeout"
    assert timed_out["estimated"] == 1
    assert timed_out["completion_tokens"] >= 2 and timed_out["prompt_tokens"] > 0
    assert timed_out["upstream_cost_micros"] > 0
