"""The one place that turns exceptions into HTTP error responses.

Each protocol renders our errors in its own shape; the renderer is chosen by the request's
path (the longest matching prefix), and OpenAI's is the default. The same
:class:`ErrorMapping` answers for FastAPI's exception handlers and for the routes
dispatched directly (``server/direct.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from openmaas.core.errors import InvalidRequest, NotFound, OpenMaaSError
from openmaas.protocols.openai.errors import to_openai_error
from openmaas.server.responses import json_response

log = logging.getLogger("openmaas.errors")

ErrorRenderer = Callable[[OpenMaaSError], tuple[int, dict[str, Any], dict[str, str]]]


class _Unexpected(OpenMaaSError):
    """Stands for an exception nobody raised on purpose (rendered as an internal error)."""

    def __init__(self) -> None:
        super().__init__("The server had an error while processing your request.")


class ErrorMapping:
    """An exception -> the response for a request on ``path``."""

    def __init__(self, renderers: Sequence[tuple[str, ErrorRenderer]] = ()) -> None:
        self._by_prefix = sorted(renderers, key=lambda item: len(item[0]), reverse=True)

    def render(self, path: str, exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
        for prefix, renderer in self._by_prefix:
            if path.startswith(prefix):
                return renderer(exc)
        return to_openai_error(exc)

    def ours(self, path: str, exc: OpenMaaSError) -> Response:
        status, body, headers = self.render(path, exc)
        return json_response(body, status, headers)

    def http(self, path: str, exc: HTTPException) -> Response:
        detail = str(exc.detail)
        ours = NotFound(detail) if exc.status_code == 404 else InvalidRequest(detail)
        _status, body, headers = self.render(path, ours)
        return json_response(body, exc.status_code, {**headers, **(exc.headers or {})})

    def unexpected(self, path: str, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        _status, body, headers = self.render(path, _Unexpected())
        return json_response(body, 500, headers)


def install_error_handlers(
    app: FastAPI, renderers: Sequence[tuple[str, ErrorRenderer]] = ()
) -> ErrorMapping:
    mapping = ErrorMapping(renderers)

    @app.exception_handler(OpenMaaSError)
    async def _ours(request: Request, exc: OpenMaaSError) -> Response:
        return mapping.ours(request.url.path, exc)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return mapping.http(request.url.path, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return mapping.unexpected(request.url.path, exc)

    return mapping
