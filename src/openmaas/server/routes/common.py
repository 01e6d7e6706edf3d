"""What every protocol's routes share: who is calling, and running a generation while
watching the client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from starlette.requests import Request

from openmaas.accounts.auth import Principal
from openmaas.asgi import unless_disconnected
from openmaas.core.assembly import Assembler
from openmaas.core.errors import OpenMaaSError
from openmaas.core.types import Finished, GenerationRequest, StreamEvent
from openmaas.server.state import AppState
from openmaas.serving.generation import Generation

T = TypeVar("T")

SESSION_HEADER = "x-session-id"
"""A client's conversation id; the router keeps a conversation on one replica by it."""
_SESSION = SESSION_HEADER.encode()


def _header(request: Request, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as ASGI gives names), read from the
    scope: Starlette's ``headers.get`` raises and catches a KeyError for a missing one,
    which on the hot path cost more than the whole lookup should."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


async def authenticate(request: Request, state: AppState) -> Principal:
    """The caller, from whichever header carries the key; the key id goes to the access log."""
    principal = await state.auth.authenticate_headers(request.headers)
    request.scope["state"]["key_id"] = principal.key_id
    suspended = state.platform.suspended
    if suspended is not None and not principal.is_admin:  # admin keys run the platform
        await suspended.check(principal.org_id)
    return principal


def response_headers(request: Request) -> dict[str, str]:
    """Headers the middleware adds to this request's response, whatever the route returns
    (e.g. the ``x-ratelimit-*`` of its admission)."""
    return request.scope["state"].setdefault("response_headers", {})  # type: ignore[no-any-return]


async def start_generation(
    request: Request, state: AppState, principal: Principal, core: GenerationRequest, endpoint: str
) -> Generation | None:
    """Admit and start ``core``, watching the client meanwhile (until the first token
    nothing reads the connection: a client that leaves while its request waits in the
    engine's queue stops it there). None when the client went away."""
    return await unless_disconnected(request, _started(request, state, principal, core, endpoint))


async def answer(
    request: Request,
    state: AppState,
    principal: Principal,
    core: GenerationRequest,
    endpoint: str,
    read: Callable[[Generation], Awaitable[T]],
) -> tuple[Generation, T] | None:
    """Admit and start ``core``, then ``read`` its whole answer (e.g. :func:`collect`),
    watching the client throughout with one watch. None when the client went away."""

    async def started_and_read() -> tuple[Generation, T]:
        generation = await _started(request, state, principal, core, endpoint)
        return generation, await read(generation)

    return await unless_disconnected(request, started_and_read())


async def _started(
    request: Request, state: AppState, principal: Principal, core: GenerationRequest, endpoint: str
) -> Generation:
    session = _header(request, _SESSION)
    if session:  # turns of one conversation go to the replica that has its KV cache
        core = replace(core, routing=replace(core.routing, affinity_key=session[:200]))
    if state.tracing is not None:  # the request's span (server/telemetry/traces.py) goes with it
        trace = request.scope["state"].get("trace")
        core = replace(core, routing=replace(core.routing, trace=trace))
    generation = await state.gateway.generate(principal, core, endpoint)
    response_headers(request).update(generation.limit_headers)
    return generation


async def collect(generation: Generation) -> Assembler:
    answer = Assembler()
    try:
        async for event in generation:
            answer.add(event)
            if answer.finished is not None:
                await generation.aclose()  # durable before the response is sent
                return answer
        raise AssertionError("a generation always ends with Finished or an error")
    finally:
        await generation.aclose()


class StreamWriter(Protocol):
    """A protocol's SSE framing of core events."""

    def event(self, event: StreamEvent) -> bytes: ...

    def error(self, body: dict[str, Any]) -> bytes: ...


ErrorBody = Callable[[OpenMaaSError], tuple[int, dict[str, Any], dict[str, str]]]


async def sse_stream(
    generation: Generation, writer: StreamWriter, render_error: ErrorBody
) -> AsyncIterator[bytes]:
    """A generation's events as SSE frames. The usage record is durable before the client
    sees the end of the stream; an error after the first byte ends it with an error frame.

    Frames of events that came together (one read of the engine's) go out together, as
    one write: they are sent when the next event is not in hand (``Generation.ready``),
    so no frame ever waits for an event to come."""
    frames: list[bytes] = []
    try:
        async for event in generation:
            if isinstance(event, Finished):
                await generation.aclose()
            frame = writer.event(event)
            if frame:
                frames.append(frame)
            if frames and not generation.ready():
                yield frames[0] if len(frames) == 1 else b"".join(frames)
                frames.clear()
        if frames:  # an end the generation did not see coming
            yield b"".join(frames)
    except OpenMaaSError as exc:
        await generation.aclose()
        _status, body, _headers = render_error(exc)
        frames.append(writer.error(body))
        yield b"".join(frames)
    finally:
        await generation.aclose()
