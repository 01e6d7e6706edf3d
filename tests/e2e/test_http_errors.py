"""Every error case over raw HTTP: status, OpenAI error body, and the effect on metering."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.e2e.live import CHAT_MODEL, EMBEDDING_MODEL, LiveServer

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert response.headers["x-request-id"]
    return body["error"]


def test_malformed_json_is_400_and_reaches_no_engine(http: httpx.Client, live: LiveServer) -> None:
    before = live.usage_count()
    error = _error(
        http.post(
            "/v1/chat/completions",
            content=b'{"model": "x", "messages": [',
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert "JSON" in error["message"] and error["type"] == "invalid_request_error"
    assert live.usage_count() == before


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"temperature": 7}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 1000}, "n"),  # more choices than the model can run at once
        ({"top_p": "high"}, "top_p"),
        ({"stream": "yes please"}, "stream"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_invalid_field_is_400_naming_it(http: httpx.Client, patch: dict, param: str) -> None:
    error = _error(http.post("/v1/chat/completions", json={**CHAT, **patch}), 400)
    assert error["param"] == param
    assert param in error["message"] or param.split(".")[-1] in error["message"]


def test_missing_model_field_is_named(http: httpx.Client) -> None:
    assert _error(http.post("/v1/chat/completions", json={"messages": []}), 400)["param"] in {
        "model",
        "messages",
    }


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer om0000000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
    ],
)
def test_bad_credentials_are_401(live: LiveServer, headers: dict) -> None:
    before = live.usage_count()
    response = httpx.post(f"{live.base_url}/v1/chat/completions", json=CHAT, headers=headers)
    error = _error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert live.usage_count() == before


def test_wrong_secret_for_a_real_key_id_is_401(live: LiveServer, admin_key: str) -> None:
    key_id = admin_key.split(".")[0]
    forged = f"{key_id}.{'B' * 43}"
    response = httpx.get(
        f"{live.base_url}/v1/models", headers={"Authorization": f"Bearer {forged}"}
    )
    _error(response, 401)


def test_auth_is_checked_before_the_body(live: LiveServer) -> None:
    response = httpx.post(f"{live.base_url}/v1/chat/completions", content=b"{broken")
    _error(response, 401)


def test_revoked_key_fails_once_the_server_sees_the_change(live: LiveServer) -> None:
    key = live.new_key(name="short-lived")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{live.base_url}/v1/models", headers=headers).status_code == 200
    live.cli("keys", "revoke", key.split(".")[0])  # another process: seen within a poll
    error = _error(live.await_refused(key), 401)
    assert "revoked" in error["message"]


def test_unknown_model_is_404(http: httpx.Client, live: LiveServer) -> None:
    before = live.usage_count()
    error = _error(http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    _error(http.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404)
    _error(http.get("/v1/models/nope"), 404)
    assert live.usage_count() == before


def test_wrong_kind_of_model_is_400(http: httpx.Client) -> None:
    error = _error(http.post("/v1/chat/completions", json={**CHAT, "model": EMBEDDING_MODEL}), 400)
    assert error["param"] == "model"
    error = _error(http.post("/v1/embeddings", json={"model": CHAT_MODEL, "input": "x"}), 400)
    assert error["param"] == "model"


def test_embedding_dimensions_are_refused_clearly(http: httpx.Client) -> None:
    error = _error(
        http.post(
            "/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "x", "dimensions": 128}
        ),
        400,
    )
    assert error["param"] == "dimensions" and "384" in error["message"]
    ok = http.post(
        "/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "x", "dimensions": 384}
    )
    assert ok.status_code == 200


def test_oversize_body_is_413(http: httpx.Client, live: LiveServer) -> None:
    before = live.usage_count()
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    error = _error(http.post("/v1/chat/completions", json=huge), 413)
    assert error["code"] == "request_too_large"

    # A body that lies about its length is cut off all the same.
    def chunks():
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(6):
            yield b"y" * (1024 * 1024)
        yield b'"}]}'

    _error(http.post("/v1/chat/completions", content=chunks()), 413)
    assert live.usage_count() == before


def test_prompt_over_the_context_window_is_400(http: httpx.Client, live: LiveServer) -> None:
    long = {**CHAT, "messages": [{"role": "user", "content": "hello " * 5000}]}
    response = http.post("/v1/chat/completions", json=long)
    error = _error(response, 400)
    assert "context" in error["message"]
    row = live.usage_row(response.headers["x-request-id"])
    assert row["termination"] == "rejected" and row["completion_tokens"] == 0


def test_engine_still_loading_is_503_with_retry_after(http: httpx.Client, live: LiveServer) -> None:
    before = live.usage_count()
    response = http.post("/v1/chat/completions", json={**CHAT, "model": "fake-loading"})
    error = _error(response, 503)
    assert error["code"] == "model_not_ready"
    assert int(response.headers["retry-after"]) >= 1
    assert live.usage_count() == before


def test_full_engine_queue_is_429_with_retry_after(live: LiveServer, admin_key: str) -> None:
    # fake-busy has one slot, no queue, and takes 3 s to its first token.
    headers = {"Authorization": f"Bearer {admin_key}"}
    busy = {**CHAT, "model": "fake-busy"}
    responses: list[httpx.Response | Exception] = []

    def call() -> None:
        try:
            responses.append(
                httpx.post(
                    f"{live.base_url}/v1/chat/completions", json=busy, headers=headers, timeout=10
                )
            )
        except httpx.HTTPError as exc:
            responses.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in responses if isinstance(r, httpx.Response))
    assert statuses == [200, 429, 429]
    refused = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 429]
    error = _error(refused[0], 429)
    assert error["code"] == "engine_overloaded" and error["type"] == "rate_limit_error"
    assert int(refused[0].headers["retry-after"]) >= 1


def test_engine_error_before_first_token_is_500_and_recorded(
    http: httpx.Client, live: LiveServer
) -> None:
    response = http.post("/v1/chat/completions", json={**CHAT, "model": "fake-fail-first"})
    error = _error(response, 500)
    assert error["code"] == "engine_error"
    row = live.usage_row(response.headers["x-request-id"])
    assert row["termination"] == "engine_error" and row["completion_tokens"] == 0


def test_engine_error_mid_stream_ends_the_stream_with_an_error_event(
    http: httpx.Client, live: LiveServer
) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={**CHAT, "model": "fake-fail-mid", "stream": True, "max_tokens": 50},
    )
    assert response.status_code == 200
    events = [e[len("data: ") :] for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert '"error"' in events[-2] and "engine_error" in events[-2]
    row = live.usage_row(response.headers["x-request-id"])
    assert row["termination"] == "engine_error" and row["completion_tokens"] == 3


def test_unknown_route_is_404_in_openai_shape(http: httpx.Client) -> None:
    _error(http.get("/v1/does-not-exist"), 404)


def test_health_and_readiness(live: LiveServer) -> None:
    assert httpx.get(f"{live.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{live.base_url}/readyz")
    body = ready.json()
    # One configured engine never finishes loading, so the whole server is not ready...
    assert ready.status_code == 503 and body["engines"]["fake-loading"] == "loading"
    # ...while the embedded ones are, and the database is reachable.
    assert body["engines"][CHAT_MODEL] == "ready" and body["database"] == "ok"


def test_openapi_document_describes_the_routes(live: LiveServer) -> None:
    spec = httpx.get(f"{live.base_url}/openapi.json").json()
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/usage",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert "messages" in spec["components"]["schemas"][ref]["properties"]
