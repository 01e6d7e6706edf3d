"""A live OpenMaaS server in a subprocess, as users run it, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"

FAKE_MODELS: dict[str, dict[str, Any]] = {
    "fake-echo": {"text": "one two three four five"},
    "fake-slow": {"text": " ".join(f"w{i}" for i in range(400)), "token_delay": 0.02},
    "fake-busy": {"text": "busy", "first_token_delay": 3.0, "slots": 1, "queue": 0},
    "fake-loading": {"load_delay": 3600},
    "fake-fail-first": {"fail_before_first_token": True},
    "fake-fail-mid": {"text": "a b c d e f", "fail_after_tokens": 3},
    "fake-claude": {  # Anthropic Messages e2e: thinking, text, and tool calls when offered
        "text": "Sunny all day.",
        "reasoning": "The user wants weather.",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    },
    "fake-agent": {
        "text": "It is sunny.",
        "reasoning": "The user wants the weather.",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}],
    },
    "fake-glm": {  # Zhipu SDK e2e: reasoning_content, text, and tool calls when offered
        "text": "It is sunny in Paris.",
        "reasoning": "I should look up the weather.",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    },
}
NEVER_READY = {"fake-loading"}
# Claude model names, as Claude Code sends them, served by local models (OPENMAAS_MODEL_ALIASES).
MODEL_ALIASES = {"claude-sonnet-4-6": CHAT_MODEL, "claude-haiku-4-5": "fake-claude"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """``python -m openmaas serve`` with its own data directory and port."""

    def __init__(self, home: Path, **settings: Any) -> None:
        self.home = home
        self.port = free_port()
        self.env = {
            **os.environ,
            "OPENMAAS_HOME": str(home),
            "OPENMAAS_PORT": str(self.port),
            "OPENMAAS_THREADS": "2",
            **{f"OPENMAAS_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
               for k, v in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout_path = home.parent / f"{home.name}.stdout"
        self.stderr_path = home.parent / f"{home.name}.stderr"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.home / "admin-key").read_text().strip()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def start(self, wait: bool = True) -> LiveServer:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "openmaas", "serve"], env=self.env, stdout=out, stderr=err
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.stderr[-4000:]}")
            try:
                body = httpx.get(f"{self.base_url}/readyz", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            engines = {k: v for k, v in body["engines"].items() if k not in NEVER_READY}
            if body["database"] == "ok" and all(v == "ready" for v in engines.values()):
                return
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "openmaas", *args],
            env=self.env, capture_output=True, text=True, check=check, timeout=60,
        )

    def new_key(self, org: str = "default", name: str = "test") -> str:
        return self.cli("keys", "create", "--org", org, "--name", name).stdout.strip()

    def usage_row(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The usage record of a request (waiting for it when a stream was cut off)."""
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(self.home / "openmaas.db") as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute(
                    "SELECT * FROM usage_records WHERE request_id = ?", (request_id,)
                ).fetchone()
            if row is not None:
                return dict(row)
            if time.monotonic() > deadline:
                raise AssertionError(f"no usage record for {request_id}")
            time.sleep(0.05)

    def usage_count(self) -> int:
        with sqlite3.connect(self.home / "openmaas.db") as conn:
            return int(conn.execute("SELECT count(*) FROM usage_records").fetchone()[0])
