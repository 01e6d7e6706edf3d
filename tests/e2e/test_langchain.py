"""LangChain's OpenAI integration (``langchain-openai``), exactly as its users call it, against a
live server: ``OpenAIEmbeddings`` on the embedded embedding model, ``ChatOpenAI`` (invoke,
stream, ``bind_tools``, ``with_structured_output``) on scripted and embedded chat models."""

from __future__ import annotations

from pathlib import Path

import litellm
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr

from tests.e2e.live import EMBEDDING_MODEL, LiveServer

# tiktoken fetches its encodings from the internet unless they are cached; litellm ships
# cl100k_base, the one OpenAIEmbeddings uses for a model name tiktoken does not know.
TIKTOKEN_FILES = Path(litellm.__file__).parent / "litellm_core_utils" / "tokenizers"


def _embeddings(live: LiveServer, admin_key: str, **options: object) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(
        model=EMBEDDING_MODEL,
        openai_api_base=f"{live.base_url}/v1",
        openai_api_key=SecretStr(admin_key),
        max_retries=0,
        **options,
    )


def test_openai_embeddings_sending_text(live: LiveServer, admin_key: str) -> None:
    """``check_embedding_ctx_length=False``, as LangChain documents for OpenAI-compatible
    servers: texts are sent as they are and embedded by the model's own tokenizer."""
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today."]
    embeddings = _embeddings(live, admin_key, check_embedding_ctx_length=False)
    documents = embeddings.embed_documents(texts)
    query = embeddings.embed_query(texts[0])
    direct = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=admin_key).embeddings.create(
        model=EMBEDDING_MODEL, input=texts, encoding_format="float"
    )
    assert [len(v) for v in documents] == [384, 384]
    for got, want in zip(documents, direct.data, strict=True):
        assert got == pytest.approx(want.embedding, abs=1e-5)
    assert query == pytest.approx(documents[0], abs=1e-5)


def test_openai_embeddings_by_default_send_tiktoken_ids_which_are_not_this_models(
    live: LiveServer, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default OpenAIEmbeddings tokenizes with tiktoken (cl100k_base for a model it does
    not know) and sends token arrays. OpenAI defines those as the model's own token ids, and
    they are read as such: an id outside all-MiniLM-L6-v2's vocabulary is refused with a
    400 that names it and the option that sends text instead."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_FILES))
    embeddings = _embeddings(live, admin_key)
    with pytest.raises(openai.BadRequestError) as refused:
        embeddings.embed_documents(["Stock markets fell sharply today."])  # "sharply": 46473
    assert refused.value.param == "input"
    assert "token id 46473, outside the vocabulary of 'all-minilm-l6-v2'" in refused.value.message
    assert "check_embedding_ctx_length=False" in refused.value.message
