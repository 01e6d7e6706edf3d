"""The slot-engine template's lifecycle: what a caller sees when unloading goes wrong."""

from __future__ import annotations

import asyncio

import pytest

from openmaas.core.errors import EngineNotReady
from openmaas.core.types import GenerationRequest
from openmaas.engines.base import EngineState, ModelKind, SlotEngine


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
