"""The slot-engine template's lifecycle: what a caller sees when unloading goes wrong."""

from __future__ import annotations

import asyncio

import pytest

from openmaas.core.errors import EngineFailure, EngineNotReady, InvalidRequest
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    TextDelta,
    Usage,
)
from openmaas.engines.base import EngineState, ModelKind, SlotEngine, choice_request
from openmaas.engines.fake import FakeEngine, FakeScript


class _Unloading(SlotEngine):
    """Unloading waits until the test lets it go; it counts how often it ran."""

    def __init__(self) -> None:
        super().__init__("m", ModelKind.CHAT, slots=1, queue=0)
        self.unloads = 0
        self.unloading = asyncio.Event()
        self.release = asyncio.Event()

    async def _load(self) -> None:
        return None

    async def _unload(self) -> None:
        self.unloads += 1
        self.unloading.set()
        await self.release.wait()


async def test_a_cancelled_stop_leaves_the_engine_stopped_and_a_second_stop_unloads_nothing() -> (
    None
):
    engine = _Unloading()
    await engine.start()
    stopping = asyncio.create_task(engine.stop())
    await engine.unloading.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert engine.health().state is EngineState.STOPPED
    with pytest.raises(EngineNotReady):
        engine.stream(GenerationRequest("req-1", "m", prompt="hi"))
    await engine.stop()
    assert engine.unloads == 1


# -- n choices ------------------------------------------------------------------------------
def _chat(n: int, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        "req",
        "m",
        messages=(Message(Role.USER, "two words"),),
        sampling=SamplingParams(n=n, **sampling),  # type: ignore[arg-type]
    )


async def _fake(**script: object) -> FakeEngine:
    engine = FakeEngine("m", FakeScript(**script))  # type: ignore[arg-type]
    await engine.start()
    return engine


async def test_n_choices_run_as_n_generations_and_their_usage_sums() -> None:
    engine = await _fake(text="a b c", slots=4)
    stream = engine.stream(_chat(3, max_tokens=2))
    assert engine.capacity().in_flight == 3
    events = [event async for event in stream]
    await stream.aclose()
    assert engine.capacity().in_flight == 0
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.choices == (FinishReason.LENGTH,) * 3
    assert finished.reason is FinishReason.LENGTH
    assert finished.usage == Usage(prompt_tokens=3 * 2, completion_tokens=3 * 2)
    for choice in range(3):
        texts = [e.text for e in events if isinstance(e, TextDelta) and e.choice == choice]
        assert texts == ["a ", "b "]
    assert stream.tracker.snapshot() == finished.usage


async def test_closing_a_stream_of_choices_stops_every_choice() -> None:
    engine = await _fake(text=" ".join(["w"] * 100), token_delay=0.01, slots=2)
    stream = engine.stream(_chat(2))
    await stream.__anext__()
    await stream.aclose()
    assert engine.stats.streams_open == 0 and engine.capacity().in_flight == 0
    assert engine.stats.tokens_generated < 200


async def test_a_failing_choice_fails_the_whole() -> None:
    engine = await _fake(text="a b c d", fail_after_tokens=2, slots=2)
    stream = engine.stream(_chat(2))
    with pytest.raises(EngineFailure):
        async for _ in stream:
            pass
    await stream.aclose()
    assert engine.stats.streams_open == 0 and engine.capacity().in_flight == 0


async def test_n_beyond_the_engine_or_on_an_engine_without_choices_is_refused_naming_n() -> None:
    engine = await _fake(slots=2, queue=1)
    with pytest.raises(InvalidRequest) as too_many:
        engine.stream(_chat(4))
    assert too_many.value.param == "n" and engine.capacity().in_flight == 0
    plain = _Unloading()
    await plain.start()
    with pytest.raises(InvalidRequest) as refused:
        plain.stream(_chat(2))
    assert refused.value.param == "n"


def test_each_choice_is_a_request_of_its_own() -> None:
    request = _chat(3, seed=7)
    assert [choice_request(request, i).request_id for i in range(3)] == ["req", "req-1", "req-2"]
    assert [choice_request(request, i).sampling.seed for i in range(3)] == [7, 8, 9]
    assert {choice_request(request, i).sampling.n for i in range(3)} == {1}
