"""Local GGUF models from settings: which engine serves each."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaas.engines.base import ModelKind
from openmaas.engines.glm_format import GlmFormatEngine
from openmaas.engines.llamacpp import LlamaCppEngine
from openmaas.glm import GlmFamily
from openmaas.catalog.served import build_catalog
from openmaas.settings import Settings


def _settings(tmp_path: Path, **models: dict) -> Settings:
    return Settings(home=tmp_path, embedded_models=False, local_models=models)


def test_gguf_chat_format_is_served_by_llama_cpp_directly(tmp_path: Path) -> None:
    catalog = build_catalog(_settings(tmp_path, mine={"path": str(tmp_path / "m.gguf")}))
    model = catalog.get("mine")
    assert isinstance(model.engine, LlamaCppEngine) and model.kind is ModelKind.CHAT
    assert model.owned_by == "local" and model.context_length == 4096


@pytest.mark.parametrize("family", ["glm4-9b", "glm45", "glm47"])
def test_glm_formats_render_and_parse_in_openmaas(tmp_path: Path, family: str) -> None:
    spec = {"path": str(tmp_path / "glm.gguf"), "chat_format": family, "slots": 3}
    model = build_catalog(_settings(tmp_path, glm=spec)).get("glm")
    assert isinstance(model.engine, GlmFormatEngine)
    assert model.engine.family is GlmFamily(family)
    assert model.engine.capacity().slots == 3


def test_embedding_models_ignore_the_chat_format(tmp_path: Path) -> None:
    spec = {"path": str(tmp_path / "e.gguf"), "kind": "embedding", "pooling": "cls"}
    model = build_catalog(_settings(tmp_path, emb=spec)).get("emb")
    assert isinstance(model.engine, LlamaCppEngine) and model.kind is ModelKind.EMBEDDING


def test_unknown_chat_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chat_format"):
        _settings(tmp_path, bad={"path": "x.gguf", "chat_format": "llama9"})
