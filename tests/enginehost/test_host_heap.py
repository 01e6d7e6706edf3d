"""The engine host hands freed memory back to the system on a schedule, as a server process
does (server/heap.py): with ``serve --workers N`` the local models run there, and what a
hostile prompt leaves of llama.cpp's memory is freed there (issue 12)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from openmaas.enginehost.app import EngineHost
from openmaas.server.enginehost import host_app
from openmaas.settings import Settings
from tests.support.waiting import CountedCalls


def _trimming() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "trim_heap_every" in repr(t.get_coro())]


async def test_the_engine_host_trims_its_heap_until_it_stops(tmp_path: Path) -> None:
    trim = CountedCalls(3)
    settings = Settings(home=tmp_path / "home", memory_trim_seconds=0.001)
    app = host_app(EngineHost({}), settings, trim)
    async with app.router.lifespan_context(app):
        await trim.reached.wait()
        assert len(_trimming()) == 1
    assert _trimming() == []  # stopped with the host
