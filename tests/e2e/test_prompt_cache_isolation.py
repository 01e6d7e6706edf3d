"""Issue 12's probe against a live server: ``cached_tokens`` never tells one organization
that another sent a prompt (engines/slots/prompt_cache.py)."""

from __future__ import annotations

from pathlib import Path

import openai

from openmaas.engines.embedded import chat_model_path
from tests.e2e.live import LiveServer

NOTE = "Confidential note for the board: the acquisition target is Globex Corporation. " * 3


def _cached(client: openai.OpenAI) -> int:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": NOTE}], max_tokens=1
    )
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    return reply.usage.prompt_tokens_details.cached_tokens or 0


def test_one_organization_cannot_learn_from_cached_tokens_what_another_sent(
    tmp_path: Path,
) -> None:
    models = {"chat": {"path": str(chat_model_path()), "slots": 2, "context": 1024}}
    server = LiveServer(tmp_path / "home", embedded_models="false", local_models=models).start()
    try:
        server.cli("orgs", "create", "rival")
        clients = {
            org: openai.OpenAI(
                base_url=f"{server.base_url}/v1", api_key=server.new_key(org), max_retries=0
            )
            for org in ("default", "rival")
        }
        _cached(clients["default"])
        assert _cached(clients["default"]) > 0  # the organization's own cache serves it
        assert _cached(clients["rival"]) == 0  # and says nothing to another
    finally:
        assert server.stop() == 0
