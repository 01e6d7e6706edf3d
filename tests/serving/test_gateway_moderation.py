"""Moderation on the metered path (serving/gateway.py with a moderator): a request holding a
listed word is refused before admission and leaves no record; output reaching one ends with
``content_filter``, never shows the word, and is settled as ``content_filtered`` for the
tokens generated up to the cut."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.core.errors import ContentFiltered
from openmaas.core.ids import new_request_id
from openmaas.core.termination import Termination
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    ReasoningDelta,
    Role,
    SamplingParams,
    TextDelta,
    Thinking,
)
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.moderation import WordLists
from openmaas.serving.gateway import Gateway
from openmaas.serving.generation import Generation
from openmaas.store.repositories import UsageRepository
from tests.serving.test_gateway import PRINCIPAL, billing_over, frozen_clock

WORDS = WordLists(["secret plan", "机密"])


class Moderated:
    def __init__(self, database: AsyncEngine) -> None:
        self.database = database
        self.usage = UsageRepository(database)
        self.engines: list[FakeEngine] = []

    async def gateway(self, **script: object) -> tuple[Gateway, FakeEngine]:
        engine = FakeEngine("fake-chat", FakeScript(**script))
        await engine.start()
        self.engines.append(engine)
        clock = frozen_clock()
        catalog = ModelCatalog([ServedModel("fake-chat", engine)])
        billing = billing_over(self.database, clock)
        return Gateway(catalog, billing, clock, lambda: False, moderator=WORDS), engine


@pytest.fixture
async def moderated(database: AsyncEngine) -> AsyncIterator[Moderated]:
    m = Moderated(database)
    try:
        yield m
    finally:
        for engine in m.engines:
            await engine.stop()


def chat(content: str = "tell me", n: int = 1, thinking: bool | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id=new_request_id(),
        model="fake-chat",
        messages=(Message(Role.USER, content),),
        sampling=SamplingParams(n=n),
        thinking=Thinking(enabled=thinking),
    )


async def drain(generation: Generation) -> tuple[str, str, Finished | None]:
    text = reasoning = ""
    finished = None
    async for event in generation:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ReasoningDelta):
            reasoning += event.text
        elif isinstance(event, Finished):
            finished = event
    return text, reasoning, finished


async def test_a_listed_word_in_the_messages_is_refused_before_any_engine(
    moderated: Moderated,
) -> None:
    gateway, engine = await moderated.gateway()
    request = chat("what is the SECRET PLAN?")
    with pytest.raises(ContentFiltered):
        await gateway.generate(PRINCIPAL, request, "chat.completions")
    assert engine.stats.streams_started == 0
    assert await moderated.usage.get(request.request_id) is None  # no record, no charge
    assert gateway.open_generations == 0


async def test_output_reaching_a_word_split_across_tokens_is_cut_before_it(
    moderated: Moderated,
) -> None:
    # the fake streams a token per word: "secret " and "plan" arrive in different chunks
    gateway, engine = await moderated.gateway(text="here is the secret plan for you today")
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    try:
        text, _, finished = await drain(generation)
    finally:
        record = await generation.aclose()
    assert text == "here is the "
    assert "secret" not in text
    assert finished is not None and finished.reason is FinishReason.CONTENT_FILTER
    assert record is not None and record.termination is Termination.CONTENT_FILTERED
    row = await moderated.usage.get(request.request_id)
    assert row is not None and row["termination"] == "content_filtered"
    # billed as counted at the cut: the prompt and the five tokens up to "plan"
    assert row["prompt_tokens"] == 2 and row["completion_tokens"] == 5
    assert row["error"]
    assert engine.stats.streams_open == 0


async def test_clean_output_passes_whole(moderated: Moderated) -> None:
    gateway, _ = await moderated.gateway(text="a plan that is no secret at all")
    request = chat()
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    try:
        text, _, finished = await drain(generation)
    finally:
        record = await generation.aclose()
    assert text == "a plan that is no secret at all"
    assert finished is not None and finished.reason is FinishReason.STOP
    assert record is not None and record.termination is Termination.FINISHED


async def test_reasoning_is_checked_too(moderated: Moderated) -> None:
    gateway, _ = await moderated.gateway(reasoning="这是 机密 内容", text="fine")
    request = chat(thinking=True)
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    try:
        text, reasoning, finished = await drain(generation)
    finally:
        await generation.aclose()
    assert reasoning == "这是 " and text == ""
    assert finished is not None and finished.reason is FinishReason.CONTENT_FILTER


async def test_every_choice_ends_with_the_filter(moderated: Moderated) -> None:
    gateway, _ = await moderated.gateway(text="the secret plan")
    request = chat(n=2)
    generation = await gateway.generate(PRINCIPAL, request, "chat.completions")
    try:
        _, _, finished = await drain(generation)
    finally:
        await generation.aclose()
    assert finished is not None
    assert finished.choices == (FinishReason.CONTENT_FILTER, FinishReason.CONTENT_FILTER)
