"""The engine host: the local models loaded once, served to the gateway workers of one
machine over a Unix socket (``docs/engines.md``, "The engine host").

:class:`EngineHost` holds the engines of the models the settings declare to run in-process
(embedded and ``OPENMAAS_LOCAL_MODELS``), built exactly as a single process builds them
(``catalog/builtin.py``), loaded at its start and kept; and the in-process deployments of
the catalog document, loaded when a worker holds one (``engines/hosted.py``'s
``HeldDeployment``: the workers apply the document, the host loads what they hold), once
whatever the number of holders, and stopped once none holds it and its last request has
ended. :func:`create_host_app` is its ASGI app. The worker's side is
``engines/hosted.py``; the wire is ``enginehost/wire.py``.

A stream is read from the engine on a task of its own (:class:`_Pump`): when the worker
closes the connection, that task is cancelled once, so the engine stops at its next token
and its final count is kept, never cut short by the server's own cancellation. The final
usage of a stream that did not finish is remembered (the last ``ENDS_KEPT``) until the
worker asks for it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from openmaas.asgi import unless_disconnected
from openmaas.catalog.builtin import build_engine, settings_context, settings_document
from openmaas.catalog.schema import ModelSpec
from openmaas.core.clock import Clock, SystemClock
from openmaas.core.errors import InvalidRequest, ModelNotFound, OpenMaaSError
from openmaas.core.ids import new_request_id
from openmaas.core.types import Finished, StreamEvent, Usage
from openmaas.enginehost import wire
from openmaas.engines.base import Engine, EngineStream, ModelKind, share_queue
from openmaas.engines.hosted import (
    ENDS_PATH,
    HEALTH_PATH,
    HOLD_EXPIRY_S,
    HOLD_PATH,
    HOLD_REFRESH_S,
    PROMPT_TOKENS_PATH,
    RELEASE_PATH,
    REQUEST_ID_HEADER,
    HeldDeployment,
)
from openmaas.protocols.openai.adapter import usage_json
from openmaas.settings import Settings

log = logging.getLogger("openmaas.enginehost")

ENDS_KEPT = 4096  # final counts of unfinished streams, until their worker asks
_END_WAIT_S = 30.0
_IDLE_S = 1.0  # a deployment no worker holds is stopped once idle this long
_JSON = "application/json"

BuildHeld = Callable[[HeldDeployment], Engine]
"""Builds the engine of a held deployment (not started); ``InvalidRequest`` refuses it."""


def local_engines(settings: Settings) -> dict[str, Engine]:
    """The engines of the settings' in-process models (by public name), not started."""
    ctx = settings_context(_here(settings))
    return {
        spec.name: build_engine(spec, ctx)
        for spec in settings_document(settings).models
        if spec.deployments[0].in_process
    }


def held_builder(settings: Settings) -> BuildHeld:
    """How the host builds a deployment a worker holds: read by the catalog's own schema
    (``catalog/schema.py``), of an in-process kind only, built as a single process builds
    it (the settings' defaults, the model cache)."""
    ctx = settings_context(_here(settings))

    def build(held: HeldDeployment) -> Engine:
        model = {"name": held.model, "kind": held.kind.value, "deployments": [held.deployment]}
        try:
            [deployment] = ModelSpec.model_validate(model).deployments
        except ValidationError as exc:
            raise InvalidRequest(f"The engine host cannot read the deployment: {exc}") from None
        if not deployment.in_process or not deployment.serves(held.kind):
            raise InvalidRequest(
                f"The engine host loads only local models; not a '{deployment.engine}' "
                f"deployment of a {held.kind.value} model."
            )
        return share_queue(deployment.build(held.model, held.kind, ctx), ctx.engine_queue_share)

    return build


def _here(settings: Settings) -> Settings:
    """The settings as a process that loads its models itself: no engine host."""
    return settings.model_copy(update={"engine_socket": None})


@dataclass
class _Held:
    """A deployment that workers hold: its engine, and each holder's expiry (monotonic)."""

    held: HeldDeployment
    engine: Engine
    loading: asyncio.Task[None]
    holders: dict[str, float] = field(default_factory=dict)
    retiring: asyncio.Task[None] | None = None


class EngineHost:
    def __init__(
        self,
        engines: Mapping[str, Engine],
        *,
        build_held: BuildHeld | None = None,
        clock: Clock | None = None,
        drain_seconds: float = 300.0,
    ) -> None:
        self.engines = dict(engines)
        self._build_held = build_held
        self._clock = clock or SystemClock()
        self._drain_seconds = drain_seconds
        self._held: dict[str, _Held] = {}
        self._loading: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._unloading: set[asyncio.Task[None]] = set()
        self._ends: collections.OrderedDict[str, asyncio.Future[Usage]] = collections.OrderedDict()

    # -- lifecycle ---------------------------------------------------------------------
    def start_loading(self) -> None:
        for engine in self.engines.values():
            self._start(engine)

    def _start(self, engine: Engine) -> asyncio.Task[None]:
        task = asyncio.create_task(self._load(engine))
        self._loading.add(task)
        task.add_done_callback(self._loading.discard)
        return task

    async def _load(self, engine: Engine) -> None:
        try:
            await engine.start()
            log.info("model loaded", extra={"model": engine.model})
        except Exception:  # the engine keeps the reason; workers see it in the health
            log.exception("model failed to load", extra={"model": engine.model})

    async def stop(self) -> None:
        retiring = [h.retiring for h in self._held.values() if h.retiring is not None]
        for task in [*self._loading, *retiring]:
            task.cancel()
        await asyncio.gather(*self._loading, *self._closing, *retiring, return_exceptions=True)
        engines = [*self.engines.values(), *(h.engine for h in self._held.values())]
        self._held.clear()
        await asyncio.gather(*(e.stop() for e in engines), *self._unloading, return_exceptions=True)

    def health(self) -> dict[str, object]:
        models: dict[str, dict[str, Any]] = {
            name: _state(engine) for name, engine in self.engines.items()
        }
        models |= {key: self.held_state(key) for key in self._held}
        ready = all(m["state"] != "loading" for m in models.values())
        return {"status": "ready" if ready else "loading", "models": models}

    def engine(self, name: str) -> Engine:
        held = self._held.get(name)
        if held is not None:
            return held.engine
        try:
            return self.engines[name]
        except KeyError:
            raise ModelNotFound(name) from None

    # -- deployments the workers hold ----------------------------------------------------
    def hold(self, held: HeldDeployment, holder: str) -> str:
        """``holder`` holds the deployment until it releases it or stops declaring it for
        ``HOLD_EXPIRY_S``: built and loaded on its first hold. Its key."""
        key = held.key
        entry = self._held.get(key)
        if entry is None:
            if self._build_held is None:
                raise InvalidRequest("This engine host serves its settings' models only.")
            engine = self._build_held(held)
            log.info("loading a held model", extra={"model": held.model, "key": key})
            entry = self._held[key] = _Held(held, engine, self._start(engine))
        entry.holders[holder] = self._clock.monotonic() + HOLD_EXPIRY_S
        return key

    def held_state(self, key: str) -> dict[str, Any]:
        """A held deployment's state, its model and deployment, and how many hold it."""
        entry = self._held[key]
        return _state(entry.engine) | {
            "model": entry.held.model,
            "deployment": entry.held.deployment.get("id"),
            "holders": len(entry.holders),
        }

    def release(self, key: str, holder: str) -> None:
        entry = self._held.get(key)
        if entry is not None and entry.holders.pop(holder, None) is not None:
            self._retire_unheld(key, entry)

    def expire_holds(self) -> None:
        """Drop the holds not declared again in time (their worker died)."""
        now = self._clock.monotonic()
        for key, entry in list(self._held.items()):
            expired = [h for h, until in entry.holders.items() if until <= now]
            for holder in expired:
                del entry.holders[holder]
            if expired:
                log.warning("holds expired", extra={"key": key, "holders": len(expired)})
                self._retire_unheld(key, entry)

    async def keep_expiring(self) -> None:
        while True:
            await asyncio.sleep(HOLD_REFRESH_S)
            self.expire_holds()

    def _retire_unheld(self, key: str, entry: _Held) -> None:
        if entry.holders or entry.retiring is not None:
            return
        entry.retiring = asyncio.create_task(self._drain_and_stop(key, entry))

    async def _drain_and_stop(self, key: str, entry: _Held) -> None:
        """Stop a deployment no worker holds once idle (every worker stopped using it
        before it released it; a stream still closing here ends first), at the latest
        after the drain time. Held again meanwhile, it stays."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_seconds
        idle_since: float | None = None
        while not entry.holders:
            now = loop.time()
            if entry.engine.capacity().in_flight:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            if now >= deadline or (idle_since is not None and now - idle_since >= _IDLE_S):
                break
            await asyncio.sleep(0.05)
        else:
            entry.retiring = None
            return
        del self._held[key]
        log.info("unloading a model no worker holds", extra={"model": entry.held.model, "key": key})
        unloading = asyncio.create_task(_unload(entry))  # not cut by our stop()
        self._unloading.add(unloading)
        unloading.add_done_callback(self._unloading.discard)

    # -- the ends of streams -----------------------------------------------------------
    def track(self, request_id: str) -> None:
        self._ends[request_id] = asyncio.get_running_loop().create_future()
        while len(self._ends) > ENDS_KEPT:
            self._ends.popitem(last=False)

    def ended(self, request_id: str, usage: Usage) -> None:
        future = self._ends.get(request_id)
        if future is not None and not future.done():
            future.set_result(usage)

    def close_later(self, request_id: str, pump: _Pump) -> None:
        """Stop the engine (on a task of its own: the caller may be cancelled) and keep its
        final count for the worker."""

        async def close() -> None:
            self.ended(request_id, await pump.close())

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def end_of(self, request_id: str) -> Usage | None:
        future = self._ends.get(request_id)
        if future is None:
            return None
        usage = await asyncio.wait_for(asyncio.shield(future), _END_WAIT_S)
        self._ends.pop(request_id, None)
        return usage


class _Pump:
    """Reads an engine stream on a task of its own."""

    def __init__(self, stream: EngineStream) -> None:
        self.stream = stream
        self._queue: asyncio.Queue[StreamEvent | OpenMaaSError | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.stream:
                self._queue.put_nowait(event)
                if isinstance(event, Finished):
                    break
        except OpenMaaSError as exc:
            self._queue.put_nowait(exc)
        finally:
            await self.stream.aclose()
            self._queue.put_nowait(None)

    async def next(self) -> StreamEvent | None:
        item = await self._queue.get()
        if isinstance(item, OpenMaaSError):
            raise item
        return item

    async def close(self) -> Usage:
        """Stop the engine (cancelling the reading task once) and return its final count."""
        if not self._task.done():
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.stream.tracker.snapshot()


# -- the app --------------------------------------------------------------------------------
Background = Callable[[], Coroutine[Any, Any, None]]
"""Work the host runs for as long as it serves (the process's heap trimming: the caller
passes it in, ``server/enginehost.py``), cancelled when it stops."""


def create_host_app(host: EngineHost, background: Sequence[Background] = ()) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        host.start_loading()
        tasks = [asyncio.create_task(host.keep_expiring())]
        tasks += [asyncio.create_task(work()) for work in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await host.stop()

    async def health(request: Request) -> Response:
        return _json(host.health())

    async def generate(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        try:
            core = wire.generation_request(await request.body(), request_id, request.headers)
            stream = host.engine(core.model).stream(core)
        except OpenMaaSError as exc:
            return _error(exc)
        host.track(request_id)
        pump = _Pump(stream)
        try:
            first = await unless_disconnected(request, pump.next())
        except OpenMaaSError as exc:
            host.close_later(request_id, pump)
            return _error(exc)
        except BaseException:
            host.close_later(request_id, pump)
            raise
        if first is None:  # the worker went away while the request waited
            host.close_later(request_id, pump)
            return Response(status_code=499)
        writer = wire.ChunkWriter(request_id, core.model, chat=core.is_chat)
        frames = _frames(host, request_id, pump, first, writer)
        return StreamingResponse(frames, media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        try:
            core = wire.embedding_request(await request.body(), request_id, request.headers)
            result = await host.engine(core.model).embed(core)
        except OpenMaaSError as exc:
            return _error(exc)
        return Response(wire.embeddings_body(result), media_type=_JSON)

    async def prompt_tokens(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        try:
            core = wire.generation_request(await request.body(), request_id)
            count = await host.engine(core.model).count_prompt_tokens(core)
        except OpenMaaSError as exc:
            return _error(exc)
        return _json({"prompt_tokens": count})

    async def end(request: Request) -> Response:
        try:
            usage = await host.end_of(request.path_params["request_id"])
        except TimeoutError:
            usage = None
        if usage is None:
            return _error(InvalidRequest("No stream of that id is remembered."), 404)
        return _json(usage_json(usage))

    async def hold(request: Request) -> Response:
        try:
            body = _object(await request.body())
            held = HeldDeployment(
                model=str(body["model"]),
                kind=ModelKind(body["kind"]),
                deployment=dict(body["deployment"]),
            )
            key = host.hold(held, str(body["holder"]))
        except (KeyError, ValueError, TypeError):
            return _error(InvalidRequest("The engine host cannot read the hold."))
        except OpenMaaSError as exc:
            return _error(exc)
        return _json({"key": key, **host.held_state(key)})

    async def release(request: Request) -> Response:
        try:
            body = _object(await request.body())
            host.release(str(body["key"]), str(body["holder"]))
        except (KeyError, ValueError, TypeError):
            return _error(InvalidRequest("The engine host cannot read the release."))
        return _json({})

    return Starlette(
        routes=[
            Route("/v1" + HEALTH_PATH, health, methods=["GET"]),
            Route("/v1" + HOLD_PATH, hold, methods=["POST"]),
            Route("/v1" + RELEASE_PATH, release, methods=["POST"]),
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1" + PROMPT_TOKENS_PATH, prompt_tokens, methods=["POST"]),
            Route("/v1" + ENDS_PATH + "{request_id}", end, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def _frames(
    host: EngineHost,
    request_id: str,
    pump: _Pump,
    first: StreamEvent,
    writer: wire.ChunkWriter,
) -> AsyncIterator[bytes]:
    """The stream's frames; however it ends, the engine is stopped and its count kept."""
    finished: Finished | None = None
    event: StreamEvent | None = first
    try:
        while event is not None:
            yield writer.event(event, pump.stream.tracker.snapshot())
            if isinstance(event, Finished):
                finished = event
                break
            event = await pump.next()
    except OpenMaaSError as exc:
        yield writer.error(exc)
    finally:
        if finished is not None:
            host.ended(request_id, finished.usage)
        else:
            host.close_later(request_id, pump)


async def _unload(entry: _Held) -> None:
    entry.loading.cancel()  # still loading: it must not become ready after its stop
    await asyncio.gather(entry.loading, return_exceptions=True)
    await entry.engine.stop()


def _state(engine: Engine) -> dict[str, Any]:
    health = engine.health()
    return {"state": health.state.value, "detail": health.detail, "kind": engine.kind.value}


def _object(raw: bytes) -> dict[str, Any]:
    body = orjson.loads(raw)  # its JSONDecodeError is a ValueError
    if not isinstance(body, dict):
        raise TypeError("not an object")
    return body


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def _error(exc: OpenMaaSError, status: int | None = None) -> Response:
    code, body = wire.error_body(exc)
    return _json(body, status or code)
