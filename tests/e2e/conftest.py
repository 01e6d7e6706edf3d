"""Fixtures: one live server for the session, its admin key, an authenticated HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.console_browser import browser  # noqa: F401  (Chromium, for the console's tests)
from tests.e2e.live import FAKE_MODELS, MODEL_ALIASES, LiveServer


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path_factory.mktemp("live") / "home",
        fake_models=FAKE_MODELS,
        model_aliases=MODEL_ALIASES,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def admin_key(live: LiveServer) -> str:
    return live.admin_key


@pytest.fixture()
def http(live: LiveServer, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=live.base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60
    ) as client:
        yield client
