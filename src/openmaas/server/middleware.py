"""Pure ASGI middleware: request id, body-size limit, one access-log line per request."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openmaas.core.errors import PayloadTooLarge
from openmaas.core.ids import RequestIdGenerator
from openmaas.server.logs import request_id_var

log = logging.getLogger("openmaas.access")


class RequestContextMiddleware:
    """Gives each HTTP request its id (``x-request-id`` on every response) and enforces the
    body limit while the body is read, whatever ``content-length`` claims."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        new_request_id: RequestIdGenerator | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Shared by every instance of one application: its ids stay monotonic.
        self.new_request_id = new_request_id or RequestIdGenerator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = self.new_request_id()
        token = request_id_var.set(rid)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid
        started = time.perf_counter()
        code: int | None = None
        limit = self.max_body_bytes
        received = 0

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            too_large = PayloadTooLarge(limit)

            async def refuse_receive() -> Message:
                raise too_large

            receive_fn: Receive = refuse_receive
        else:

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise PayloadTooLarge(limit)
                return message

            receive_fn = limited_receive

        id_header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                headers = list(message.get("headers", ()))
                headers.append(id_header)
                extra: dict[str, str] | None = state.get("response_headers")
                if extra:
                    present = {name.lower() for name, _ in headers}
                    for name, value in extra.items():
                        if name.encode() not in present:  # an error's own headers win
                            headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive_fn, send_with_id)
        finally:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "key_id": state.get("key_id"),
                },
            )
            request_id_var.reset(token)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
