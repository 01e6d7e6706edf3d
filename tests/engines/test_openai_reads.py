"""Several events in one read of an upstream's stream: made first, then handed out one by
one, each saying how many more the engine has in hand (``UsageTracker.ready``), which lets
a client's stream writer send them in one write; an error among them comes after the
events before it."""

from __future__ import annotations

import pytest

from openmaas.core.errors import EngineFailure
from openmaas.core.types import GenerationRequest, Message, Role, TextDelta
from tests.engines.upstream import Behaviour, Engines, Upstream


def chat() -> GenerationRequest:
    return GenerationRequest("req-r", "relay", messages=(Message(Role.USER, "Say hello"),))


async def test_events_of_one_read_say_how_many_more_are_in_hand(
    upstream: Upstream, engines: Engines
) -> None:
    # Eight words in one write: read at once, handed out one by one, each saying how many
    # more the engine holds (what lets a stream's writer send them in one write).
    engine = await engines()
    upstream.script(Behaviour(text="a b c d e f g h", together=True))
    stream = engine.stream(chat())
    ready = []
    try:
        async for event in stream:
            if isinstance(event, TextDelta):
                ready.append(stream.tracker.ready)
    finally:
        await stream.aclose()
    assert ready == [7, 6, 5, 4, 3, 2, 1, 0]
    assert stream.tracker.ready == 0


async def test_one_at_a_time_nothing_is_in_hand(upstream: Upstream, engines: Engines) -> None:
    engine = await engines()
    upstream.script(Behaviour(text="a b c d", token_delay=0.02))
    stream = engine.stream(chat())
    ready = []
    try:
        async for _event in stream:
            ready.append(stream.tracker.ready)
    finally:
        await stream.aclose()
    assert ready == [0] * len(ready) and len(ready) == 5  # four words and the finish


async def test_an_error_after_events_of_the_same_read_comes_after_them(
    upstream: Upstream, engines: Engines
) -> None:
    engine = await engines()
    upstream.script(Behaviour(text="a b c d e", error_event_after_tokens=3, together=True))
    stream = engine.stream(chat())
    seen: list[str] = []
    with pytest.raises(EngineFailure, match="mid-stream"):
        async for event in stream:
            if isinstance(event, TextDelta):
                seen.append(event.text)
    await stream.aclose()
    assert seen == ["a ", "b ", "c "]
