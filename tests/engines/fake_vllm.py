"""A stand-in for vLLM's CLI, for tests of the managed vLLM engine (a helper, not a test).

``python fake_vllm.py serve MODEL --host H --port P --served-model-name NAME [--api-key K]
[any other option]`` serves the test upstream (``tests/engines/upstream.py``) on H:P as
``vllm serve`` would: the OpenAI API under ``/v1`` (``/v1/models`` lists NAME), ``GET
/health``, and, when a key is given (``--api-key`` or ``VLLM_API_KEY``),
401 for ``/v1`` requests without ``Authorization: Bearer K``. Like vLLM it prints its
arguments at start, the key among them (the engine must keep it out of our logs).

Knobs, through the environment (the engine's ``VllmConfig.env``):

========================  ===================================================================
``FAKE_VLLM_RECORD``      a file: one JSON line appended per start (``pid``, ``argv``, ``env``:
                          the offline, telemetry and key variables, ``grandchild``: its pid)
``FAKE_VLLM_START_DELAY`` seconds to wait before listening (a model that loads slowly)
``FAKE_VLLM_EXIT``        exit at once with this code, after an error line
``FAKE_VLLM_FAIL_HEALTH`` ``1``: ``/health`` answers 503 for ever
``FAKE_VLLM_HEALTH_FILE`` a path: ``/health`` answers 503 while that file exists
``FAKE_VLLM_CRASH_AFTER`` N: completion request N + 1 kills the process (exit code 1) before
                          any byte is sent, or after ``FAKE_VLLM_CRASH_AFTER_TOKENS`` chunks
``FAKE_VLLM_IGNORE_TERM`` ``1``: SIGTERM is ignored (the engine must SIGKILL after its grace)
``FAKE_VLLM_GRANDCHILD``  ``1``: start a sleeping child process, like vLLM's engine core
``FAKE_VLLM_TEXT``        the answer's text; ``FAKE_VLLM_PROMPT_TOKENS``: the usage reported
``FAKE_VLLM_TOKEN_DELAY`` seconds between chunks
========================  ===================================================================

``command()`` is the ``VllmConfig.command`` that runs it; ``install(directory)`` writes an
executable named ``vllm`` there that runs it (for tests of finding ``vllm`` on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def command() -> tuple[str, ...]:
    """The ``VllmConfig.command`` that runs this stand-in with the current Python."""
    return (sys.executable, str(HERE))


def install(directory: Path) -> Path:
    """An executable ``directory/vllm`` that runs this stand-in."""
    path = directory / "vllm"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE}" "$@"\n')
    path.chmod(0o755)
    return path


def _env_float(name: str, default: float = 0.0) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vllm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+")
    serve.add_argument("--api-key")
    args, others = parser.parse_known_args(argv)
    key = args.api_key or os.environ.get("VLLM_API_KEY")
    names = args.served_model_name or [args.model]

    grandchild = None
    if os.environ.get("FAKE_VLLM_GRANDCHILD") == "1":
        grandchild = subprocess.Popen(
            # A worker that lives until it is killed: the engine must not leave it behind.
            [sys.executable, "-c", "import time; time.sleep(600)"],
            stdin=subprocess.DEVNULL,
        )
    record = os.environ.get("FAKE_VLLM_RECORD")
    if record:
        seen = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")
        entry = {
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "argv": argv,
            "env": {name: os.environ.get(name) for name in seen},
            "key_in_env": bool(os.environ.get("VLLM_API_KEY")),
            "openmaas_env": sorted(k for k in os.environ if k.startswith("OPENMAAS_")),
            "grandchild": grandchild.pid if grandchild else None,
        }
        with open(record, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
    # vLLM prints its non-default arguments at start, an API key among them.
    print(f"INFO fake vllm: args={vars(args)} others={others} api_key={key}", flush=True)

    code = _env_int("FAKE_VLLM_EXIT")
    if code is not None:
        print("ERROR fake vllm: scripted failure at start", file=sys.stderr, flush=True)
        return code
    ignore_term = os.environ.get("FAKE_VLLM_IGNORE_TERM") == "1"
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else (lambda *_: stopping.set()))
    if stopping.wait(_env_float("FAKE_VLLM_START_DELAY")):
        return 0

    sys.path.insert(0, str(ROOT))
    import uvicorn

    from tests.engines.upstream import Behaviour, Upstream

    behaviour = Behaviour(
        text=os.environ.get("FAKE_VLLM_TEXT", "Hello from fake vLLM."),
        prompt_tokens=_env_int("FAKE_VLLM_PROMPT_TOKENS") or 11,
        token_delay=_env_float("FAKE_VLLM_TOKEN_DELAY"),
    )
    upstream = Upstream(behaviour, model=names[0])
    app = _App(upstream, key, names[0])
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        interface="asgi3",
        lifespan="off",
        log_config=None,
        log_level="critical",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)  # signals stay ours
    thread.start()
    print(f"INFO fake vllm: serving {names[0]} on {args.host}:{args.port}", flush=True)
    while thread.is_alive() and not stopping.wait(0.05):
        pass
    server.should_exit = True
    thread.join(timeout=5)
    if grandchild is not None:
        grandchild.terminate()
    print("INFO fake vllm: shut down", flush=True)
    return 0 if server.started else 1


class _App:
    """/health and the key check in front of the test upstream's app."""

    def __init__(self, upstream: Any, key: str | None, name: str) -> None:
        self.upstream = upstream
        self.key = key
        self.name = name
        self.completions = 0
        self.crash_after = _env_int("FAKE_VLLM_CRASH_AFTER")
        self.crash_after_tokens = _env_int("FAKE_VLLM_CRASH_AFTER_TOKENS")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/health":
            health_file = os.environ.get("FAKE_VLLM_HEALTH_FILE")
            sick = os.environ.get("FAKE_VLLM_FAIL_HEALTH") == "1" or (
                health_file is not None and os.path.exists(health_file)
            )
            await _answer(send, 503 if sick else 200, b"", b"text/plain")
            return
        if self.key is not None and path.startswith("/v1"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {self.key}".encode():
                body = json.dumps({"error": {"message": "Unauthorized"}}).encode()
                await _answer(send, 401, body, b"application/json")
                return
        if scope["method"] == "POST" and path.endswith("completions"):
            self.completions += 1
            if self.crash_after is not None and self.completions > self.crash_after:
                send = self.crashing(send)
        await self.upstream._app(scope, receive, send)

    def crashing(self, send: Any) -> Any:
        """``send`` that kills the process before the first byte, or after N chunks."""
        chunks = self.crash_after_tokens
        sent = 0

        async def crash_send(message: dict[str, Any]) -> None:
            nonlocal sent
            if chunks is None or (message["type"] == "http.response.body" and sent >= chunks):
                print("ERROR fake vllm: scripted crash", flush=True)
                os._exit(1)
            await send(message)
            if message["type"] == "http.response.body":
                sent += 1

        return crash_send


async def _answer(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
