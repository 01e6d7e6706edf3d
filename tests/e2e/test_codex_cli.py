"""Codex CLI itself (npm ``@openai/codex``, the version ``scripts/codex/`` pins; installed as
``tests/e2e/npm_client.py`` says), headless, against the live server's Responses API:
``codex exec "Say hello"`` with a model provider whose ``base_url`` is the server and whose
key is an OpenMaaS key, exactly as docs/protocols/openai.md shows.

Its first request carries a developer prompt, a dozen function tools, a ``namespace`` of
tools and OpenAI's hosted ``web_search``, ~3,100 tokens in all: on the scripted
``fake-coder`` (no context limit) it answers and is metered; on the embedded model (2,048
tokens) Codex shows its "ran out of room in the model's context window" message, which it
gives for OpenAI's ``context_length_exceeded`` error.

Its environment is built from nothing but ``PATH``: a fresh ``HOME`` and ``CODEX_HOME``, the
key in a variable of its own, and a proxy on a closed loopback port for anything but
loopback, so the run is offline whatever it tries.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e import npm_client
from tests.e2e.live import CHAT_MODEL, FAKE_MODELS, LiveServer

MODEL = "fake-coder"
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def codex() -> Path:
    return npm_client.executable("codex")


def run(codex: Path, live: LiveServer, key: str, model: str, home: Path) -> tuple[int, str, str]:
    """``codex exec "Say hello"``: its exit status, last message and stderr."""
    (home / "codex").mkdir(parents=True)
    (home / "project").mkdir()
    last = home / "last-message.txt"
    provider = (
        f'model_providers.om={{name="OpenMaaS", base_url="{live.base_url}/v1", '
        'env_key="OPENMAAS_KEY", wire_api="responses"}'
    )
    done = subprocess.run(
        [
            str(codex),
            "exec",
            "--skip-git-repo-check",
            "--output-last-message",
            str(last),
            "-c",
            f"model={model}",
            "-c",
            "model_provider=om",
            "-c",
            provider,
            "Say hello",
        ],  # fmt: skip
        cwd=home / "project",
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "CODEX_HOME": str(home / "codex"),
            "OPENMAAS_KEY": key,
            **npm_client.OFFLINE,
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    message = last.read_text().strip() if last.exists() else ""
    return done.returncode, message, done.stderr


def test_codex_answers_on_a_model_with_the_context_for_it(
    codex: Path, live: LiveServer, tmp_path: Path
) -> None:
    key = live.new_key(name="codex")
    status, message, stderr = run(codex, live, key, MODEL, tmp_path / "home")
    assert status == 0, stderr[-3000:]
    assert message == FAKE_MODELS[MODEL]["text"], stderr[-3000:]
    records = live.rows("SELECT * FROM usage_records WHERE key_id = ?", key.split(".")[0])
    assert records and {(r["model"], r["endpoint"]) for r in records} == {(MODEL, "responses")}
    assert all(r["prompt_tokens"] > 2_048 for r in records)  # more than the small model holds


def test_codex_shows_the_context_error_of_a_small_model(
    codex: Path, live: LiveServer, tmp_path: Path
) -> None:
    key = live.new_key(name="codex-small")
    status, message, stderr = run(codex, live, key, CHAT_MODEL, tmp_path / "home")
    assert status != 0 and message == ""
    assert "ran out of room in the model's context window" in stderr, stderr[-3000:]
