"""The engine host: the local models loaded once, served to the gateway workers of one
machine over a Unix socket (``docs/engines.md``, "The engine host").

:class:`EngineHost` holds the engines of the models the settings declare to run in-process
(embedded and ``OPENMAAS_LOCAL_MODELS``), built exactly as a single process builds them
(``catalog/builtin.py``), and :func:`create_host_app` is its ASGI app. The worker's side is
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
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from openmaas.asgi import unless_disconnected
from openmaas.catalog.builtin import build_engine, settings_context, settings_document
from openmaas.core.errors import InvalidRequest, ModelNotFound, OpenMaaSError
from openmaas.core.ids import new_request_id
from openmaas.core.types import Finished, StreamEvent, Usage
from openmaas.enginehost import wire
from openmaas.engines.base import Engine, EngineStream
from openmaas.engines.hosted import (
    ENDS_PATH,
    HEALTH_PATH,
    PROMPT_TOKENS_PATH,
    REQUEST_ID_HEADER,
)
from openmaas.protocols.openai.adapter import usage_json
from openmaas.settings import Settings

log = logging.getLogger("openmaas.enginehost")

ENDS_KEPT = 4096  # final counts of unfinished streams, until their worker asks
_END_WAIT_S = 30.0
_JSON = "application/json"


def local_engines(settings: Settings) -> dict[str, Engine]:
    """The engines of the settings' in-process models (by public name), not started."""
    ctx = settings_context(settings.model_copy(update={"engine_socket": None}))
    return {
        spec.name: build_engine(spec, ctx)
        for spec in settings_document(settings).models
        if spec.deployments[0].in_process
    }


class EngineHost:
    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = dict(engines)
        self._loading: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._ends: collections.OrderedDict[str, asyncio.Future[Usage]] = collections.OrderedDict()

    # -- lifecycle ---------------------------------------------------------------------
    def start_loading(self) -> None:
        for engine in self.engines.values():
            task = asyncio.create_task(self._load(engine))
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)

    async def _load(self, engine: Engine) -> None:
        try:
            await engine.start()
            log.info("model loaded", extra={"model": engine.model})
        except Exception:  # the engine keeps the reason; workers see it in the health
            log.exception("model failed to load", extra={"model": engine.model})

    async def stop(self) -> None:
        for task in list(self._loading):
            task.cancel()
        await asyncio.gather(*self._loading, *self._closing, return_exceptions=True)
        await asyncio.gather(*(e.stop() for e in self.engines.values()), return_exceptions=True)

    def health(self) -> dict[str, object]:
        models = {
            name: {"state": h.state.value, "detail": h.detail, "kind": engine.kind.value}
            for name, engine in self.engines.items()
            for h in (engine.health(),)
        }
        ready = all(m["state"] != "loading" for m in models.values())
        return {"status": "ready" if ready else "loading", "models": models}

    def engine(self, name: str) -> Engine:
        try:
            return self.engines[name]
        except KeyError:
            raise ModelNotFound(name) from None

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
def create_host_app(host: EngineHost) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        host.start_loading()
        try:
            yield
        finally:
            await host.stop()

    async def health(request: Request) -> Response:
        return _json(host.health())

    async def generate(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        try:
            core = wire.generation_request(await request.body(), request_id)
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
            core = wire.embedding_request(await request.body(), request_id)
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

    return Starlette(
        routes=[
            Route("/v1" + HEALTH_PATH, health, methods=["GET"]),
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


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def _error(exc: OpenMaaSError, status: int | None = None) -> Response:
    code, body = wire.error_body(exc)
    return _json(body, status or code)
