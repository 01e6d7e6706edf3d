"""Pure ASGI middleware: request id, body-size limit, one access-log line per request.

The pieces (``begin``, ``limited_receive``, ``add_headers``, ``log_request``) are also
what ``server/direct.py`` does for the routes it calls directly, without wrapping ``send``.
"""

from __future__ import annotations

import logging
import time
from contextvars import Token
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openmaas.core.errors import PayloadTooLarge
from openmaas.core.ids import RequestIdGenerator
from openmaas.server.telemetry.logs import request_id_var

if TYPE_CHECKING:  # imported only when traces are on
    from openmaas.server.telemetry.traces import Tracing

log = logging.getLogger("openmaas.access")


class RequestContextMiddleware:
    """Gives each HTTP request its id (``x-request-id`` on every response) and enforces the
    body limit while the body is read, whatever ``content-length`` claims."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        new_request_id: RequestIdGenerator | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Shared with the direct dispatch of one application: its ids stay monotonic.
        self.new_request_id = new_request_id or RequestIdGenerator()
        self.tracing = tracing  # a span per request (None: traces off)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, state, token = begin(scope, self.new_request_id)
        tracing = self.tracing
        trace = tracing.begin(scope) if tracing is not None else None
        started = time.perf_counter()
        code: int | None = None
        id_header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                headers = list(message.get("headers", ()))
                add_headers(headers, id_header, state)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(
                scope, limited_receive(scope, receive, self.max_body_bytes), send_with_id
            )
        finally:
            log_request(scope, code, started, state)
            if trace is not None:
                tracing.end(trace, code)  # type: ignore[union-attr]
            request_id_var.reset(token)


def begin(
    scope: Scope, new_request_id: RequestIdGenerator
) -> tuple[str, dict[str, Any], Token[str | None]]:
    """A new request's id, set in the scope's state (made if missing) and in the log
    context (reset the returned token when the request ends)."""
    rid = new_request_id()
    token = request_id_var.set(rid)
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    state["request_id"] = rid
    return rid, state, token


def limited_receive(scope: Scope, receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``PayloadTooLarge`` once the body passes ``limit`` bytes, or
    at once when ``content-length`` claims more."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        too_large = PayloadTooLarge(limit)

        async def refuse_receive() -> Message:
            raise too_large

        return refuse_receive
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(limit)
        return message

    return limited


def add_headers(
    headers: list[tuple[bytes, bytes]], id_header: tuple[bytes, bytes], state: dict[str, Any]
) -> None:
    """The request id, then the headers a route asked for (``response_headers`` in the
    state, e.g. ``x-ratelimit-*``) that the response does not carry itself."""
    headers.append(id_header)
    extra: dict[str, str] | None = state.get("response_headers")
    if extra:
        present = {name.lower() for name, _ in headers}
        for name, value in extra.items():
            if name.encode() not in present:  # an error's own headers win
                headers.append((name.encode(), value.encode()))


def log_request(scope: Scope, status: int | None, started: float, state: dict[str, Any]) -> None:
    """The access-log line of one request."""
    log.info(
        "request",
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "key_id": state.get("key_id"),
        },
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
