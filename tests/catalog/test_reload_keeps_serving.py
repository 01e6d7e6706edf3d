"""A catalog reload that loads and then frees a llama.cpp model does not stall the requests
on other models: building llama.cpp's server and freeing it run on threads while the event
loop keeps answering (``tests/engines/loop_watch.py`` says how that is observed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.catalog.reloader import CatalogManager
from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.engines.base import EngineState
from openmaas.engines.embedded import chat_model_path
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.settings import Settings
from tests.engines.loop_watch import (
    ANSWERS_DURING,
    GUARD_SECONDS,
    Answers,
    keep_asking,
    watch_llamacpp,
)
from tests.support.waiting import eventually

MASTER = bytes(range(32))
SMOL = f"""\
models:
  - name: smol
    deployments:
      - {{id: smol-1, engine: llamacpp, path: '{chat_model_path()}', slots: 1, context: 512}}
"""


class Site:
    def __init__(self, tmp_path: Path, settings: Settings, database: AsyncEngine) -> None:
        self.path = tmp_path / "catalog.yaml"
        self.settings = settings.model_copy(
            update={"catalog_file": self.path, "catalog_drain_seconds": 30, "threads": 1}
        )
        self.database = database
        base = FakeEngine("base", FakeScript(text="still here", first_token_delay=0.001))
        self.catalog = ModelCatalog([ServedModel("base", base)])
        self.manager = CatalogManager(self.catalog, self.settings, self.database, MASTER)

    async def start(self) -> None:
        await self.manager.start()
        self.catalog.start_loading()
        await self.catalog.wait_loaded()

    async def close(self) -> None:
        await self.manager.stop()
        await self.catalog.stop()


@pytest.fixture()
async def site(tmp_path: Path, settings: Settings, database: AsyncEngine) -> AsyncIterator[Site]:
    site = Site(tmp_path, settings, database)
    yield site
    await site.close()


@pytest.fixture()
def answers(monkeypatch: pytest.MonkeyPatch) -> Answers:
    watched = Answers()
    watch_llamacpp(monkeypatch, watched)
    return watched


async def test_requests_are_answered_while_a_model_loads_and_unloads(
    site: Site, answers: Answers
) -> None:
    site.path.write_text("models: []\n")
    await site.start()
    done = asyncio.Event()
    asking = asyncio.create_task(
        keep_asking(lambda: site.catalog.get("base").engine, answers, done)
    )
    try:
        # A llama.cpp model is added: built while "base" keeps answering ...
        site.path.write_text(SMOL)
        assert await site.manager.refresh()
        smol = site.catalog.get("smol").engine
        assert smol.health().state is EngineState.READY

        # ... and removed again: drained, stopped and freed while "base" keeps answering.
        site.path.write_text("models: []\n")
        assert await site.manager.refresh()
        await eventually(
            lambda: site.manager.retiring() == 0, timeout=GUARD_SECONDS, what="smol retired"
        )
        assert smol.health().state is EngineState.STOPPED
    finally:
        done.set()
        texts = await asking

    for step in ("load", "unload"):  # requests were answered while the step was under way
        assert answers.answered_during(step) >= ANSWERS_DURING, answers.report()
    assert texts and set(texts) == {"still here"}  # every request was answered, in full
