"""The catalog document's local deployments in the engine host: loaded once, when a worker
holds one, whatever the number of workers; unloaded once none holds it (released, or its
worker died and stopped declaring it); loaded again by a host that restarted. Fake engines
stand for llama.cpp here (``test_host.py`` serves the real models); the workers are
``HostedEngine``s over the host's socket, as the catalog builds them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from openmaas.catalog.document import build_router, parse_catalog
from openmaas.catalog.schema import BuildContext
from openmaas.core.errors import EngineNotReady, InvalidRequest
from openmaas.core.types import Finished, GenerationRequest, Message, Role, TextDelta
from openmaas.enginehost.app import EngineHost, create_host_app, held_builder
from openmaas.engines.base import Engine, EngineState, ModelKind
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.engines.hosted import HOLD_EXPIRY_S, HeldDeployment, HostedConfig, HostedEngine
from openmaas.engines.llamacpp import LlamaCppEngine
from openmaas.server.enginehost import bind_socket
from openmaas.settings import Settings
from tests.support.clock import ManualClock
from tests.support.waiting import eventually

TEXT = "one two three four"
DEPLOYMENT: dict[str, Any] = {"engine": "llamacpp", "id": "local-a", "path": "/m/a.gguf"}


@dataclass
class FakeBuilder:
    """Builds a fake engine for each deployment the host is told to load, and keeps them."""

    built: list[FakeEngine] = field(default_factory=list)

    def __call__(self, held: HeldDeployment) -> Engine:
        engine = FakeEngine(held.model, FakeScript(text=TEXT))
        self.built.append(engine)
        return engine


@dataclass
class Host:
    """An engine host serving on a socket, that a test can stop and start again."""

    socket: Path
    build: FakeBuilder
    clock: ManualClock
    host: EngineHost | None = None
    _server: uvicorn.Server | None = None
    _serving: asyncio.Task[None] | None = None

    async def start(self) -> EngineHost:
        self.host = EngineHost({}, build_held=self.build, clock=self.clock, drain_seconds=0)
        app = create_host_app(self.host)
        self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        sock = bind_socket(self.socket)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        await eventually(lambda: self._server is not None and self._server.started, what="host")
        return self.host

    async def stop(self) -> None:
        assert self._server is not None and self._serving is not None
        self._server.should_exit = True
        await self._serving
        self.socket.unlink(missing_ok=True)

    def models(self) -> dict[str, Any]:
        assert self.host is not None
        return self.host.health()["models"]  # type: ignore[return-value]


@pytest.fixture()
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    served = Host(tmp_path / "e.sock", FakeBuilder(), ManualClock())
    await served.start()
    yield served
    await served.stop()


def _worker(socket: Path, deployment: dict[str, Any] = DEPLOYMENT) -> HostedEngine:
    """A worker's engine of the catalog model ``local`` served by ``deployment``."""
    held = HeldDeployment("local", ModelKind.CHAT, deployment)
    return HostedEngine("local", HostedConfig(socket, ModelKind.CHAT, 2, 2, held))


async def _text(engine: Engine, request_id: str) -> tuple[str, Finished]:
    request = GenerationRequest(request_id, "local", messages=(Message(Role.USER, "hi"),))
    stream = engine.stream(request)
    try:
        events = [event async for event in stream]
    finally:
        await stream.aclose()
    finished = events[-1]
    assert isinstance(finished, Finished)
    return "".join(e.text for e in events if isinstance(e, TextDelta)), finished


async def test_two_workers_holding_one_deployment_load_it_once(host: Host) -> None:
    first, second = _worker(host.socket), _worker(host.socket)
    await asyncio.gather(first.start(), second.start())
    try:
        [engine] = host.build.built
        key = first.served_as
        assert second.served_as == key and key.startswith("local-a~")
        state = host.models()[key]
        assert state["state"] == "ready" and state["holders"] == 2
        assert state["model"] == "local" and state["deployment"] == "local-a"
        for worker in (first, second):
            text, finished = await _text(worker, f"r-{id(worker)}")
            assert text == TEXT
            assert finished.usage.completion_tokens == 4 and not finished.usage.estimated
        assert engine.stats.streams_started == 2
    finally:
        await first.stop()
        assert host.models()[key]["holders"] == 1 and engine.health().state is EngineState.READY
        await second.stop()
    await eventually(lambda: key not in host.models(), what="the unheld model to unload")
    assert engine.health().state is EngineState.STOPPED


async def test_a_changed_deployment_is_another_engine(host: Host) -> None:
    old = _worker(host.socket)
    new = _worker(host.socket, DEPLOYMENT | {"slots": 4})
    await asyncio.gather(old.start(), new.start())
    assert old.served_as != new.served_as and len(host.build.built) == 2
    await old.stop()  # the old document's engine, retired by the worker
    await eventually(lambda: old.served_as not in host.models(), what="the old one to unload")
    assert (await _text(new, "r-1"))[0] == TEXT
    await new.stop()


async def test_the_holds_of_a_worker_that_died_expire(host: Host) -> None:
    worker = _worker(host.socket)
    await worker.start()
    key = worker.served_as
    assert host.host is not None
    # Another worker held it and died: it never releases, nor declares its hold again.
    host.host.hold(HeldDeployment("local", ModelKind.CHAT, DEPLOYMENT), "dead")
    await worker.stop()  # a live worker releases its hold
    assert host.models()[key]["holders"] == 1
    host.clock.advance(HOLD_EXPIRY_S - 1)
    host.host.expire_holds()
    assert host.models()[key]["holders"] == 1  # not yet
    host.clock.advance(1)
    host.host.expire_holds()
    await eventually(lambda: key not in host.models(), what="the expired hold's model to unload")


async def test_a_restarted_host_loads_the_held_deployment_again(host: Host) -> None:
    worker = _worker(host.socket)
    await worker.start()
    try:
        await host.stop()
        await host.start()  # knows nothing of the catalog
        key = worker.served_as
        assert key not in host.models()
        with pytest.raises(EngineNotReady):  # 503; the worker holds it again at once
            await _text(worker, "r-missing")
        await eventually(
            lambda: host.models().get(key, {}).get("state") == "ready",
            what="the restarted host to load the held model again",
        )
        assert host.models()[key]["holders"] == 1
        assert (await _text(worker, "r-again"))[0] == TEXT
    finally:
        await worker.stop()


async def test_the_host_loads_local_deployments_only(tmp_path: Path) -> None:
    build = held_builder(Settings(home=tmp_path, embedded_models=False))
    upstream = {"engine": "openai", "id": "up", "base_url": "http://gpu:8000/v1"}
    with pytest.raises(InvalidRequest, match="local models"):
        build(HeldDeployment("m", ModelKind.CHAT, upstream | {"upstream_model": "m"}))
    with pytest.raises(InvalidRequest, match="cannot read"):
        build(HeldDeployment("m", ModelKind.CHAT, {"engine": "llamacpp", "id": "x"}))
    engine = build(HeldDeployment("m", ModelKind.CHAT, DEPLOYMENT))
    assert isinstance(engine, LlamaCppEngine)  # built as in-process, not loaded yet


def test_with_an_engine_host_the_catalog_holds_its_local_deployments(tmp_path: Path) -> None:
    document = parse_catalog(
        """
models:
  - name: mixed
    deployments:
      - {id: gguf, engine: llamacpp, path: /m/a.gguf}
      - {id: packaged, engine: embedded, model: smollm2-135m-instruct}
      - {id: cloud, engine: openai, base_url: "http://gpu:8000/v1", upstream_model: m}
"""
    )
    [spec] = document.models
    ctx = BuildContext(engine_socket=tmp_path / "e.sock")
    engines = {m.id: m.engine for m in build_router(spec, ctx).members}
    gguf, packaged = engines["gguf"], engines["packaged"]
    assert isinstance(gguf, HostedEngine) and isinstance(packaged, HostedEngine)
    assert gguf.held is not None and gguf.held.deployment["path"] == "/m/a.gguf"
    assert packaged.served_as.startswith("packaged~")
    assert not isinstance(engines["cloud"], HostedEngine)
    # Without a host (one process, `make run`): loaded in the process, as always.
    alone = {m.id: m.engine for m in build_router(spec, BuildContext()).members}
    assert not any(isinstance(e, HostedEngine) for e in alone.values())
