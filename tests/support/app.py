"""What tests read from an application served by a ``TestClient``: its state, a fake
engine it serves, the rows of a table in its database."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from openmaas.engines.base import ModelKind
from openmaas.engines.fake import FakeEngine
from openmaas.server.state import AppState


def app_state(client: TestClient) -> AppState:
    return client.app.state.openmaas  # type: ignore[attr-defined,no-any-return]


def fake_engine(client: TestClient, model: str) -> FakeEngine:
    """The fake engine the application serves ``model`` with."""
    engine = app_state(client).catalog.for_kind(model, ModelKind.CHAT).engine
    assert isinstance(engine, FakeEngine)
    return engine


def count_rows(client: TestClient, table: Any) -> int:
    """The rows of ``table`` in the application's database, read on its event loop."""

    async def count() -> int:
        async with app_state(client).platform.database.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    assert client.portal is not None
    return client.portal.call(count)
