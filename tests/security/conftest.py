"""The ``served`` fixture: the application over the fake engine with every kind of caller
(``world.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from tests.security.world import Keys, issue_keys, security_settings
from tests.support.waiting import wait_until


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Keys]]:
    """The application, started (engines loaded), and its callers' keys."""
    settings = security_settings(tmp_path)
    keys = asyncio.run(issue_keys(settings))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        yield client, keys
