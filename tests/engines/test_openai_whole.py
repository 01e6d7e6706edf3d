"""Whole answers: a request whose client reads only the whole answer (``stream`` false) is
sent to an OpenAI-compatible upstream as ``stream: false`` and answered from its one JSON
body, with the same events, counts and errors as a stream would give."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from openmaas.core.errors import EngineFailure, EngineTimeout, UpstreamUnavailable
from openmaas.core.money import Currency, Money
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    ReasoningDelta,
    Role,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.engines.upstream.openai_http import Timeouts
from tests.engines.upstream import Behaviour, Engines, ToolCallSpec, Upstream, collect, text_of

LONG = " ".join(f"w{i}" for i in range(60))


def whole(text: str = "Say hello", stream: bool = False, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        "req-w",
        "relay",
        messages=(Message(Role.USER, text),),
        sampling=SamplingParams(**sampling),
        stream=stream,
    )


async def test_a_whole_answer_is_asked_for_in_one_response(
    upstream: Upstream, engines: Engines
) -> None:
    engine = await engines()
    upstream.behaviour = Behaviour(
        text="Hello from the upstream.", reasoning="Let me think", prompt_tokens=21
    )
    events = await collect(engine.stream(whole(max_tokens=50)))
    sent = upstream.requests[-1]
    assert sent.body["stream"] is False
    assert "stream_options" not in sent.body
    assert sent.body["max_tokens"] == 50
    assert sent.headers["accept"] == "application/json"
    assert text_of(events) == "Hello from the upstream."
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["Let me think"]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reason is FinishReason.STOP
    # The upstream's counts: 3 reasoning words and 4 text words, 21 prompt tokens.
    assert finished.usage == Usage(21, 0, 7, estimated=False, reasoning_tokens=3)


async def test_a_streaming_client_is_still_streamed(upstream: Upstream, engines: Engines) -> None:
    engine = await engines()
    events = await collect(engine.stream(whole(stream=True)))
    assert upstream.requests[-1].body["stream"] is True
    assert len([e for e in events if isinstance(e, TextDelta)]) == 4  # one per word


async def test_whole_answers_can_be_turned_off(upstream: Upstream, engines: Engines) -> None:
    engine = await engines(whole_answers=False)
    events = await collect(engine.stream(whole()))
    assert upstream.requests[-1].body["stream"] is True
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    assert text_of(events) == "Hello from the upstream."


async def test_tool_calls_of_a_whole_answer(upstream: Upstream, engines: Engines) -> None:
    engine = await engines()
    upstream.behaviour = Behaviour(
        tool_calls=[
            ToolCallSpec("get_weather", {"city": "Beijing"}, id="call_a"),
            ToolCallSpec("get_time", {"zone": "UTC"}),
        ]
    )
    events = await collect(engine.stream(whole()))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(c.index, c.id, c.name) for c in calls] == [
        (0, "call_a", "get_weather"),
        (1, "call_1", "get_time"),
    ]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Beijing"}, {"zone": "UTC"}]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reason is FinishReason.TOOL_CALLS


async def test_a_plain_completion_as_a_whole_answer(upstream: Upstream, engines: Engines) -> None:
    engine = await engines()
    request = GenerationRequest("req-c", "relay", prompt="Once upon", stream=False)
    events = await collect(engine.stream(request))
    assert upstream.requests[-1].path.endswith("/completions")
    assert upstream.requests[-1].body["stream"] is False
    assert text_of(events) == "Hello from the upstream."
    assert isinstance(events[-1], Finished)


async def test_without_usage_a_whole_answer_is_estimated(
    upstream: Upstream, engines: Engines
) -> None:
    engine = await engines()
    upstream.behaviour = Behaviour(text="one two three four five", usage=False)
    events = await collect(engine.stream(whole("a prompt of several words")))
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.estimated
    assert finished.usage.prompt_tokens > 5
    assert finished.usage.completion_tokens >= 5


async def test_upstream_cost_of_a_whole_answer(upstream: Upstream, engines: Engines) -> None:
    engine = await engines(reported_cost_currency=Currency.USD)
    upstream.behaviour = Behaviour(cost=0.0025)
    stream = engine.stream(whole())
    await collect(stream)
    assert stream.tracker.upstream_cost == Money(2500, Currency.USD)


async def test_the_total_timeout_bounds_a_whole_answer_not_the_first_tokens(
    upstream: Upstream, engines: Engines
) -> None:
    # A whole answer arrives only when all of it is generated: the first-token and idle
    # deadlines would cut a long answer that is not stalled.
    engine = await engines(timeouts=Timeouts(first_token=0.2, idle=0.05, total=5))
    upstream.script(Behaviour(text="a b c d e f", token_delay=0.1))
    events = await collect(engine.stream(whole()))
    assert text_of(events) == "a b c d e f"
    engine_total = await engines(timeouts=Timeouts(first_token=30, total=0.3))
    upstream.script(Behaviour(hang_after_tokens=0))
    with pytest.raises(EngineTimeout) as caught:
        await collect(engine_total.stream(whole()))
    assert caught.value.phase == "total"
    await upstream.wait_for(lambda: upstream.requests[-1].disconnected)


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        (Behaviour(drop_after_tokens=0), UpstreamUnavailable),  # another deployment may try
        (Behaviour(malformed_after_tokens=0), EngineFailure),
        (Behaviour(error_event_after_tokens=0), EngineFailure),
        (Behaviour(status=503), UpstreamUnavailable),
    ],
)
async def test_a_broken_whole_answer(
    upstream: Upstream, engines: Engines, behaviour: Behaviour, error: type[Exception]
) -> None:
    engine = await engines()
    upstream.script(behaviour)
    stream = engine.stream(whole())
    with pytest.raises(error):
        await collect(stream)
    # Nothing came: the prompt's estimate and no completion tokens.
    usage = stream.tracker.snapshot()
    assert usage.estimated and usage.prompt_tokens > 0 and usage.completion_tokens == 0


async def test_closing_a_whole_answer_early_disconnects_the_upstream(
    upstream: Upstream, engines: Engines
) -> None:
    engine = await engines()
    upstream.script(Behaviour(text=LONG, hang_after_tokens=0))
    stream = engine.stream(whole("please write a long answer"))
    reader = asyncio.ensure_future(collect(stream))
    await upstream.wait_for(lambda: bool(upstream.requests) and upstream.in_flight == 1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await upstream.wait_for(lambda: upstream.requests[-1].disconnected)
    usage = stream.tracker.snapshot()
    assert usage.estimated and usage.prompt_tokens > 0 and usage.completion_tokens == 0
