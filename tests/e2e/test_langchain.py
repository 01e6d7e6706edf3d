"""LangChain's OpenAI integration (``langchain-openai``), exactly as its users call it, against a
live server: ``OpenAIEmbeddings`` on the embedded embedding model, ``ChatOpenAI`` (invoke,
stream, ``bind_tools``, ``with_structured_output``) on scripted and embedded chat models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, SecretStr

from tests.e2e.live import CHAT_MODEL, EMBEDDING_MODEL, LiveServer


def _tiktoken_files() -> Path:
    """tiktoken fetches its encodings from the internet unless they are cached; litellm
    ships cl100k_base, the one OpenAIEmbeddings uses for a model name tiktoken does not
    know (found without importing litellm, whose import reaches for the network)."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"


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
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_tiktoken_files()))
    embeddings = _embeddings(live, admin_key)
    with pytest.raises(openai.BadRequestError) as refused:
        embeddings.embed_documents(["Stock markets fell sharply today."])  # "sharply": 46473
    assert refused.value.param == "input"
    assert "token id 46473, outside the vocabulary of 'all-minilm-l6-v2'" in refused.value.message
    assert "check_embedding_ctx_length=False" in refused.value.message


# -- ChatOpenAI -------------------------------------------------------------------------------
def _chat(live: LiveServer, admin_key: str, model: str, **options: object) -> ChatOpenAI:
    return ChatOpenAI(
        model=model,
        openai_api_base=f"{live.base_url}/v1",
        openai_api_key=SecretStr(admin_key),
        max_retries=0,
        **options,
    )


@tool
def get_weather(city: str, days: int = 1) -> str:
    """The weather in a city for the next days."""
    return f"Sunny in {city} for {days} days."


def test_chat_invoke_and_stream(live: LiveServer, admin_key: str) -> None:
    chat = _chat(live, admin_key, "fake-echo")
    reply = chat.invoke("Count to five.")
    assert reply.content == "one two three four five"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 5
    chunks = list(chat.stream("Count to five."))
    assert "".join(str(chunk.content) for chunk in chunks) == "one two three four five"


def test_chat_bind_tools_and_answer_from_the_result(live: LiveServer, admin_key: str) -> None:
    chat = _chat(live, admin_key, "fake-agent").bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    reply = chat.invoke([question])
    assert isinstance(reply, AIMessage)
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris", "days": 2}
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = _chat(live, admin_key, "fake-agent").invoke([question, reply, result])
    assert answer.content == "It is sunny."


def test_chat_bind_tools_on_the_embedded_model(live: LiveServer, admin_key: str) -> None:
    chat = _chat(live, admin_key, CHAT_MODEL, temperature=0).bind_tools(
        [get_weather], tool_choice="get_weather"
    )
    reply = chat.invoke("What is the weather in Paris?")
    assert isinstance(reply, AIMessage)
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


class Colour(BaseModel):
    name: Literal["red", "orange", "yellow", "green", "blue"]
    warm: bool


def test_chat_with_structured_output(live: LiveServer, admin_key: str) -> None:
    """with_structured_output's default method sends a json_schema response_format, which
    llama.cpp enforces with a grammar: the reply always parses into the model."""
    chat = _chat(live, admin_key, CHAT_MODEL, temperature=0, max_tokens=200)
    colour = chat.with_structured_output(Colour).invoke("Name a warm colour.")
    assert isinstance(colour, Colour)
