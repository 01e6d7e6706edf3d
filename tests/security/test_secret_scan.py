"""A short full session (organizations and keys, requests in all three protocols, an
upstream credential, errors), then a scan of everything it left: no secret it used may
appear in clear in the logs or in the database files."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openmaas.core.keys import build_jwt
from openmaas.server.app import create_app
from openmaas.server.telemetry.logs import JsonFormatter
from tests.security.world import MASTER_KEY, Keys, issue_keys, security_settings
from tests.support.waiting import wait_until

CREDENTIAL = "sk-upstream-credential-7f3a9c2e1b"
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


class _Capture(logging.Handler):
    """Every log record, formatted as the server writes it (JSON, tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs() -> Iterator[_Capture]:
    capture = _Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)  # the most a server can be told to log
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


def _session(client: TestClient, keys: Keys) -> list[str]:
    """Use the server as its users would; the secrets it used besides the keys'."""
    admin, member, other = keys.headers("admin"), keys.headers("member"), keys.headers("other")
    key_id, secret = keys.member.split(".", 1)
    jwt = build_jwt(key_id, secret, int(time.time() * 1000))
    forever = build_jwt(key_id, secret, int(time.time() * 1000), ttl_ms=10 * 365 * 86_400_000)
    wrong = f"{key_id}.{'x' * len(secret)}"

    def ok(status: int, expected: int = 200) -> None:
        assert status == expected

    ok(client.post("/admin/v1/orgs", json={"name": "org-c"}, headers=admin).status_code, 201)
    put = client.put("/admin/v1/credentials/upstream", json={"value": CREDENTIAL}, headers=admin)
    ok(put.status_code, 204)
    # OpenAI: plain, streamed, the Responses API, an unknown model
    ok(client.post("/v1/chat/completions", json=CHAT, headers=member).status_code)
    with client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=other
    ) as stream:
        ok(stream.status_code)
        stream.read()
    response = {"model": "fake-chat", "input": "hi"}
    ok(client.post("/v1/responses", json=response, headers=member).status_code)
    missing = client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=member)
    ok(missing.status_code, 404)
    # Anthropic, with x-api-key
    message = {**CHAT, "max_tokens": 8}
    ok(client.post("/v1/messages", json=message, headers={"x-api-key": keys.member}).status_code)
    # Zhipu, with the SDKs' JWT, plain and async
    zhipu = {"Authorization": f"Bearer {jwt}"}
    ok(client.post("/api/paas/v4/chat/completions", json=CHAT, headers=zhipu).status_code)
    ok(client.post("/api/paas/v4/async/chat/completions", json=CHAT, headers=zhipu).status_code)
    # refusals: a wrong secret, a revoked key, a JWT for ten years, two keys, a bad body
    for headers in (
        {"Authorization": f"Bearer {wrong}"},
        keys.headers("revoked"),
        {"Authorization": f"Bearer {forever}"},
        {"Authorization": f"Bearer {keys.member}", "x-api-key": keys.other},
    ):
        ok(client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code, 401)
    bad = client.post("/v1/chat/completions", content=b"{not json", headers=member)
    ok(bad.status_code, 400)
    ok(client.get("/v1/usage", headers=member).status_code)
    ok(client.get("/admin/v1/audit", headers=admin).status_code)
    return [jwt, forever, wrong, CREDENTIAL]


def _leaks(secrets: list[str], name: str, data: bytes) -> list[str]:
    found = []
    for secret in secrets:
        if secret.encode() in data:
            found.append(f"{name} holds {secret[:6]}… in clear")
    return found


def test_no_secret_reaches_the_logs_or_the_database(
    tmp_path: Path, captured_logs: _Capture
) -> None:
    settings = security_settings(tmp_path)
    keys = asyncio.run(issue_keys(settings))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the fake engine")
        used = _session(client, keys)
        database = [p for p in tmp_path.glob("openmaas.db*") if p.is_file()]  # -wal, -shm
        files_open = {path.name: path.read_bytes() for path in database}
    key_secrets = [token.split(".", 1)[1] for token in keys.secrets() if "." in token]
    secrets = [*keys.secrets(), *key_secrets, MASTER_KEY, *used]
    assert len(captured_logs.lines) > 10  # the session was logged (one line per request)
    leaks = _leaks(secrets, "the log", "\n".join(captured_logs.lines).encode())
    for name, data in files_open.items():
        leaks += _leaks(secrets, name, data)
    for path in tmp_path.rglob("*"):  # the database, its companions, the data directory
        if path.is_file():
            leaks += _leaks(secrets, str(path.relative_to(tmp_path)), path.read_bytes())
    assert leaks == []
