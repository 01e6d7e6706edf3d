"""Choosing a slot so that no organization reuses another's cached prompt
(engines/slots/prompt_cache.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from openmaas.core.types import GenerationRequest, RoutingHints
from openmaas.engines.base import EngineHealth, EngineState, ModelKind
from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from openmaas.engines.slots.prompt_cache import SlotChoice, SlotScopes


def test_a_scope_goes_back_to_its_own_slot_and_reuses_its_cache() -> None:
    scopes = SlotScopes(2)
    first = scopes.take("a")
    assert first.reuse_cache is False  # nothing cached yet
    scopes.give_back(first.slot)
    assert scopes.take("a") == SlotChoice(first.slot, reuse_cache=True)


def test_another_scope_never_reuses_a_slots_cache() -> None:
    scopes = SlotScopes(2)
    a = scopes.take("a")
    scopes.give_back(a.slot)
    b = scopes.take("b")
    assert b.slot != a.slot and not b.reuse_cache  # a free slot not yet used
    scopes.give_back(b.slot)
    c = scopes.take("c")  # every slot used: the least recently used, its cache off
    assert c == SlotChoice(a.slot, reuse_cache=False)
    scopes.give_back(c.slot)
    assert scopes.take("a") == SlotChoice(b.slot, reuse_cache=False)  # a's slot went to c


def test_were_every_slot_busy_a_request_would_queue_behind_its_own_scope() -> None:
    """Never so in the engine (its fair queue sends a request only to a free slot)."""
    scopes = SlotScopes(2)
    a, b = scopes.take("a"), scopes.take("b")
    assert scopes.take("b") == SlotChoice(b.slot, reuse_cache=True)
    # A third scope waits for the least busy slot, and may not reuse it.
    assert scopes.take("c") == SlotChoice(a.slot, reuse_cache=False)
    # What a slot was given last decides: a's next request follows c's on that slot.
    assert scopes.take("a").reuse_cache is False


def test_of_its_own_slots_a_request_takes_the_one_whose_prompt_begins_as_its_own() -> None:
    scopes = SlotScopes(3)
    main = scopes.take("a", "system: you are a coder; user: fix the bug")
    side = scopes.take("a", "system: you summarise; user: summarise this")
    scopes.give_back(main.slot)
    scopes.give_back(side.slot)
    # The side conversation was served last, yet the main one goes back to its own slot.
    again = scopes.take("a", "system: you are a coder; user: fix the bug; assistant: done")
    assert again == SlotChoice(main.slot, reuse_cache=True)


# -- with the fair queue in front (engines/slots/fair.py): llama.cpp only ever gets free slots ----
class _Slots:
    """llama.cpp's server as far as a completion goes: it notes the slot each request is
    sent to and holds it until the test ends that request."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []  # (prompt, id_slot), in the order sent
        self.busy: set[int] = set()
        self.most_busy = 0
        self.ends: dict[str, threading.Event] = {}
        self.arrived = threading.Semaphore(0)

    def handle_completions(self, body: dict[str, Any], on_chunk: Any) -> None:
        slot, prompt = body["id_slot"], body["prompt"]
        assert slot not in self.busy, "sent to a slot llama.cpp is still busy with"
        self.busy.add(slot)
        self.most_busy = max(self.most_busy, len(self.busy))
        self.sent.append((prompt, slot))
        end = self.ends.setdefault(prompt, threading.Event())
        self.arrived.release()
        end.wait(10)
        self.busy.discard(slot)
        on_chunk({"choices": [{"text": "ok", "finish_reason": "stop"}]})

    def end(self, prompt: str) -> None:
        self.ends.setdefault(prompt, threading.Event()).set()


async def _arrived(server: _Slots, count: int) -> None:
    for _ in range(count):
        await asyncio.to_thread(server.arrived.acquire)


async def test_a_waiting_request_is_sent_to_llama_cpp_only_once_a_slot_is_free() -> None:
    engine = LlamaCppEngine("smol", LlamaCppConfig(Path("unused.gguf"), ModelKind.CHAT, 2, 4))
    server = _Slots()
    engine._server = server
    engine._health = EngineHealth(EngineState.READY)

    async def run(org: str, prompt: str) -> None:
        routing = RoutingHints(cache_scope=org)
        stream = engine.stream(GenerationRequest(prompt, "smol", prompt=prompt, routing=routing))
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()

    try:
        tasks = [asyncio.create_task(run("a", "a1")), asyncio.create_task(run("b", "b1"))]
        await _arrived(server, 2)
        tasks += [asyncio.create_task(run("a", "a2")), asyncio.create_task(run("c", "c1"))]
        await asyncio.sleep(0)
        assert [p for p, _ in server.sent] == ["a1", "b1"]  # the others wait for a slot
        b_slot = dict(server.sent)["b1"]
        server.end("b1")
        await _arrived(server, 1)
        # The freed slot (b's) goes to c, which arrived later but whose organization has no
        # request running; its cache off (the slot held b's prompt).
        assert server.sent[2] == ("c1", b_slot)
        for prompt in ("a1", "c1", "a2"):
            server.end(prompt)
        await asyncio.gather(*tasks)
        assert server.most_busy == 2 and len(server.sent) == 4
        assert engine.capacity().in_flight == 0
    finally:
        for prompt in ("a1", "a2", "b1", "c1"):
            server.end(prompt)
        engine._pool.shutdown(wait=False)
