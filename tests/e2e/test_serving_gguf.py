"""Any GGUF path, served beside (or instead of) the embedded models."""

from __future__ import annotations

from pathlib import Path

import openai

from openmaas.engines.embedded import chat_model_path
from tests.e2e.live import LiveServer


def test_a_gguf_from_settings_is_served_and_metered(tmp_path: Path) -> None:
    models = {"my-model": {"path": str(chat_model_path()), "slots": 2, "context": 1024}}
    server = LiveServer(tmp_path / "home", embedded_models="false", local_models=models).start()
    try:
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key=server.admin_key, max_retries=0
        )
        assert [m.id for m in client.models.list()] == ["my-model"]
        reply = client.chat.completions.create(
            model="my-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.model == "my-model" and reply.choices[0].message.content
        row = server.usage_row(reply.id)
        assert (
            row["model"] == "my-model" and row["completion_tokens"] == reply.usage.completion_tokens
        )
    finally:
        assert server.stop() == 0
