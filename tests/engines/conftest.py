"""Fixtures of the engine tests: a real local OpenAI-compatible upstream, and engines
against it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.engines.upstream import Engines, Upstream


@pytest.fixture()
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream(log_level="error").astart()
    try:
        yield server
    finally:
        await server.astop()


@pytest.fixture()
async def engines(upstream: Upstream) -> AsyncIterator[Engines]:
    factory = Engines(upstream)
    try:
        yield factory
    finally:
        await factory.stop()
