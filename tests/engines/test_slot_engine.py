"""The slot-engine template's lifecycle: what a caller sees when unloading goes wrong."""

from __future__ import annotations

import asyncio

import pytest

from openmaas.core.errors import EngineFailure, EngineNotReady, EngineOverloaded, InvalidRequest
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    Role,
    RoutingHints,
    SamplingParams,
    TextDelta,
    Usage,
)
from openmaas.engines.base import (
    EngineState,
    EngineStream,
    ModelKind,
    SlotEngine,
    choice_request,
)
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


# -- the fair queue in front of the slots (engines/slots/fair.py) ---------------------------------
def _of(org: str, number: int, weight: int = 1) -> GenerationRequest:
    routing = RoutingHints(cache_scope=org, share_weight=weight)
    return GenerationRequest(f"{org}-{number}", "m", prompt=f"{org} {number}", routing=routing)


async def test_only_the_slots_run_and_a_waiting_request_reaches_the_engine_when_one_frees() -> None:
    engine = await _fake(text="a b", slots=1, queue=2)
    first = engine.stream(_of("A", 1))
    second = engine.stream(_of("A", 2))
    await first.__anext__()
    waiting = asyncio.create_task(second.__anext__())
    await asyncio.sleep(0)
    assert engine.stats.streams_started == 1 and engine.capacity().in_flight == 2
    assert not waiting.done()
    await first.aclose()
    assert isinstance(await waiting, TextDelta)
    assert engine.stats.streams_started == 2
    await second.aclose()
    assert engine.capacity().in_flight == 0


async def test_another_organization_runs_ahead_of_one_organizations_backlog() -> None:
    engine = await _fake(text="a", slots=1, queue=8)
    started: list[str] = []

    async def run(stream: EngineStream) -> None:
        try:
            async for _ in stream:
                started.append(engine.stats.last_prompt or "")
                break
        finally:
            await stream.aclose()

    head = engine.stream(_of("A", 0))
    await head.__anext__()  # A holds the one slot
    backlog = [asyncio.create_task(run(engine.stream(_of("A", i)))) for i in range(1, 5)]
    other = asyncio.create_task(run(engine.stream(_of("B", 1))))
    await asyncio.sleep(0)
    await head.aclose()
    await asyncio.gather(*backlog, other)
    assert started == ["B 1", "A 1", "A 2", "A 3", "A 4"]


async def test_an_organization_over_its_share_of_the_queue_is_refused_and_another_is_not() -> None:
    engine = await _fake(slots=1, queue=4)  # a share of 0.5: two waiting per organization
    streams = [engine.stream(_of("A", i)) for i in range(3)]
    with pytest.raises(EngineOverloaded):
        engine.stream(_of("A", 3))
    streams.append(engine.stream(_of("B", 1)))
    assert engine.capacity().in_flight == 4
    for stream in streams:
        await stream.aclose()
    assert engine.capacity().in_flight == 0


async def test_a_stream_read_to_its_end_frees_its_slot_before_it_is_closed() -> None:
    engine = await _fake(text="a b", slots=1, queue=1)
    first = engine.stream(_of("A", 1))
    events = [event async for event in first]
    assert isinstance(events[-1], Finished)
    assert engine.capacity().in_flight == 0
    second = engine.stream(_of("B", 1))  # runs at once: the slot is free
    assert isinstance(await second.__anext__(), TextDelta)
    await first.aclose()
    await second.aclose()
    assert engine.stats.streams_started == 2 and engine.capacity().in_flight == 0


async def test_a_stream_closed_before_it_starts_leaves_the_queue() -> None:
    engine = await _fake(slots=1, queue=1)
    first = engine.stream(_of("A", 1))
    second = engine.stream(_of("B", 1))
    await second.aclose()
    assert engine.capacity().in_flight == 1
    with pytest.raises(StopAsyncIteration):
        await second.__anext__()
    await first.aclose()
    assert engine.stats.streams_started == 0 and engine.capacity().in_flight == 0


async def test_a_request_whose_client_leaves_while_it_waits_never_reaches_the_engine() -> None:
    engine = await _fake(slots=1, queue=1)
    first = engine.stream(_of("A", 1))
    await first.__anext__()
    second = engine.stream(_of("B", 1))
    waiting = asyncio.create_task(second.__anext__())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await second.aclose()
    assert engine.capacity().in_flight == 1
    third = engine.stream(_of("C", 1))  # its place in the queue is free again
    await first.aclose()
    assert isinstance(await third.__anext__(), TextDelta)
    await third.aclose()
    assert engine.stats.streams_started == 2 and engine.capacity().in_flight == 0


async def test_more_choices_than_slots_take_turns_and_finish() -> None:
    engine = await _fake(text="a b", slots=1, queue=2)
    stream = engine.stream(_chat(3))
    events = [event async for event in stream]
    await stream.aclose()
    finished = events[-1]
    assert isinstance(finished, Finished) and len(finished.choices) == 3
    assert engine.capacity().in_flight == 0


class _Embedding(SlotEngine):
    """Embeds once the test lets it; counts the embeddings that reached it."""

    def __init__(self) -> None:
        super().__init__("e", ModelKind.EMBEDDING, slots=1, queue=2)
        self.go = asyncio.Event()
        self.reached = asyncio.Event()
        self.started = 0

    async def _load(self) -> None:
        return None

    async def _unload(self) -> None:
        return None

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self.started += 1
        self.reached.set()
        await self.go.wait()
        return EmbeddingResult(((0.0,),), Usage(prompt_tokens=1))


async def test_embeddings_wait_for_a_slot_too() -> None:
    engine = _Embedding()
    await engine.start()
    requests = [EmbeddingRequest(f"r{i}", "e", ("x",)) for i in range(2)]
    tasks = [asyncio.create_task(engine.embed(r)) for r in requests]
    await engine.reached.wait()
    for _ in range(3):
        await asyncio.sleep(0)  # the second had its turn to run, and waits
    assert engine.started == 1 and engine.capacity().in_flight == 2
    engine.go.set()
    await asyncio.gather(*tasks)
    assert engine.started == 2 and engine.capacity().in_flight == 0
