"""server/errors.py: every exception becomes an error body of the request's protocol."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from openmaas.core.errors import ModelNotFound, OpenMaaSError
from openmaas.server.errors import install_error_handlers


def _other_protocol(exc: OpenMaaSError) -> tuple[int, dict[str, Any], dict[str, str]]:
    status = 404 if isinstance(exc, ModelNotFound) else 500
    return status, {"type": "error", "error": {"message": exc.message}}, {"x-proto": "other"}


@pytest.fixture()
def client() -> TestClient:
    app = FastAPI()

    @app.get("/v1/boom")
    @app.get("/other/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    @app.get("/v1/model")
    @app.get("/other/model")
    async def model() -> None:
        raise ModelNotFound("ghost")

    install_error_handlers(app, [("/other", _other_protocol)])
    return TestClient(app, raise_server_exceptions=False)


def test_unexpected_errors_are_500_and_reveal_nothing(client: TestClient) -> None:
    response = client.get("/v1/boom")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["code"] == "internal_error"


def test_the_request_path_picks_the_protocol(client: TestClient) -> None:
    openai_shape = client.get("/v1/model")
    assert openai_shape.status_code == 404
    assert openai_shape.json()["error"]["code"] == "model_not_found"
    other = client.get("/other/model")
    assert other.status_code == 404 and other.headers["x-proto"] == "other"
    assert other.json() == {"type": "error", "error": {"message": ModelNotFound("ghost").message}}
    assert client.get("/other/boom").json()["type"] == "error"


def test_unknown_routes_get_the_protocol_shape_and_status(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/other/nothing").status_code == 404
    assert client.post("/v1/model").status_code == 405
