"""First start, restarts, SIGTERM draining and logs, on servers of their own."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from pathlib import Path

import httpx
import openai

from tests.e2e.live import CHAT_MODEL, LiveServer
from tests.support.waiting import wait_until

FAKE = {"fake-slow": {"text": " ".join(f"w{i}" for i in range(400)), "token_delay": 0.02}}


def test_first_start_prints_a_working_key_once_and_later_starts_reuse_data(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "home", embedded_models="false", fake_models=FAKE).start()
    try:
        key = server.admin_key
        banner = server.stdout
        assert key not in banner  # stdout is a file: the secret is printed only to a terminal
        assert str(server.home.resolve() / "admin-key") in banner
        assert f"curl {server.base_url}/v1/chat/completions" in banner
        assert "from openai import OpenAI" in banner
        assert stat.S_IMODE(os.stat(server.home / "admin-key").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(server.home).st_mode) == 0o700
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model="fake-slow", messages=[{"role": "user", "content": "a b c"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.prompt_tokens == 3
    finally:
        assert server.stop() == 0
    printed = len(server.stdout)

    server.start()
    try:
        assert key not in server.stdout[printed:]
        # The same key still works and the usage from before the restart is still there.
        usage = httpx.get(
            f"{server.base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}
        ).json()
        (day,) = usage["data"]
        assert (day["model"], day["requests"], day["completion_tokens"]) == ("fake-slow", 1, 3)
    finally:
        server.stop()
    assert key not in server.stderr


def test_sigterm_lets_inflight_streams_finish_and_records_them(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "home").start()  # the real embedded models
    key = server.admin_key
    result: dict = {"lines": []}

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": "Tell a story."}],
                "max_tokens": 120,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            timeout=60,
        ) as response:
            result["request_id"] = response.headers["x-request-id"]
            for line in response.iter_lines():
                result["lines"].append(line)
            result["events"] = [line for line in result["lines"] if line.startswith("data: ")]

    client = threading.Thread(target=stream)
    client.start()
    # Mid-stream: tokens are arriving.
    wait_until(lambda: sum(line.startswith("data: ") for line in result["lines"]) >= 3,
               timeout=60, what="the first tokens")  # fmt: skip
    server.send(signal.SIGTERM)
    client.join(60)
    assert server.wait_exit(60) == 0
    assert result["events"][-1] == "data: [DONE]"
    usage = json.loads(result["events"][-2][len("data: ") :])["usage"]
    assert usage["completion_tokens"] == 120
    row = server.usage_row(result["request_id"])
    assert row["termination"] == "length" and row["completion_tokens"] == 120
    # Logs are JSON lines; the request's lines carry its id, and no secret is ever logged.
    lines = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == result["request_id"] for line in lines)
    assert key.split(".")[1] not in server.stderr


def test_sigterm_grace_period_cuts_long_streams_and_bills_them(tmp_path: Path) -> None:
    server = LiveServer(
        tmp_path / "home", embedded_models="false", fake_models=FAKE, shutdown_grace_seconds="1"
    ).start()
    key = server.admin_key
    result: dict = {}

    def stream() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{server.base_url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "model": "fake-slow",
                    "messages": [{"role": "user", "content": "go"}],
                    "stream": True,
                },
                timeout=30,
            ) as response:
                result["request_id"] = response.headers["x-request-id"]
                for _ in response.iter_lines():
                    pass
        except httpx.HTTPError:
            pass

    def draining() -> bool:  # no longer ready, or already no longer accepting connections
        try:
            return httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 503
        except httpx.HTTPError:
            return True

    client = threading.Thread(target=stream)
    client.start()
    wait_until(lambda: "request_id" in result, what="the stream to start")
    server.send(signal.SIGTERM)
    wait_until(draining, what="the server to stop being ready")
    assert server.wait_exit(30) == 0
    client.join(30)
    row = server.usage_row(result["request_id"])
    assert row["termination"] == "gateway_shutdown"
    # One second of grace at 20 ms a token: cut off well before the 400 words.
    assert 10 < row["completion_tokens"] < 400
