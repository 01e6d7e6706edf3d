"""server/direct.py: routes called directly answer as the full FastAPI stack does."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import Response

from openmaas.core.errors import ModelNotFound, OpenMaaSError
from openmaas.core.ids import RequestIdGenerator
from openmaas.server.direct import OpenMaaSApp
from openmaas.server.errors import install_error_handlers
from openmaas.server.middleware import RequestContextMiddleware
from openmaas.server.responses import json_response


def _other_protocol(exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
    status = 404 if isinstance(exc, ModelNotFound) else 500
    return status, {"type": "error", "error": {"message": exc.message}}, {"x-proto": "other"}


def _app(direct: bool) -> OpenMaaSApp:
    app = OpenMaaSApp()

    @app.post("/v1/boom")
    @app.post("/other/boom")
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internal detail")

    @app.post("/v1/model")
    @app.post("/other/model")
    async def model(request: Request) -> Response:
        raise ModelNotFound("ghost")

    @app.post("/v1/echo")
    async def echo(request: Request) -> Response:
        return json_response({"bytes": len(await request.body())})

    @app.post("/v1/limited")
    async def limited(request: Request) -> Response:
        request.scope["state"]["response_headers"] = {"x-ratelimit-limit-requests": "60"}
        request.scope["state"]["key_id"] = "key-1"
        if await request.body():
            raise ModelNotFound("ghost")
        return json_response({})

    @app.get("/v1/where")
    async def where(request: Request) -> Response:  # as the console reads its route's rule
        route = request.scope["route"]
        return json_response({"route": route.path, "params": request.path_params})

    @app.post("/v1/items/{item}")
    async def item(request: Request) -> Response:
        return json_response({"item": request.path_params["item"]})

    errors = install_error_handlers(app, [("/other", _other_protocol)])
    ids = RequestIdGenerator()
    app.add_middleware(RequestContextMiddleware, max_body_bytes=100, new_request_id=ids)
    if direct:
        app.dispatch_directly(errors, 100, ids)
    return app


@pytest.fixture(params=[False, True], ids=["full-stack", "direct"])
def client(request: pytest.FixtureRequest) -> TestClient:
    return TestClient(_app(direct=request.param), raise_server_exceptions=False)


def test_only_fixed_paths_taking_the_request_alone_are_direct() -> None:
    app = _app(direct=True)
    assert app._direct is not None
    assert set(app._direct) == {
        ("POST", path) for path in ("/v1/boom", "/other/boom", "/v1/model", "/other/model")
    } | {("POST", "/v1/echo"), ("POST", "/v1/limited"), ("GET", "/v1/where")}


def test_errors_have_the_protocol_shape_status_and_request_id(client: TestClient) -> None:
    boom = client.post("/v1/boom")
    assert boom.status_code == 500 and "secret" not in boom.text
    assert boom.json()["error"]["code"] == "internal_error"
    openai_shape = client.post("/v1/model")
    assert openai_shape.status_code == 404
    assert len(openai_shape.headers["x-request-id"]) == 26
    assert openai_shape.json()["error"]["code"] == "model_not_found"
    other = client.post("/other/model")
    assert other.status_code == 404 and other.headers["x-proto"] == "other"
    assert other.json() == {"type": "error", "error": {"message": ModelNotFound("ghost").message}}
    assert client.post("/other/boom").json()["type"] == "error"


def test_an_endpoint_finds_its_route_in_the_scope(client: TestClient) -> None:
    assert client.get("/v1/where").json() == {"route": "/v1/where", "params": {}}


def test_the_body_limit_holds(client: TestClient) -> None:
    assert client.post("/v1/echo", content=b"x" * 100).json() == {"bytes": 100}
    too_large = client.post("/v1/echo", content=b"x" * 101)
    assert too_large.status_code == 413
    assert "x-request-id" in too_large.headers


def test_other_methods_and_paths_are_the_full_stacks(client: TestClient) -> None:
    assert client.get("/v1/echo").status_code == 405
    assert client.post("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.post("/v1/items/7").json() == {"item": "7"}


def test_a_routes_headers_and_the_access_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="openmaas.access")
    answered = client.post("/v1/limited")
    assert answered.headers["x-ratelimit-limit-requests"] == "60"
    refused = client.post("/v1/limited", content=b"x")
    assert refused.status_code == 404 and refused.headers["x-ratelimit-limit-requests"] == "60"
    lines = [r for r in caplog.records if r.name == "openmaas.access"]
    assert [(r.path, r.status, r.key_id) for r in lines] == [  # type: ignore[attr-defined]
        ("/v1/limited", 200, "key-1"),
        ("/v1/limited", 404, "key-1"),
    ]
