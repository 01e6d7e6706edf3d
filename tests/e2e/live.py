"""A live OpenMaaS server in a subprocess, as users run it, for end-to-end tests: the one
harness every e2e test starts its servers with.

``LiveServer(home, **settings)`` runs ``python -m openmaas serve`` with ``OPENMAAS_<NAME>``
set from each setting (``catalog=`` writes a catalog file beside the data directory and
points ``OPENMAAS_CATALOG_FILE`` at it; ``logs=`` says where stdout and stderr go, for a
second server on the same data directory). ``start()`` returns once ``/readyz`` says ready;
``stop(sig)``, ``kill()`` (``kill -9``), ``restart(sig)``, ``send(sig)`` with
``wait_exit()`` drive its process; ``cli(...)`` runs the CLI on its data directory; its
database is read as another process would (``rows``, ``usage_row``, ``in_flight``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from tests.support.waiting import wait_until

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
    "fake-coder": {  # Claude Code e2e: a model with the context for its prompt, no tool calls
        "text": "Hello from OpenMaaS.",
        "reasoning": "The user says hello.",
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

    def __init__(
        self, home: Path, *, catalog: str | None = None, logs: Path | None = None, **settings: Any
    ) -> None:
        self.home = home
        self.port = free_port()
        if catalog is not None:
            path = home.parent / f"{home.name}.catalog.yaml"
            path.write_text(catalog)
            settings["catalog_file"] = str(path)
        self.env = {
            **os.environ,
            "OPENMAAS_HOME": str(home),
            "OPENMAAS_PORT": str(self.port),
            # One llama.cpp thread: with two on two cores, any other busy process makes
            # OpenMP's barriers stall a stream for seconds (a 120-token stream took 30 s).
            "OPENMAAS_THREADS": "1",
            **{
                f"OPENMAAS_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                for k, v in settings.items()
            },
        }
        self.process: subprocess.Popen[bytes] | None = None
        logs = logs or home.parent / home.name
        self.stdout_path = logs.parent / f"{logs.name}.stdout"
        self.stderr_path = logs.parent / f"{logs.name}.stderr"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.home / "admin-key").read_text().strip()

    @property
    def catalog_file(self) -> Path:
        return Path(self.env["OPENMAAS_CATALOG_FILE"])

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
        wait_until(self._ready, timeout=timeout, what="the server to be ready", interval=0.1)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.stderr[-4000:]}")
        try:
            body = httpx.get(f"{self.base_url}/readyz", timeout=2).json()
        except httpx.HTTPError:
            return False
        engines = {k: v for k, v in body["engines"].items() if k not in NEVER_READY}
        return body["database"] == "ok" and all(v == "ready" for v in engines.values())

    def send(self, sig: int) -> None:
        """Send ``sig`` and return at once (``wait_exit`` waits for the process)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """The exit status (``-N``: killed by signal N)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self) -> int:
        """``kill -9``: no draining, no shutdown code runs."""
        return self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> int:
        """Stop with ``sig`` and start again on the same data directory and port, ready;
        the exit status of the stopped process."""
        status = self.stop(sig)
        self.start()
        return status

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "openmaas", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def new_key(self, org: str = "default", name: str = "test") -> str:
        return self.cli("keys", "create", "--org", org, "--name", name).stdout.strip()

    def await_refused(self, key: str, timeout: float = 10.0) -> httpx.Response:
        """The answer to ``key`` once the server refuses it: a change made by another
        process reaches a running server within its change feed's poll."""
        headers = {"Authorization": f"Bearer {key}"}

        def refused() -> list[httpx.Response]:
            response = httpx.get(f"{self.base_url}/v1/models", headers=headers)
            return [response] if response.status_code == 401 else []

        [response] = wait_until(refused, timeout=timeout, what=f"the server to refuse {key}")
        return response

    def in_flight(self, model: str) -> int:
        """Requests the model's engine holds now, as ``/readyz`` reports them."""
        return int(httpx.get(f"{self.base_url}/readyz").json()["in_flight"][model])

    def rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """A query on the server's SQLite database, read as another process would."""
        with closing(sqlite3.connect(self.home / "openmaas.db")) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(query, args).fetchall()]

    def usage_row(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The usage record of a request (waiting for it when a stream was cut off)."""
        [row] = wait_until(
            lambda: self.rows("SELECT * FROM usage_records WHERE request_id = ?", request_id),
            timeout=timeout,
            what=f"the usage record of {request_id}",
        )
        return row

    def usage_count(self) -> int:
        return int(self.rows("SELECT count(*) AS n FROM usage_records")[0]["n"])
