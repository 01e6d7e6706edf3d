"""The models the settings declare (embedded, local GGUF, fake, aliases): a built-in catalog
document, and which engine serves each."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaas.catalog.builtin import settings_document
from openmaas.catalog.document import CatalogRejected, parse_catalog
from openmaas.catalog.served import build_catalog, settings_model_names
from openmaas.core.errors import ConfigurationError
from openmaas.engines.base import ModelKind
from openmaas.engines.fake import FakeEngine
from openmaas.engines.glm_format import GlmFormatEngine
from openmaas.engines.llamacpp import LlamaCppEngine
from openmaas.glm import GlmFamily
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


def test_the_embedded_models_are_embedded_deployments_of_the_builtin_document(
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path, chat_slots=3, chat_context=1024, embedding_slots=1, threads=2,
        embedding_threads=1, engine_queue=5,
    )  # fmt: skip
    chat, embedding = settings_document(settings).models
    assert (chat.name, chat.kind, chat.context_length) == ("smollm2-135m-instruct", "chat", 1024)
    [deployment] = chat.deployments
    assert deployment.engine == "embedded" and deployment.slots == 3  # type: ignore[attr-defined]
    assert (embedding.name, embedding.dimensions) == ("all-minilm-l6-v2", 384)
    catalog = build_catalog(settings)
    served = catalog.get("smollm2-135m-instruct")
    assert isinstance(served.engine, LlamaCppEngine) and served.owned_by == "HuggingFaceTB"
    assert served.engine.capacity().slots == 3 and served.engine.capacity().queue == 5
    vectors = catalog.get("all-minilm-l6-v2")
    assert vectors.kind is ModelKind.EMBEDDING and vectors.owned_by == "sentence-transformers"
    assert (vectors.context_length, vectors.dimensions) == (512, 384)
    assert vectors.engine.capacity().slots == 1
    assert {m.source for m in catalog.list()} == {"settings"}


def test_fake_models_and_aliases_are_in_the_document_and_reserved(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        embedded_models=False,
        fake_models={"fake-echo": {"text": "hi", "slots": 2}},
        model_aliases={"claude-haiku-4-5": "fake-echo"},
    )
    [fake] = settings_document(settings).models
    assert fake.aliases == ["claude-haiku-4-5"] and fake.owned_by == "fake"
    catalog = build_catalog(settings)
    assert isinstance(catalog.get("fake-echo").engine, FakeEngine)
    assert catalog.resolve("claude-haiku-4-5") == "fake-echo"
    assert settings_model_names(settings) == {"fake-echo", "claude-haiku-4-5"}
    text = "models:\n  - {name: claude-haiku-4-5, deployments: [{id: x, engine: fake}]}\n"
    with pytest.raises(CatalogRejected, match="already a model the settings serve"):
        parse_catalog(text, reserved=settings_model_names(settings))


def test_a_model_the_settings_declare_wrongly_names_its_setting(tmp_path: Path) -> None:
    bad_script = Settings(home=tmp_path, embedded_models=False, fake_models={"f": {"slots": 0}})
    with pytest.raises(ConfigurationError, match=r"OPENMAAS_FAKE_MODELS: the model 'f': .*slots"):
        build_catalog(bad_script)
    clash = Settings(
        home=tmp_path,
        embedded_models=False,
        local_models={"same": {"path": str(tmp_path / "m.gguf")}},
        fake_models={"same": {}},
    )
    with pytest.raises(ConfigurationError, match="'same' is already taken"):
        build_catalog(clash)
    with pytest.raises(ConfigurationError, match="names no served model"):
        build_catalog(Settings(home=tmp_path, embedded_models=False, model_aliases={"a": "b"}))
