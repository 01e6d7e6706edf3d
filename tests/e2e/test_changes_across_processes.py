"""A running server answers keys and terms from memory and still sees every change the CLI
makes in another process: a revoked key is refused within the change feed's poll (and its
stream in flight ends), a new key works at once, a new price applies to the requests after
the poll."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.e2e.live import LiveServer

MODEL = "fake-words"
SLOW = "fake-slow"  # a word every 50 ms, 2,000 words: it runs long after any test looks


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(
        tmp_path_factory.mktemp("changes") / "home",
        embedded_models="false",
        fake_models={
            MODEL: {"text": "one two three"},
            SLOW: {"text": " ".join(["word"] * 2000), "token_delay": 0.05},
        },
    )
    live.start()
    yield live
    live.stop()


def status(server: LiveServer, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{server.base_url}/v1/models", headers=headers).status_code


def test_a_key_created_by_the_cli_works_at_once(server: LiveServer) -> None:
    key = server.new_key(name="fresh")
    assert status(server, key) == 200


def test_a_key_revoked_by_the_cli_is_refused_by_the_running_server(server: LiveServer) -> None:
    key = server.new_key(name="short-lived")
    assert status(server, key) == 200  # cached by the server now
    assert status(server, key) == 200
    server.cli("keys", "revoke", key.split(".")[0])
    response = server.await_refused(key)
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]


def test_a_key_the_cli_restricts_is_restricted_by_the_running_server(server: LiveServer) -> None:
    """Made in another process with a model and an expiry: the server reads both with the
    key's row, and then answers them from memory."""
    key = server.cli(
        "keys", "create", "--org", "default", "--name", "one-model", "--model", MODEL,
        "--expires", "30d",
    ).stdout.strip()  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(f"{server.base_url}/v1/models", headers=headers).json()
    assert [m["id"] for m in listed["data"]] == [MODEL]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    url = f"{server.base_url}/v1/chat/completions"
    assert httpx.post(url, json={"model": MODEL, **chat}, headers=headers).status_code == 200
    refused = httpx.post(url, json={"model": SLOW, **chat}, headers=headers)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    listing = server.cli("keys", "list").stdout
    assert "one-model" in listing and MODEL in listing
    past = server.cli(
        "keys", "create", "--org", "default", "--name", "late", "--expires", "2001-01-01",
        check=False,
    )  # fmt: skip
    assert past.returncode != 0 and "expires_at" in past.stderr


def test_a_price_set_by_the_cli_applies_after_the_poll(server: LiveServer) -> None:
    server.cli("orgs", "create", "payer")
    server.cli("billing", "topup", "payer", "10")
    key = server.new_key(org="payer", name="payer")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key}"}

    def request_cost() -> object:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat, headers=headers)
        assert response.status_code == 200, response.text
        return server.usage_row(response.headers["x-request-id"])["cost_micros"]

    assert request_cost() is None  # no price yet: metered, not charged
    marker = server.new_key(org="payer", name="marker")
    assert status(server, marker) == 200  # cached: refused only once the feed reports it
    server.cli("prices", "set", MODEL, "--input", "1", "--cached-input", "1", "--output", "2")
    # Audit ids grow with every change: once a key revoked after the price is refused, the
    # server's feed has read past the price too.
    server.cli("keys", "revoke", marker.split(".")[0])
    assert server.await_refused(marker).status_code == 401
    assert request_cost() == 1 * 1 + 3 * 2  # 1 prompt word, 3 output words, micros per token


def test_a_stream_in_flight_ends_when_its_key_is_revoked(server: LiveServer) -> None:
    key = server.new_key(name="streaming")
    chat = {"model": SLOW, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=chat, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # streaming
        server.cli("keys", "revoke", key.split(".")[0])  # another process
        rest = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    # The stream ends with an error event, long before its 2,000 words.
    assert rest[-1] == "[DONE]"
    error = orjson.loads(rest[-2])["error"]
    assert error["code"] == "invalid_api_key" and "revoked" in error["message"]
    row = server.usage_row(request_id)
    assert row["termination"] == "key_revoked"
    assert 1 <= row["completion_tokens"] < 2000  # billed for what it generated
    assert server.in_flight(SLOW) == 0
