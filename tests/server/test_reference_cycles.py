"""A request leaves no reference cycles behind: everything it made is freed by reference
counting as it ends. Each request that did leave one (a cancelled watch holding its watcher,
a routed stream and its relay, a generation and its settlement) left its whole object graph
to the garbage collector: the collections that found it were a third of a priced request's
CPU on the gateway benchmark (docs/benchmarks.md), and a full collection paused every
request in flight."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.orgs import funded_key

MESSAGES = [{"role": "user", "content": "three word prompt"}]
REQUESTS = [
    ("/v1/chat/completions", {"model": "fake-echo", "messages": MESSAGES}),
    ("/v1/chat/completions", {"model": "fake-echo", "messages": MESSAGES, "stream": True}),
    ("/v1/completions", {"model": "fake-echo", "prompt": "three word prompt"}),
    ("/v1/messages", {"model": "fake-echo", "messages": MESSAGES, "max_tokens": 16}),
    (
        "/v1/messages",
        {"model": "fake-echo", "messages": MESSAGES, "max_tokens": 16, "stream": True},
    ),
    ("/api/paas/v4/chat/completions", {"model": "fake-echo", "messages": MESSAGES}),
    ("/v1/responses", {"model": "fake-echo", "input": "three word prompt"}),
    ("/v1/chat/completions", {"model": "ghost", "messages": MESSAGES}),  # refused: 404
]


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable while the test runs, kept for it to look at."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _ours(garbage: list[object]) -> Counter[str]:
    return Counter(
        type(o).__qualname__ for o in garbage if type(o).__module__.startswith("openmaas.")
    )


def _settings(tmp_path: Path, **more: object) -> Settings:
    fake = {"fake-echo": {"text": "one two three four"}}
    return Settings(home=tmp_path / "home", embedded_models=False, fake_models=fake, **more)


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=lambda p: str(p)[:40])
def test_a_request_leaves_nothing_for_the_garbage_collector(
    tmp_path: Path, saved_garbage: list[object], path: str, body: dict[str, object]
) -> None:
    _five_leave_nothing(_settings(tmp_path), saved_garbage, path, body)


@pytest.mark.parametrize(("path", "body"), REQUESTS[:2], ids=["json", "stream"])
def test_nor_on_postgresql(
    tmp_path: Path,
    new_pg_database: Callable[[], str],
    saved_garbage: list[object],
    path: str,
    body: dict[str, object],
) -> None:
    settings = _settings(tmp_path, database_url=new_pg_database())
    _five_leave_nothing(settings, saved_garbage, path, body)


def _five_leave_nothing(
    settings: Settings, saved_garbage: list[object], path: str, body: dict[str, object]
) -> None:
    key = asyncio.run(funded_key(settings, "fake-echo"))
    auth = {"Authorization": f"Bearer {key}", "x-api-key": key}
    with TestClient(create_app(settings)) as client:
        first = client.post(path, json=body, headers=auth)  # what is made once, made now
        assert first.status_code in (200, 404), first.text
        gc.collect()
        saved_garbage.clear()
        for _ in range(5):
            assert client.post(path, json=body, headers=auth).status_code == first.status_code
        gc.collect()
        assert _ours(saved_garbage) == Counter()
