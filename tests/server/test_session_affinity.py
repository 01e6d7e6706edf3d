"""A client's conversation id (``x-session-id``) reaches the router as the request's
affinity key, so the turns of one conversation go to the replica that has its KV cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.app import fake_engine
from tests.support.orgs import member_keys

MODEL = "fake-chat"


def test_the_session_header_becomes_the_affinity_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", embedded_models=False, fake_models={MODEL: {}})
    (key,) = asyncio.run(member_keys(settings, "acme"))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app(settings)) as client:
        fake = fake_engine(client, MODEL)
        seen = []
        for extra in ({"x-session-id": "conversation-7"}, {"X-Session-Id": "x" * 300}, {}):
            headers = {"Authorization": f"Bearer {key}", **extra}
            assert client.post("/v1/chat/completions", json=body, headers=headers).is_success
            assert fake.stats.last_routing is not None
            seen.append(fake.stats.last_routing.affinity_key)
    assert seen == ["conversation-7", "x" * 200, None]
