"""Claude Code (npm ``@anthropic-ai/claude-code``) as its users run it headless, for the
end-to-end tests: where it is installed, the environment that keeps it offline, and a
recorder that captures what it sends.

The version is the one ``scripts/claude-code/package-lock.json`` pins, installed as
``tests/e2e/npm_client.py`` says.

The environment is built from nothing but ``PATH`` (a developer's own ``ANTHROPIC_API_KEY``
or settings never leak in): a fresh ``HOME`` and config directory, the documented switches
that turn off telemetry, error reports, update checks and every other non-essential request,
and a proxy on a closed loopback port for anything but loopback, so the run is offline
whatever a later version tries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.e2e import npm_client

RUN_TIMEOUT_S = 300
WORKDIR = "/home/user/project"  # the working directory a sample names after anonymizing


def pinned_version() -> str:
    return npm_client.pinned("claude-code")[1]


def executable() -> Path:
    """The ``claude`` program of the pinned version, installed first when it is not."""
    return npm_client.executable("claude-code")


def environment(base_url: str, token: str, model: str, home: Path) -> dict[str, str]:
    """What ``claude`` runs with: only these variables."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": token,  # sent as Authorization: Bearer
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,  # its background requests, if it makes any
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",  # a refusal is shown at once, not retried for minutes
        **npm_client.OFFLINE,
    }


def run(
    claude: Path, base_url: str, token: str, model: str, home: Path, prompt: str = "Say hello"
) -> subprocess.CompletedProcess[str]:
    """``claude -p <prompt> --output-format json`` in an empty working directory."""
    workdir = home / "project"
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(claude), "-p", prompt, "--output-format", "json"],
        cwd=workdir,
        env=environment(base_url, token, model, home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


# -- what it sends ----------------------------------------------------------------------
@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


ANSWER = "Hello from the recorder."


def _answer(model: str) -> dict[str, Any]:
    """The message every request gets, as the non-streamed body."""
    return {
        "id": "msg_recorded",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": ANSWER}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


def _answer_frames(model: str) -> bytes:
    """The same message streamed."""
    message = _answer(model)
    start = message | {"content": [], "stop_reason": None}
    text = {"type": "text", "text": ""}
    delta = {"type": "text_delta", "text": ANSWER}
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": text},
        {"type": "content_block_delta", "index": 0, "delta": delta},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": stop, "usage": message["usage"]},
        {"type": "message_stop"},
    ]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


@contextmanager
def recorder() -> Iterator[tuple[str, list[Recorded]]]:
    """A stand-in Anthropic server on loopback that records every request and answers each
    message with ``ANSWER`` (streamed or not): its base URL and the list it fills."""
    seen: list[Recorded] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _record(self) -> bytes:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
            return body

        def _send(self, status: int, body: bytes = b"", kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._record()
            self._send(200)

        def do_GET(self) -> None:
            self._record()
            self._send(404, b'{"type":"error","error":{"type":"not_found_error","message":""}}')

        def do_POST(self) -> None:
            request = json.loads(self._record() or b"{}")
            if self.path.startswith("/v1/messages/count_tokens"):
                self._send(200, b'{"input_tokens": 1}')
            elif request.get("stream"):
                self._send(200, _answer_frames(request.get("model", "")), "text/event-stream")
            else:
                self._send(200, json.dumps(_answer(request.get("model", ""))).encode())

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- samples ----------------------------------------------------------------------------
SAMPLE_HEADERS = ("anthropic-beta", "anthropic-version", "content-type", "user-agent", "x-app")
TEXT_KEPT = 240  # characters of each long text a sample keeps
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_ID = re.compile(r"\b[0-9a-f]{64}\b")
_OS_VERSION = re.compile(r"OS Version: [^\n]*")


def anonymized(request: Recorded, home: Path) -> dict[str, Any]:
    """A request as a test fixture: the path, the headers that say what it speaks, and the
    body with ids zeroed, local paths and the OS version replaced and long texts trimmed
    (tool schemas keep their shapes: they are what a parser must take)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    kept = {name: headers[name] for name in SAMPLE_HEADERS if name in headers}
    kept["authorization"] = "Bearer <OpenMaaS key>"
    return {"path": request.path, "headers": kept, "body": _scrub(request.json(), home)}


def _scrub(value: Any, home: Path) -> Any:
    if isinstance(value, dict):
        return {
            k: _trim(_scrub(v, home)) if k in ("text", "description") else _scrub(v, home)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v, home) for v in value]
    if isinstance(value, str):
        value = value.replace(str(home / "project"), WORKDIR).replace(str(home), "/home/user")
        value = _UUID.sub("00000000-0000-0000-0000-000000000000", value)
        value = _OS_VERSION.sub("OS Version: Linux", value)
        return _HEX_ID.sub("0" * 64, value)
    return value


def _trim(value: Any) -> Any:
    if isinstance(value, str) and len(value) > TEXT_KEPT:
        return value[:TEXT_KEPT] + " [trimmed]"
    return value
