"""The one place that turns exceptions into HTTP error responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from openmaas.core.errors import OpenMaaSError
from openmaas.protocols.openai.errors import error_body, internal_error, to_openai_error
from openmaas.server.responses import json_response

log = logging.getLogger("openmaas.errors")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenMaaSError)
    async def _ours(_request: Request, exc: OpenMaaSError) -> Response:
        status, body, headers = to_openai_error(exc)
        return json_response(body, status, headers)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> Response:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = error_body(str(exc.detail), type_, code=None)
        return json_response(body, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        status, body = internal_error()
        return json_response(body, status)
