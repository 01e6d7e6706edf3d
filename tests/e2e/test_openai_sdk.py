"""The official ``openai`` SDK, exactly as its users call it, against the embedded models."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

from tests.e2e.live import CHAT_MODEL, EMBEDDING_MODEL, LiveServer


@pytest.fixture(scope="module")
def client(live: LiveServer, admin_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=admin_key, max_retries=0)


@pytest.fixture()
def aclient(live: LiveServer, admin_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live.base_url}/v1", api_key=admin_key, max_retries=0)


def test_chat_completion_reports_engine_usage_and_records_it(
    client: openai.OpenAI, live: LiveServer
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name a colour."},
        ],
        max_tokens=12,
        seed=7,
        temperature=0,
        user="end-user-1",
    )
    reply = raw.parse()
    assert reply.id == raw.headers["x-request-id"]
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in {"stop", "length"}
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    row = live.usage_row(reply.id)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.prompt_tokens_details.cached_tokens,
    )
    assert row["model"] == CHAT_MODEL and row["endpoint"] == "chat.completions"
    assert row["termination"] == (
        "length" if reply.choices[0].finish_reason == "length" else "finished"
    )
    assert row["ttft_ms"] is not None and row["latency_ms"] >= row["ttft_ms"]


def test_max_tokens_ends_with_length(client: openai.OpenAI, live: LiveServer) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Write a long story about the sea."}],
        max_completion_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert live.usage_row(reply.id)["termination"] == "length"


def test_same_seed_same_answer(client: openai.OpenAI) -> None:
    def ask() -> str | None:
        return (
            client.chat.completions.create(
                model=CHAT_MODEL,
                messages=[{"role": "user", "content": "Tell me a fun fact."}],
                max_tokens=16,
                seed=42,
                temperature=0.9,
                top_p=0.9,
            )
            .choices[0]
            .message.content
        )

    assert ask() == ask()


def test_repeated_prompt_reports_cached_tokens(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Repeat after me: the quick brown fox jumps."}]
    client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=3)
    again = client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=3)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_stop_sequence_cuts_output(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        max_tokens=60,
        temperature=0,
        stop=["5"],
    )
    text = reply.choices[0].message.content or ""
    assert "5" not in text
    assert reply.choices[0].finish_reason == "stop"


def test_streaming_chat_with_usage(client: openai.OpenAI, live: LiveServer) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(finishes) == 1
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    usage = usage_chunks[0].usage
    row = live.usage_row(ids.pop())
    assert row["completion_tokens"] == usage.completion_tokens
    assert row["prompt_tokens"] == usage.prompt_tokens


def test_streaming_without_usage_sends_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            stream=True,
        )
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_json_object_response_format_is_valid_json(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with one key, color."}],
        response_format={"type": "json_object"},
        max_tokens=300,
        seed=3,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_json_schema_response_format_is_enforced(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
        max_tokens=200,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    person = json.loads(reply.choices[0].message.content or "")
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


async def test_async_client_streams_concurrently(aclient: openai.AsyncOpenAI) -> None:
    import asyncio

    async def one(i: int) -> tuple[str, int]:
        stream = await aclient.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": f"Say a word about the number {i}."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, tokens = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return text, tokens

    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert all(text and tokens == 8 for text, tokens in results)
    reply = await aclient.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert reply.usage is not None and reply.usage.completion_tokens <= 3
    await aclient.close()


def test_text_completion(client: openai.OpenAI, live: LiveServer) -> None:
    reply = client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 6
    assert live.usage_row(reply.id)["endpoint"] == "completions"


def test_text_completion_streaming(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=CHAT_MODEL,
            prompt="Once upon a time",
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embeddings_float_and_base64_agree(client: openai.OpenAI, live: LiveServer) -> None:
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today."]
    as_float = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    # The SDK asks for base64 by default and decodes it itself.
    as_base64 = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    assert [d.index for d in as_float.data] == [0, 1]
    for a, b in zip(as_float.data, as_base64.data, strict=True):
        assert len(a.embedding) == 384
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
        assert _norm(a.embedding) == pytest.approx(1.0, abs=1e-3)
    assert as_float.usage.prompt_tokens > 0
    single = client.embeddings.create(
        model=EMBEDDING_MODEL, input=texts[0], encoding_format="float"
    )
    assert single.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-5)
    assert live.usage_count() > 0


def test_embeddings_match_the_golden_set(client: openai.OpenAI) -> None:
    from pathlib import Path

    golden = json.loads((Path(__file__).parents[1] / "golden" / "minilm_golden.json").read_text())
    items = golden["items"]
    result = client.embeddings.create(
        model=EMBEDDING_MODEL, input=[i["text"] for i in items], encoding_format="float"
    )
    for item, got in zip(items, result.data, strict=True):
        cosine = sum(a * b for a, b in zip(item["embedding"], got.embedding, strict=True))
        assert cosine / (_norm(item["embedding"]) * _norm(got.embedding)) >= 0.999, item["text"]


def test_long_embedding_input_is_truncated_like_the_reference(client: openai.OpenAI) -> None:
    long_text = "word " * 1200  # far beyond the model's 256-token window
    reply = client.embeddings.create(
        model=EMBEDDING_MODEL, input=long_text, encoding_format="float"
    )
    assert reply.usage.prompt_tokens == 256
    assert len(reply.data[0].embedding) == 384


def test_embeddings_of_token_ids_are_the_models_own(client: openai.OpenAI) -> None:
    """OpenAI defines token arrays as the model's own token ids: all-MiniLM-L6-v2's
    WordPiece ids of a text ([CLS] ... [SEP]) embed exactly as the text does."""
    from tokenizers import Tokenizer

    from openmaas.engines.embedded import embedding_model_dir

    tokenizer = Tokenizer.from_file(str(embedding_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    text = "The cat sat on the mat."
    ids = tokenizer.encode(text).ids
    by_text = client.embeddings.create(model=EMBEDDING_MODEL, input=text, encoding_format="float")
    one = client.embeddings.create(model=EMBEDDING_MODEL, input=ids, encoding_format="float")
    many = client.embeddings.create(model=EMBEDDING_MODEL, input=[ids, ids[:3] + ids[-1:]])
    assert one.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=1e-5)
    assert many.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=1e-5)
    assert len(many.data) == 2 and one.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError) as outside:
        client.embeddings.create(model=EMBEDDING_MODEL, input=[[101, 46473, 102]])
    assert outside.value.param == "input"
    assert "token id 46473, outside the vocabulary" in outside.value.message


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {CHAT_MODEL, EMBEDDING_MODEL} <= set(models)
    model = client.models.retrieve(CHAT_MODEL)
    assert model.id == CHAT_MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_models_show_their_context_length(client: openai.OpenAI, http: httpx.Client) -> None:
    listed = {m.id: m.model_extra or {} for m in client.models.list()}
    assert listed[CHAT_MODEL]["context_length"] == 2048
    assert listed[EMBEDDING_MODEL]["context_length"] == 512
    one = client.models.retrieve(EMBEDDING_MODEL)
    assert (one.model_extra or {})["context_length"] == 512
    missing = http.get("/v1/models/no-such-model")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": missing.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert "no-such-model" in missing.json()["error"]["message"]


def test_n_choices_on_the_embedded_model_sum_their_usage(
    client: openai.OpenAI, live: LiveServer
) -> None:
    """n > 1 runs n generations in llama.cpp's slots; the usage counts every one (each
    reads the prompt) and is what is recorded and billed."""
    single = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8
    )
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=8,
        n=2,
        seed=1,
        temperature=1.0,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens == 2 * single.usage.prompt_tokens  # type: ignore[union-attr]
    assert usage.completion_tokens <= 16
    row = live.usage_row(reply.id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_n_choices_streamed(client: openai.OpenAI) -> None:
    texts: dict[int, str] = {0: "", 1: "", 2: ""}
    finish: dict[int, str | None] = {}
    usage = None
    for chunk in client.chat.completions.create(
        model="fake-echo",
        messages=[{"role": "user", "content": "count"}],
        n=3,
        stream=True,
        stream_options={"include_usage": True},
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert texts == {i: "one two three four five" for i in range(3)}
    assert finish == {0: "stop", 1: "stop", 2: "stop"}
    assert usage is not None and usage.completion_tokens == 15


def test_sdk_sees_typed_errors(client: openai.OpenAI, live: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(
            model="gpt-nonexistent", messages=[{"role": "user", "content": "x"}]
        )
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}], n=1000
        )
    assert bad.value.param == "n"
    bad_key = openai.OpenAI(
        base_url=f"{live.base_url}/v1", api_key="om0000000000000000.nope", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
