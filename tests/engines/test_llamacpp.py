"""The in-process llama.cpp engine with the real embedded chat model."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from openmaas.core.errors import EngineNotReady, EngineOverloaded, InvalidRequest
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    TextDelta,
)
from openmaas.engines.base import EngineState, ModelKind
from openmaas.engines.embedded import chat_model_path
from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine


@pytest.fixture()
async def engine() -> AsyncIterator[LlamaCppEngine]:
    eng = LlamaCppEngine(
        "smol",
        LlamaCppConfig(chat_model_path(), ModelKind.CHAT, slots=2, queue=1, threads=2),
    )
    await eng.start()
    yield eng
    await eng.stop()


def _request(text: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        "req", "smol", messages=(Message(Role.USER, text),), sampling=SamplingParams(**sampling)
    )


def _predicted_total(engine: LlamaCppEngine) -> int:
    match = re.search(r"^llamacpp:tokens_predicted_total (\d+)", engine.metrics_text(), re.M)
    assert match is not None
    return int(match.group(1))


async def test_stream_yields_text_and_engine_counted_usage(engine: LlamaCppEngine) -> None:
    stream = engine.stream(_request("Name three fruits.", max_tokens=12, ignore_eos=True))
    events = [event async for event in stream]
    await stream.aclose()
    deltas = [e for e in events if isinstance(e, TextDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason is FinishReason.LENGTH
    assert finished.usage.completion_tokens == 12 and finished.usage.prompt_tokens > 5
    assert deltas and deltas[-1].completion_tokens == 12
    # Running counts never go backwards.
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)
    assert engine.capacity().in_flight == 0


async def test_closing_a_stream_stops_generation_in_llama_cpp(engine: LlamaCppEngine) -> None:
    before = _predicted_total(engine)
    stream = engine.stream(_request("Write a long essay.", max_tokens=1000, ignore_eos=True))
    seen = 0
    async for event in stream:
        seen += isinstance(event, TextDelta)
        if seen == 5:
            break
    await stream.aclose()
    await asyncio.sleep(0.5)  # were it still running, it would make ~50 more tokens meanwhile
    generated = _predicted_total(engine) - before
    reported = stream.tracker.completion_tokens
    assert 5 <= reported <= generated <= reported + 2
    assert engine.capacity().in_flight == 0


async def test_prompt_over_the_context_window_is_an_invalid_request(engine: LlamaCppEngine) -> None:
    stream = engine.stream(_request("hello " * 3000))
    with pytest.raises(InvalidRequest, match="context"):
        async for _ in stream:
            pass
    await stream.aclose()


async def test_capacity_is_slots_plus_queue(engine: LlamaCppEngine) -> None:
    streams = [engine.stream(_request("hi", max_tokens=2)) for _ in range(3)]
    with pytest.raises(EngineOverloaded):
        engine.stream(_request("hi"))
    for stream in streams:
        await stream.aclose()
    assert engine.capacity().in_flight == 0
    again = engine.stream(_request("hi", max_tokens=1))  # admitted again
    assert engine.capacity().in_flight == 1
    await again.aclose()  # closing a stream never iterated releases its place too
    assert engine.capacity().in_flight == 0


async def test_not_ready_until_loaded() -> None:
    eng = LlamaCppEngine("smol", LlamaCppConfig(chat_model_path(), ModelKind.CHAT, threads=2))
    assert eng.health().state is EngineState.LOADING
    with pytest.raises(EngineNotReady):
        eng.stream(_request("hi"))


async def test_missing_model_file_fails_loading_with_the_reason(tmp_path) -> None:
    eng = LlamaCppEngine("ghost", LlamaCppConfig(tmp_path / "none.gguf", ModelKind.CHAT))
    with pytest.raises(FileNotFoundError):
        await eng.start()
    health = eng.health()
    assert health.state is EngineState.FAILED and "none.gguf" in health.detail


async def test_counting_prompt_tokens_matches_what_generation_reads(
    engine: LlamaCppEngine,
) -> None:
    from openmaas.core.types import Tool

    tools = (
        Tool(
            "get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}}
        ),
    )
    for request in (
        _request("Name three fruits.", max_tokens=1),
        GenerationRequest(
            "r", "smol", prompt="The capital of France is", sampling=SamplingParams(max_tokens=1)
        ),
        GenerationRequest(
            "r",
            "smol",
            messages=(Message(Role.USER, "Weather?"),),
            tools=tools,
            sampling=SamplingParams(max_tokens=1),
        ),
    ):
        counted = await engine.count_prompt_tokens(request)
        stream = engine.stream(request)
        events = [event async for event in stream]
        await stream.aclose()
        finished = events[-1]
        assert isinstance(finished, Finished)
        assert counted == finished.usage.prompt_tokens
