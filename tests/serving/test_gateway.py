"""The metered request path (serving/gateway.py): every way a generation ends leaves exactly
one usage record, and requests refused before reaching an engine leave none."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant, Ticket
from openmaas.billing.limiter import InProcessLimiter
from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.core.errors import (
    EngineFailure,
    EngineNotReady,
    EngineOverloaded,
    InvalidRequest,
    ModelNotFound,
)
from openmaas.core.ids import new_request_id
from openmaas.core.keys import KeyRevoked
from openmaas.core.termination import Termination
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    TextDelta,
    Usage,
)
from openmaas.core.usage import UsageRecord
from openmaas.engines.base import Engine, EngineStream, ModelKind, SlotEngine
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.serving.gateway import Gateway
from openmaas.serving.generation import Generation
from openmaas.store.billing import InFlight
from openmaas.store.changes import Change
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import UsageRepository
from openmaas.store.schema import inflight, usage_records
from tests.support.clock import ManualClock
from tests.support.waiting import eventually

NOW_MS = 1709251200000  # 2024-03-01T00:00:00Z
PRINCIPAL = Principal(key_id="om0123456789abcdef", org_id="org_test", role="member")
PROMPT = "say hello to the tests"  # 5 words: the fake counts one prompt token per word
LONG_TEXT = "one two three four five six seven eight nine ten"


class SlowToStop(FakeEngine):
    """A fake whose streams take a while to stop (an upstream connection closing)."""

    def __init__(self) -> None:
        super().__init__("fake-chat", FakeScript(text=LONG_TEXT, token_delay=0.02))
        self.stopping = asyncio.Event()
        self.may_stop = asyncio.Event()
        self.stopped = 0

    def stream(self, request: GenerationRequest) -> EngineStream:
        stream = super().stream(request)
        close = stream.aclose

        async def aclose() -> None:
            self.stopping.set()
            await self.may_stop.wait()
            await close()
            self.stopped += 1

        stream.aclose = aclose  # type: ignore[method-assign]
        return stream


async def test_closing_runs_to_its_end_however_often_the_caller_is_cancelled(
    harness: Harness,
) -> None:
    """A client hanging up, then a shutdown, while the generation closes: the engine's
    stream is still stopped to its end (its slot freed) and the usage recorded once; the
    caller gets its cancellation after."""
    engine = SlowToStop()
    gateway = await harness.gateway(ServedModel("fake-chat", engine))
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    await generation.__anext__()
    closing = asyncio.ensure_future(generation.aclose())
    await engine.stopping.wait()
    for _ in range(2):
        closing.cancel()
        await asyncio.sleep(0.01)
    engine.may_stop.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert engine.stopped == 1
    assert engine.stats.streams_open == 0 and engine.capacity().in_flight == 0
    row = await harness.record(request.request_id)
    assert row is not None and row["termination"] == "client_disconnected"
    assert await harness.recorded() == [request.request_id]


def frozen_clock() -> ManualClock:
    """Wall clock frozen at NOW_MS; the monotonic clock moves 10 ms each time it is read."""
    return ManualClock(NOW_MS, monotonic=100.0, tick=0.01)


def billing_over(database: AsyncEngine, clock: ManualClock) -> Accountant:
    ledger = LedgerStore(database, clock.now_ms)
    return Accountant(database, ledger, InProcessLimiter(), clock)


class Harness:
    def __init__(self, database: AsyncEngine) -> None:
        self.database = database
        self.usage = UsageRepository(database)
        self.shutting_down = False
        self.engines: list[Engine] = []

    async def gateway(self, *models: ServedModel, start: bool = True) -> Gateway:
        for model in models:
            self.engines.append(model.engine)
            if start:
                await model.engine.start()
        return self.gateway_over(*models)

    def gateway_over(self, *models: ServedModel) -> Gateway:
        clock = frozen_clock()
        return Gateway(
            ModelCatalog(models), billing_over(self.database, clock), clock,
            lambda: self.shutting_down,
        )  # fmt: skip

    async def fake(self, start: bool = True, **script: object) -> tuple[Gateway, FakeEngine]:
        engine = FakeEngine("fake-chat", FakeScript(**script))
        return await self.gateway(ServedModel("fake-chat", engine), start=start), engine

    async def record(self, request_id: str) -> dict[str, object] | None:
        return await self.usage.get(request_id)

    async def in_flight(self) -> int:
        """Requests admitted and not yet settled or released, by their in-flight rows."""
        async with self.database.connect() as conn:
            return len((await conn.execute(select(inflight))).all())

    async def recorded(self) -> list[str]:
        """The request ids of every usage record, oldest first."""
        async with self.database.connect() as conn:
            rows = await conn.execute(
                select(usage_records.c.request_id).order_by(usage_records.c.started_at_ms)
            )
            return [row.request_id for row in rows]


@pytest.fixture
async def harness(database: AsyncEngine) -> AsyncIterator[Harness]:
    h = Harness(database)
    try:
        yield h
    finally:
        for engine in h.engines:
            await engine.stop()


def chat(max_tokens: int | None = None, model: str = "fake-chat") -> GenerationRequest:
    return GenerationRequest(
        request_id=new_request_id(),
        model=model,
        messages=(Message(Role.USER, PROMPT),),
        sampling=SamplingParams(max_tokens=max_tokens),
    )


async def drain(generation: Generation) -> tuple[str, Finished | None]:
    text, finished = "", None
    async for event in generation:
        if isinstance(event, TextDelta):
            text += event.text
        else:
            finished = event
    return text, finished


# -- ways a generation ends -----------------------------------------------------------
async def test_finished_generation_records_the_engine_counts(harness: Harness) -> None:
    gateway, _ = await harness.fake(text="Hello from the fake engine.")
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    try:
        text, finished = await drain(generation)
    finally:
        record = await generation.aclose()
    assert text == "Hello from the fake engine."
    assert finished is not None and finished.reason is FinishReason.STOP
    assert finished.usage == Usage(prompt_tokens=5, completion_tokens=5)

    assert record is not None and record.termination is Termination.FINISHED
    row = await harness.record(request.request_id)
    assert row is not None
    assert row["termination"] == "finished"
    assert row["prompt_tokens"] == 5
    assert row["completion_tokens"] == 5  # one token per word
    assert row["key_id"] == PRINCIPAL.key_id and row["org_id"] == PRINCIPAL.org_id
    assert row["model"] == "fake-chat" and row["endpoint"] == "chat.completions"
    assert row["started_at_ms"] == NOW_MS and row["day"] == "2024-03-01"
    assert row["ttft_ms"] is not None
    assert 0 <= row["ttft_ms"] <= row["latency_ms"]
    assert row["error"] is None


async def test_length_generation_is_billed_for_max_tokens(harness: Harness) -> None:
    gateway, _ = await harness.fake(text=LONG_TEXT)
    request = chat(max_tokens=2)
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    try:
        text, finished = await drain(generation)
    finally:
        await generation.aclose()
    assert text == "one two "
    assert finished is not None and finished.reason is FinishReason.LENGTH
    row = await harness.record(request.request_id)
    assert row["termination"] == "length"
    assert row["completion_tokens"] == 2


async def test_engine_error_before_first_token_raises_and_is_recorded(harness: Harness) -> None:
    gateway, engine = await harness.fake(fail_before_first_token=True)
    request = chat()
    with pytest.raises(EngineFailure):
        await gateway.generate(PRINCIPAL, request, "chat.completions")
    row = await harness.record(request.request_id)
    assert row is not None
    assert row["termination"] == "engine_error"
    assert row["completion_tokens"] == 0
    assert row["prompt_tokens"] == 5
    assert row["ttft_ms"] is None
    assert row["error"]
    # the failed request gave its slot back
    assert engine.capacity().in_flight == 0
    assert await gateway.wait_idle(timeout=1.0)


async def test_engine_error_mid_stream_bills_the_tokens_generated(harness: Harness) -> None:
    gateway, engine = await harness.fake(text=LONG_TEXT, fail_after_tokens=3)
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    deltas: list[TextDelta] = []
    try:
        with pytest.raises(EngineFailure):
            async for event in generation:
                assert isinstance(event, TextDelta)
                deltas.append(event)
    finally:
        record = await generation.aclose()
    assert [d.text for d in deltas] == ["one ", "two ", "three "]
    assert record is not None and record.termination is Termination.ENGINE_ERROR
    row = await harness.record(request.request_id)
    assert row["termination"] == "engine_error"
    assert row["completion_tokens"] == 3
    assert row["ttft_ms"] is not None
    assert row["error"]
    assert engine.capacity().in_flight == 0


@pytest.mark.parametrize(
    ("shutting_down", "termination"),
    [(False, "client_disconnected"), (True, "gateway_shutdown")],
    ids=["client-gone", "shutdown"],
)
async def test_closing_early_stops_the_engine_and_bills_what_it_generated(
    harness: Harness, shutting_down: bool, termination: str
) -> None:
    delay = 0.02
    gateway, engine = await harness.fake(text=LONG_TEXT, token_delay=delay)
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    try:
        first = await generation.__anext__()
        second = await generation.__anext__()
        assert (first.text, second.text) == ("one ", "two ")
        harness.shutting_down = shutting_down
    finally:
        record = await generation.aclose()

    assert record is not None and record.termination == termination
    row = await harness.record(request.request_id)
    assert row["termination"] == termination
    assert row["completion_tokens"] == 2
    assert row["prompt_tokens"] == 5
    # the engine really stopped: its stream is closed, nothing is generated for nobody
    await eventually(lambda: engine.stats.streams_open == 0, what="the engine's stream closed")
    assert engine.stats.tokens_generated == 2
    assert engine.stats.streams_open == 0
    assert engine.capacity().in_flight == 0


async def test_cancelling_the_consumer_bills_a_client_disconnect(harness: Harness) -> None:
    """What the server does when a client goes away: the iterating task is cancelled and its
    ``finally`` closes the generation."""
    gateway, engine = await harness.fake(text=LONG_TEXT, token_delay=0.02)
    request = chat()
    seen: list[str] = []
    two_seen = asyncio.Event()

    async def consume() -> None:
        generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
        try:
            async for event in generation:
                seen.append(event.text)
                if len(seen) == 2:
                    two_seen.set()
        finally:
            await generation.aclose()

    task = asyncio.create_task(consume())
    await two_seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await harness.record(request.request_id)
    assert row is not None
    assert row["termination"] == "client_disconnected"
    assert row["completion_tokens"] == engine.stats.tokens_generated
    assert row["completion_tokens"] >= 2
    assert engine.stats.streams_open == 0
    assert engine.capacity().in_flight == 0


async def test_aclose_twice_records_once(harness: Harness) -> None:
    gateway, _ = await harness.fake()
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    await drain(generation)
    first = await generation.aclose()
    second = await generation.aclose()
    assert first is not None
    assert second is None
    assert await harness.recorded() == [request.request_id]
    # the open-generation count was decremented once, so shutdown is not kept waiting
    assert await gateway.wait_idle(timeout=1.0)


async def test_aclose_without_iterating_bills_the_primed_token(harness: Harness) -> None:
    gateway, engine = await harness.fake(text=LONG_TEXT, token_delay=0.02)
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    await generation.aclose()
    row = await harness.record(request.request_id)
    assert row["termination"] == "client_disconnected"
    assert row["completion_tokens"] == 1  # generate() waits for the first token
    assert engine.stats.tokens_generated == 1


# -- refused before reaching an engine: no usage record -------------------------------
async def test_full_engine_refuses_with_overloaded_and_records_nothing(harness: Harness) -> None:
    gateway, engine = await harness.fake(text=LONG_TEXT, slots=1, queue=0, token_delay=0.02)
    admitted = chat()
    generation = await gateway.generate(PRINCIPAL, admitted, "chat.completions")
    try:
        refused = chat()
        with pytest.raises(EngineOverloaded) as info:
            await gateway.generate(PRINCIPAL, refused, "chat.completions")
        assert info.value.retry_after_seconds > 0
        assert await harness.record(refused.request_id) is None
    finally:
        await generation.aclose()
    assert await harness.record(admitted.request_id) is not None
    assert await harness.recorded() == [admitted.request_id]
    assert engine.stats.streams_started == 1

    # once the slot is free the engine admits again
    again = chat()
    generation = await gateway.generate(PRINCIPAL, again, "chat.completions")
    await generation.aclose()
    assert await harness.record(again.request_id) is not None


async def test_engine_still_loading_refuses_with_not_ready_and_records_nothing(
    harness: Harness,
) -> None:
    gateway, engine = await harness.fake(start=False)
    request = chat()
    with pytest.raises(EngineNotReady):
        await gateway.generate(PRINCIPAL, request, "chat.completions")
    assert await harness.record(request.request_id) is None
    assert await harness.recorded() == []
    assert engine.stats.streams_started == 0
    assert await gateway.wait_idle(timeout=1.0)


async def test_engine_that_failed_to_load_refuses_with_not_ready(harness: Harness) -> None:
    engine = FakeEngine("fake-chat", FakeScript(fail_on_load=True))
    harness.engines.append(engine)
    with pytest.raises(EngineFailure):
        await engine.start()
    gateway = harness.gateway_over(ServedModel("fake-chat", engine))
    with pytest.raises(EngineNotReady) as info:
        await gateway.generate(PRINCIPAL, chat(), "chat.completions")
    assert "scripted load failure" in info.value.message
    assert await harness.recorded() == []


async def test_unknown_model_is_model_not_found(harness: Harness) -> None:
    gateway, _ = await harness.fake()
    request = chat(model="no-such-model")
    with pytest.raises(ModelNotFound) as info:
        await gateway.generate(PRINCIPAL, request, "chat.completions")
    assert info.value.model == "no-such-model"
    with pytest.raises(ModelNotFound):
        await gateway.embed(
            PRINCIPAL, EmbeddingRequest(new_request_id(), "no-such-model", ("x",)), "embeddings"
        )
    assert await harness.recorded() == []


async def test_chat_model_cannot_serve_embeddings(harness: Harness) -> None:
    gateway, _ = await harness.fake()
    with pytest.raises(InvalidRequest) as info:
        await gateway.embed(
            PRINCIPAL, EmbeddingRequest(new_request_id(), "fake-chat", ("x",)), "embeddings"
        )
    assert info.value.param == "model"
    assert await harness.recorded() == []


# -- shutdown -------------------------------------------------------------------------
async def test_wait_idle_waits_for_open_generations(harness: Harness) -> None:
    gateway, _ = await harness.fake(text=LONG_TEXT)
    assert await gateway.wait_idle(timeout=1.0)
    g1 = await gateway.generate(PRINCIPAL, chat(), "chat.completions")
    g2 = await gateway.generate(PRINCIPAL, chat(), "chat.completions")
    assert not await gateway.wait_idle(timeout=0.02)
    await g1.aclose()
    assert not await gateway.wait_idle(timeout=0.02)

    waiter = asyncio.create_task(gateway.wait_idle(timeout=30.0))
    await asyncio.sleep(0)  # one turn of the loop: the waiter is waiting
    assert not waiter.done()
    await g2.aclose()
    assert await waiter
    assert len(await harness.recorded()) == 2


# -- a key revoked while its generations run ---------------------------------------------
OTHER = Principal(key_id="om00000000000000ff", org_id="org_test", role="member")
HOUR = 3600.0  # a token delay no test waits out: only the revocation can end the wait


def revoked(key_id: str, change_id: int = 1) -> list[Change]:
    return [Change(change_id, "key.revoke", key_id)]


async def consume(generation: Generation, seen: list[str]) -> None:
    """What a route does with a generation: iterate it, and always close it."""
    try:
        async for event in generation:
            if isinstance(event, TextDelta):
                seen.append(event.text)
    finally:
        await generation.aclose()


async def test_a_revoked_keys_stream_ends_at_once_and_is_billed_for_what_it_generated(
    harness: Harness,
) -> None:
    gateway, engine = await harness.fake(text=LONG_TEXT, token_delay=HOUR)
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    seen: list[str] = []
    task = asyncio.create_task(consume(generation, seen))
    await eventually(lambda: seen == ["one "], what="the first token")
    # The engine now waits (an hour) for the second token; the revocation ends that wait.
    await gateway.apply_changes(revoked(PRINCIPAL.key_id))
    await eventually(task.done, what="the revoked stream to end")
    with pytest.raises(KeyRevoked, match="revoked"):
        task.result()
    row = await harness.record(request.request_id)
    assert row is not None and row["termination"] == "key_revoked"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 1)
    assert engine.stats.streams_open == 0 and engine.capacity().in_flight == 0
    assert await gateway.wait_idle(timeout=1.0)


async def test_a_stream_revoked_between_two_events_ends_at_the_next(harness: Harness) -> None:
    gateway, engine = await harness.fake(text=LONG_TEXT)
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    assert (await generation.__anext__()).text == "one "  # type: ignore[union-attr]
    await gateway.apply_changes(revoked(PRINCIPAL.key_id))  # nobody is waiting on the engine
    with pytest.raises(KeyRevoked):
        await generation.__anext__()
    record = await generation.aclose()
    assert record is not None and record.termination == "key_revoked"
    assert record.usage.completion_tokens == engine.stats.tokens_generated == 1


async def test_a_key_revoked_while_its_request_waits_for_the_first_token(
    harness: Harness,
) -> None:
    gateway, engine = await harness.fake(text=LONG_TEXT, first_token_delay=HOUR)
    request = chat()
    started = asyncio.create_task(gateway.generate(PRINCIPAL, request, "chat.completions"))
    await eventually(lambda: engine.stats.streams_open == 1, what="the engine to start")
    await gateway.apply_changes(revoked(PRINCIPAL.key_id))
    await eventually(started.done, what="the waiting request to end")
    with pytest.raises(KeyRevoked):
        started.result()
    row = await harness.record(request.request_id)
    assert row is not None and row["termination"] == "key_revoked"
    assert row["completion_tokens"] == 0
    assert engine.stats.streams_open == 0 and engine.capacity().in_flight == 0


async def test_only_the_revoked_keys_streams_end(harness: Harness) -> None:
    gateway, _ = await harness.fake(text=LONG_TEXT)
    mine = await gateway.generate(PRINCIPAL, chat(), "chat.completions")
    theirs = await gateway.generate(OTHER, chat(), "chat.completions")
    done = await gateway.generate(PRINCIPAL, chat(), "chat.completions")
    await drain(done)  # finished: a revocation after the end changes nothing
    other_changes = [
        Change(1, "key.update", PRINCIPAL.key_id),
        Change(2, "key.create", PRINCIPAL.key_id),
        Change(3, "key.revoke", "om0000000000000abc"),
        Change(4, "org.update", PRINCIPAL.org_id),
    ]
    await gateway.apply_changes(other_changes)
    await gateway.apply_changes(revoked(PRINCIPAL.key_id, 5))
    with pytest.raises(KeyRevoked):
        await drain(mine)
    text, finished = await drain(theirs)
    assert text == LONG_TEXT and finished is not None
    records = [await g.aclose() for g in (mine, theirs, done)]
    assert [r.termination if r else None for r in records] == [
        "key_revoked",
        "finished",
        "finished",
    ]


async def test_a_revocation_as_a_client_leaves_is_a_client_disconnect(harness: Harness) -> None:
    """Both cancel the task that waits on the engine: the client's cancellation wins (the
    task must end), and the request is recorded once."""
    gateway, _ = await harness.fake(text=LONG_TEXT, token_delay=HOUR)
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    seen: list[str] = []
    task = asyncio.create_task(consume(generation, seen))
    await eventually(lambda: seen == ["one "], what="the first token")
    task.cancel()  # the client leaves ...
    await gateway.apply_changes(revoked(PRINCIPAL.key_id))  # ... as the key is revoked
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await harness.recorded() == [request.request_id]
    row = await harness.record(request.request_id)
    assert row is not None and row["termination"] == "client_disconnected"


# -- embeddings -----------------------------------------------------------------------
class TinyEmbedder(SlotEngine):
    """A minimal embedding engine: one prompt token per word, or a scripted failure."""

    def __init__(self, *, slots: int = 1, fail: Exception | None = None) -> None:
        super().__init__("tiny-embed", ModelKind.EMBEDDING, slots=slots, queue=0)
        self.fail = fail
        self.gate: asyncio.Event | None = None

    async def _load(self) -> None:
        return None

    async def _unload(self) -> None:
        return None

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        words = sum(len(text.split()) for text in request.inputs)
        return EmbeddingResult(
            tuple((1.0, 0.0) for _ in request.inputs), Usage(prompt_tokens=words)
        )


def embed_request(*inputs: str) -> EmbeddingRequest:
    return EmbeddingRequest(new_request_id(), "tiny-embed", inputs)


async def test_embedding_is_recorded(harness: Harness) -> None:
    gateway = await harness.gateway(ServedModel("tiny-embed", TinyEmbedder()))
    request = embed_request("a b", "c")
    result = await gateway.embed(PRINCIPAL, request, "embeddings")
    assert len(result.vectors) == 2
    row = await harness.record(request.request_id)
    assert row["termination"] == "finished"
    assert row["prompt_tokens"] == 3 and row["completion_tokens"] == 0
    assert row["endpoint"] == "embeddings"
    assert row["ttft_ms"] is None


@pytest.mark.parametrize(
    ("failure", "termination", "raised"),
    [
        (EngineFailure("boom"), "engine_error", EngineFailure),
        (InvalidRequest("input too long", param="input"), "rejected", InvalidRequest),
        (RuntimeError("a bug in the engine"), "engine_error", RuntimeError),
    ],
    ids=["engine-error", "rejected", "unexpected"],
)
async def test_failed_embedding_is_recorded(
    harness: Harness, failure: Exception, termination: str, raised: type
) -> None:
    gateway = await harness.gateway(ServedModel("tiny-embed", TinyEmbedder(fail=failure)))
    request = embed_request("x")
    with pytest.raises(raised):
        await gateway.embed(PRINCIPAL, request, "embeddings")
    row = await harness.record(request.request_id)
    assert row["termination"] == termination
    assert row["error"]


async def test_overloaded_embedding_records_nothing(harness: Harness) -> None:
    engine = TinyEmbedder(slots=1)
    engine.gate = asyncio.Event()
    gateway = await harness.gateway(ServedModel("tiny-embed", engine))
    busy = embed_request("busy")
    task = asyncio.create_task(gateway.embed(PRINCIPAL, busy, "embeddings"))
    await eventually(lambda: engine.capacity().in_flight, what="the busy request in the engine")
    refused = embed_request("refused")
    with pytest.raises(EngineOverloaded):
        await gateway.embed(PRINCIPAL, refused, "embeddings")
    engine.gate.set()
    await task
    assert await harness.record(refused.request_id) is None
    assert await harness.record(busy.request_id) is not None


async def test_embedding_not_ready_records_nothing(harness: Harness) -> None:
    gateway = await harness.gateway(ServedModel("tiny-embed", TinyEmbedder()), start=False)
    request = embed_request("x")
    with pytest.raises(EngineNotReady):
        await gateway.embed(PRINCIPAL, request, "embeddings")
    assert await harness.record(request.request_id) is None


async def test_too_many_embedding_inputs_are_refused_before_the_engine_and_cost_nothing(
    harness: Harness,
) -> None:
    """The issue's probe, scaled down: 5,000 one-word inputs from one organization are a
    400 at once (the engine never sees them, nothing recorded); another organization's
    one-input request right after is served."""
    engine = TinyEmbedder(slots=1)
    gateway = await harness.gateway(ServedModel("tiny-embed", engine))
    attacker = Principal(key_id="omattacker0000000", org_id="org_attacker", role="member")
    flood = embed_request(*(f"w{i}" for i in range(5000)))
    with pytest.raises(InvalidRequest) as refused:
        await gateway.embed(attacker, flood, "embeddings")
    assert refused.value.param == "input" and "at most 2048" in refused.value.message
    assert await harness.record(flood.request_id) is None
    other = embed_request("hello")
    assert len((await gateway.embed(PRINCIPAL, other, "embeddings")).vectors) == 1
    assert await harness.recorded() == [other.request_id]


async def test_a_chat_request_over_a_bound_is_refused_before_admission(
    harness: Harness,
) -> None:
    gateway, engine = await harness.fake(text="ok")
    request = replace(chat(), messages=(Message(Role.USER, "hi"),) * 5000)
    with pytest.raises(InvalidRequest) as refused:
        await gateway.generate(PRINCIPAL, request, "chat.completions")
    assert refused.value.param == "messages"
    assert engine.stats.streams_started == 0
    assert await harness.recorded() == []
    with pytest.raises(InvalidRequest):
        await gateway.count_prompt_tokens(request)  # nor counted: that costs the engine too


class ScopeRecorder(FakeEngine):
    """A fake that keeps the cache scope of every request it streams."""

    def __init__(self) -> None:
        super().__init__("fake-chat", FakeScript(text="ok"))
        self.scopes: list[str | None] = []

    def stream(self, request: GenerationRequest) -> EngineStream:
        self.scopes.append(request.routing.cache_scope)
        return super().stream(request)


async def test_each_organization_has_its_own_prompt_cache_scope_and_it_hides_the_id(
    harness: Harness,
) -> None:
    engine = ScopeRecorder()
    gateway = await harness.gateway(ServedModel("fake-chat", engine))
    colleague = Principal(key_id="omcolleague000000", org_id=PRINCIPAL.org_id, role="member")
    other = Principal(key_id="omother0000000000", org_id="org_other", role="member")
    for principal in (PRINCIPAL, colleague, other):
        generation = await gateway.generate(principal, chat(), "chat.completions")
        await drain(generation)
        await generation.aclose()
    mine, colleagues, others = engine.scopes
    assert mine == colleagues != others  # one scope per organization, not per key
    assert mine is not None and PRINCIPAL.org_id not in mine


async def test_embed_model_cannot_serve_chat(harness: Harness) -> None:
    gateway = await harness.gateway(ServedModel("tiny-embed", TinyEmbedder()))
    with pytest.raises(InvalidRequest) as info:
        await gateway.generate(PRINCIPAL, chat(model="tiny-embed"), "chat.completions")
    assert info.value.param == "model"


async def test_usage_record_survives_repeated_plain_asyncio_cancellation(
    database: AsyncEngine,
) -> None:
    """A shutdown may cancel a task more than once; the record must still be written."""

    class SlowLedger(LedgerStore):
        async def write(self, also=None, *, rows=None):  # type: ignore[no-untyped-def]
            async def slowly(conn, events):  # type: ignore[no-untyped-def]
                await asyncio.sleep(0.05)  # a slow write: the cancellations arrive during it
                if also is not None:
                    await also(conn, events)

            await super().write(slowly, rows=rows)

    repository = UsageRepository(database)
    clock = frozen_clock()
    ledger = SlowLedger(database, clock.now_ms)
    billing = Accountant(database, ledger, InProcessLimiter(), clock)
    gateway = Gateway(ModelCatalog([]), billing, clock, lambda: False)
    unpriced = InFlight("r-cancel", "k", "o", "m", "chat.completions", NOW_MS, None)
    ticket = Ticket(unpriced, price=None, limit=None)
    record = UsageRecord(
        "r-cancel",
        PRINCIPAL.key_id,
        PRINCIPAL.org_id,
        "m",
        "chat.completions",
        Usage(1, 0, 2),
        Termination.CLIENT_DISCONNECTED,
        NOW_MS,
        None,
        5,
    )
    task = asyncio.create_task(gateway.finish(ticket, record))
    for _ in range(3):
        await asyncio.sleep(0.01)  # cancelled again and again while the record is written
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await repository.get("r-cancel")) is not None


async def test_fake_reasons_then_calls_the_offered_tools(tmp_path: Path) -> None:
    from openmaas.core.assembly import Assembler
    from openmaas.core.types import Thinking, Tool, ToolChoice, ToolChoiceKind
    from openmaas.engines.fake import FakeToolCall

    engine = FakeEngine(
        "fake-tools",
        FakeScript(
            text="no tools offered",
            reasoning="let me think",
            tool_calls=[FakeToolCall(name="get_weather", arguments={"city": "Paris"})],
        ),
    )
    await engine.start()
    tools = (Tool("get_weather", "weather", {"type": "object"}),)

    async def run(**fields: object) -> Assembler:
        request = GenerationRequest(
            new_request_id(), "fake-tools", messages=(Message(Role.USER, "hi"),), **fields
        )  # type: ignore[arg-type]
        stream = engine.stream(request)
        answer = Assembler()
        async for event in stream:
            answer.add(event)
        await stream.aclose()
        return answer

    with_tools = await run(tools=tools)
    assert with_tools.reasoning == "let me think"
    assert [(c.name, c.arguments) for c in with_tools.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert with_tools.finished is not None and with_tools.finished.reason is FinishReason.TOOL_CALLS
    assert with_tools.finished.usage.completion_tokens == 4  # 3 reasoning words + 1 call
    refused = await run(tools=tools, tool_choice=ToolChoice(ToolChoiceKind.NONE))
    assert refused.tool_calls == () and refused.text == "no tools offered"
    quiet = await run(thinking=Thinking(enabled=False))
    assert quiet.reasoning is None and quiet.text == "no tools offered"


# -- a key restricted to models ------------------------------------------------------------
RESTRICTED = Principal("om00000000000000ee", "org_test", "member", models=frozenset({"tiny-embed"}))


async def test_a_restricted_key_is_refused_other_models_before_admission(
    harness: Harness,
) -> None:
    chat_engine = FakeEngine("fake-chat", FakeScript())
    gateway = await harness.gateway(
        ServedModel("fake-chat", chat_engine), ServedModel("tiny-embed", TinyEmbedder())
    )
    with pytest.raises(ModelNotFound) as info:
        await gateway.generate(RESTRICTED, chat(), "chat.completions")
    assert info.value.model == "fake-chat"
    with pytest.raises(ModelNotFound):
        await gateway.reserve(RESTRICTED, chat(), "zhipu.async.chat.completions")
    assert chat_engine.stats.streams_started == 0 and await harness.recorded() == []
    result = await gateway.embed(RESTRICTED, embed_request("a b"), "embeddings")
    assert len(result.vectors) == 1 and len(await harness.recorded()) == 1


async def test_a_reservation_whose_model_left_the_catalog_is_refused_and_released(
    harness: Harness,
) -> None:
    """An async job reserved, then the model removed (a catalog reload) before its turn:
    the start is refused with the catalog's error, not an error of the gateway's own, and
    what the reservation held is given back."""
    gateway, engine = await harness.fake()
    reservation = await gateway.reserve(PRINCIPAL, chat(), "zhipu.async.chat.completions")
    await eventually(harness.in_flight, what="the reservation's in-flight row")
    gateway.catalog.replace([])
    with pytest.raises(ModelNotFound):
        await gateway.start(reservation)
    assert await harness.in_flight() == 0
    assert engine.stats.streams_started == 0 and await harness.recorded() == []
