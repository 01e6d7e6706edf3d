"""The hot routes dispatched at the ASGI level, past FastAPI's and Starlette's layers.

FastAPI reaches an endpoint through six middlewares, two routers, dependency solving and
an exception wrapper per request: on a priced request that was as much CPU as the gateway's
own work. An endpoint that takes only the request (every generation route: it
authenticates before it reads the body, and parses the body itself) needs none of it, so
:class:`OpenMaaSApp` calls such endpoints directly, with the steps of
``RequestContextMiddleware`` (request id, body limit, access log) and the error mapping of
``server/errors.py``, as the full stack does. Every route stays registered with FastAPI:
the OpenAPI document, the access table and every other path (404, 405, a ``root_path``)
are the full stack's.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, get_type_hints

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from openmaas.core.errors import OpenMaaSError
from openmaas.core.ids import RequestIdGenerator
from openmaas.server.errors import ErrorMapping
from openmaas.server.middleware import add_headers, begin, limited_receive, log_request
from openmaas.server.telemetry.logs import request_id_var

if TYPE_CHECKING:  # imported only when traces are on
    from openmaas.server.telemetry.traces import Tracing

Endpoint = Callable[[Request], Awaitable[Response]]
Direct = tuple[Endpoint, APIRoute]  # the endpoint, and its route as the scope names it


class OpenMaaSApp(FastAPI):
    """FastAPI, with the routes that :func:`direct_endpoints` finds called directly once
    :meth:`dispatch_directly` was called (after every route and middleware is added)."""

    _direct: dict[tuple[str, str], Direct] | None = None
    _direct_app: ASGIApp | None = None

    def dispatch_directly(
        self,
        errors: ErrorMapping,
        max_body_bytes: int,
        new_request_id: RequestIdGenerator,
        tracing: Tracing | None = None,
    ) -> None:
        """Call the endpoints that take only the request directly, with what
        ``RequestContextMiddleware`` does (the same ids: share its generator; a span per
        request when ``tracing``), answering errors through ``errors``."""
        self._direct = direct_endpoints(self)
        self._direct_app = _DirectDispatch(
            self._direct, errors, max_body_bytes, new_request_id, tracing
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self._direct
        if (
            direct is not None
            and scope["type"] == "http"
            and not scope.get("root_path")
            and not self.root_path
            and (scope["method"], scope["path"]) in direct
        ):
            assert self._direct_app is not None
            scope["app"] = self
            await self._direct_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def direct_endpoints(app: FastAPI) -> dict[tuple[str, str], Direct]:
    """(method, path) -> (endpoint, route), for each route with a fixed path whose
    endpoint's one parameter is the request and which returns a ``Response``: nothing for
    FastAPI to solve, validate or serialise."""
    found: dict[tuple[str, str], Direct] = {}
    for route in iter_route_contexts(app.routes):
        path, endpoint = route.path, route.endpoint
        if not isinstance(route.original_route, APIRoute) or not path or "{" in path:
            continue
        if endpoint is None or list(inspect.signature(endpoint).parameters) != ["request"]:
            continue
        returns = get_type_hints(endpoint).get("return")
        if not (isinstance(returns, type) and issubclass(returns, Response)):
            continue  # FastAPI serialises what it returns
        dependant = getattr(route, "dependant", None)
        if dependant is None or dependant.request_param_name != "request":
            continue
        if dependant.dependencies:
            continue
        for method in route.methods or ():
            found.setdefault((method, path), (endpoint, route.original_route))
    return found


class _DirectDispatch:
    """Calls the endpoint for the scope's method and path: the request's id, the body
    limit and the access-log line as ``RequestContextMiddleware`` gives them, without
    wrapping ``send`` (the id and the route's headers go on the response before it is
    sent); an exception before the response is answered as the full stack's handlers
    answer it."""

    __slots__ = ("_endpoints", "_errors", "_limit", "_new_request_id", "_tracing")

    def __init__(
        self,
        endpoints: dict[tuple[str, str], Direct],
        errors: ErrorMapping,
        max_body_bytes: int,
        new_request_id: RequestIdGenerator,
        tracing: Tracing | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._errors = errors
        self._limit = max_body_bytes
        self._new_request_id = new_request_id
        self._tracing = tracing  # None: traces off, nothing of them runs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid, state, token = begin(scope, self._new_request_id)
        tracing = self._tracing
        trace = tracing.begin(scope) if tracing is not None else None
        started = time.perf_counter()
        status: int | None = None
        try:
            receive = limited_receive(scope, receive, self._limit)
            path = scope["path"]
            endpoint, route = self._endpoints[(scope["method"], path)]
            # what routing puts in the scope: an endpoint may read its route (the console
            # finds its access rule by the route's path)
            scope["route"] = route
            scope["endpoint"] = endpoint
            scope["path_params"] = {}
            try:
                response = await endpoint(Request(scope, receive, send))
            except OpenMaaSError as exc:
                if trace is not None:
                    trace.failed(exc)
                response = self._errors.ours(path, exc)
            except HTTPException as exc:
                if trace is not None:
                    trace.failed(exc)
                response = self._errors.http(path, exc)
            except Exception as exc:
                if trace is not None:
                    trace.failed(exc)
                response = self._errors.unexpected(path, exc)
            add_headers(response.raw_headers, (b"x-request-id", rid.encode()), state)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            log_request(scope, status, started, state)
            if trace is not None:
                tracing.end(trace, status)  # type: ignore[union-attr]
            request_id_var.reset(token)
