"""The in-process llama.cpp engine with the real embedded chat model."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from openmaas.core.errors import EngineNotReady, EngineOverloaded, InvalidRequest, PromptTooLong
from openmaas.core.routing import BreakerConfig, BreakerState
from openmaas.core.types import (
    EmbeddingRequest,
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    RoutingHints,
    SamplingParams,
    TextDelta,
    Tool,
)
from openmaas.engines.base import EngineState, ModelKind
from openmaas.engines.bert_gguf import ensure_gguf
from openmaas.engines.embedded import (
    EMBEDDING_DIMENSIONS,
    EMBEDDING_MAX_TOKENS,
    chat_model_path,
    embedding_model_dir,
)
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.engines.llamacpp import (
    EMBED_BATCH,
    LlamaCppConfig,
    LlamaCppEngine,
    _raise_if_error,
    _schema_param,
)
from openmaas.engines.prompt_bound import FALLBACK_TOKEN_BYTES, longest_token_bytes
from openmaas.routing.router import Deployment, RoutedEngine, RouterConfig
from tests.engines.loop_watch import (
    ANSWERS_DURING,
    GUARD_SECONDS,
    Answers,
    keep_asking,
    watch_llamacpp,
)
from tests.support.waiting import eventually


@pytest.fixture()
async def engine() -> AsyncIterator[LlamaCppEngine]:
    eng = LlamaCppEngine(
        "smol",
        LlamaCppConfig(chat_model_path(), ModelKind.CHAT, slots=2, queue=1, threads=2),
    )
    await eng.start()
    yield eng
    await eng.stop()


def _request(text: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        "req", "smol", messages=(Message(Role.USER, text),), sampling=SamplingParams(**sampling)
    )


def _metric(engine: LlamaCppEngine, name: str) -> int:
    match = re.search(rf"^llamacpp:{name} (\d+)", engine.metrics_text(), re.M)
    assert match is not None, f"llama.cpp reports no {name}"
    return int(match.group(1))


def _predicted_total(engine: LlamaCppEngine) -> int:
    return _metric(engine, "tokens_predicted_total")


async def test_stream_yields_text_and_engine_counted_usage(engine: LlamaCppEngine) -> None:
    stream = engine.stream(_request("Name three fruits.", max_tokens=12, ignore_eos=True))
    events = [event async for event in stream]
    await stream.aclose()
    deltas = [e for e in events if isinstance(e, TextDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason is FinishReason.LENGTH
    assert finished.usage.completion_tokens == 12 and finished.usage.prompt_tokens > 5
    # The last text carries the running count; a final token that only begins a character
    # (half of an emoji's UTF-8 bytes) shows no text, so the count may end one short there.
    assert deltas and deltas[-1].completion_tokens in (11, 12)
    # Running counts never go backwards.
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)
    assert engine.capacity().in_flight == 0


async def test_closing_a_stream_stops_generation_in_llama_cpp(engine: LlamaCppEngine) -> None:
    before = _predicted_total(engine)
    request = _request("Write a long essay.", max_tokens=1000, ignore_eos=True)
    await _close_after_five_tokens_and_check_it_stopped(engine, request, before)


async def _close_after_five_tokens_and_check_it_stopped(
    engine: LlamaCppEngine, request: GenerationRequest, before: int
) -> None:
    """Read five tokens of ``request``, close the stream, and check that llama.cpp generated
    at most two tokens more than the engine reported (``before``: its count beforehand)."""
    stream = engine.stream(request)
    seen = 0
    async for event in stream:
        seen += isinstance(event, TextDelta)
        if seen == 5:
            break
    await stream.aclose()
    # llama.cpp counts a request's tokens when its slot is released: wait for that.
    await eventually(
        lambda: _metric(engine, "requests_processing") == 0, what="llama.cpp's slot idle"
    )
    generated = _predicted_total(engine) - before
    reported = stream.tracker.completion_tokens
    assert 5 <= reported <= generated <= reported + 2
    assert engine.capacity().in_flight == 0


async def test_closing_a_grammar_constrained_stream_stops_generation(
    engine: LlamaCppEngine,
) -> None:
    """Issue 12: the work of a request constrained by a JSON schema (an enum of the most
    entries the bounds allow) stops when its client leaves, as any other's does."""
    before = _predicted_total(engine)
    names = [f"Person number {i} of the list" for i in range(1000)]
    schema = {
        "type": "object",
        "properties": {"names": {"type": "array", "items": {"enum": names}}},
        "required": ["names"],
    }
    request = replace(
        _request("List many names.", max_tokens=1000, ignore_eos=True),
        response_format=ResponseFormat(ResponseFormatKind.JSON_SCHEMA, schema),
    )
    await _close_after_five_tokens_and_check_it_stopped(engine, request, before)


async def test_prompt_over_the_context_window_is_an_invalid_request(engine: LlamaCppEngine) -> None:
    stream = engine.stream(_request("hello " * 3000))
    with pytest.raises(PromptTooLong, match="context") as info:
        async for _ in stream:
            pass
    await stream.aclose()
    assert info.value.context_length == 2048  # llama.cpp's counts, for each protocol's words
    assert info.value.prompt_tokens is not None and info.value.prompt_tokens > 3000


class _Watched:
    """llama.cpp's server, with every call of its handlers noted."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._server, name)
        if name.startswith("handle_"):
            self.calls.append(name)
        return value


async def test_a_prompt_over_what_the_context_could_hold_is_refused_before_tokenizing(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: a prompt of megabytes was tokenized whole by llama.cpp (seconds of engine
    time, for generation and again for admission's count) before the context error came.
    One byte more than the context's 2048 tokens can hold at the longest token of the
    vocabulary is refused at once: llama.cpp's server and its listener are never asked."""
    bound = 2048 * (longest_token_bytes(chat_model_path()) or FALLBACK_TOKEN_BYTES)
    watched = _Watched(engine._server)
    listened: list[str] = []
    monkeypatch.setattr(engine, "_server", watched)
    monkeypatch.setattr(engine, "_listener", lambda path, *_: listened.append(path))
    chat = _request("a" * (bound + 1))
    completion = GenerationRequest("r", "smol", prompt="a" * (bound + 1))
    for request, param in ((chat, "messages"), (completion, "prompt")):
        with pytest.raises(PromptTooLong) as refused:
            engine.stream(request)
        assert refused.value.param == param and refused.value.context_length == 2048
        assert f"{bound + 1} bytes" in refused.value.message
        assert f"({bound} bytes" in refused.value.message
        with pytest.raises(PromptTooLong, match=f"{bound + 1} bytes"):
            await engine.count_prompt_tokens(request)
    assert watched.calls == [] and listened == []
    assert engine.capacity().in_flight == 0  # it never took a place in the queue


async def test_a_long_prompt_under_the_byte_bound_gets_llama_cpps_own_answer(
    engine: LlamaCppEngine,
) -> None:
    bound = 2048 * (longest_token_bytes(chat_model_path()) or FALLBACK_TOKEN_BYTES)
    text = ("hello " * bound)[: bound - 100]
    counted = await engine.count_prompt_tokens(_request(text))  # llama.cpp's own count
    assert counted > 2048
    stream = engine.stream(_request(text))
    with pytest.raises(PromptTooLong) as refused:
        async for _ in stream:
            pass
    await stream.aclose()
    assert refused.value.context_length == 2048  # llama.cpp's counts: it tokenized it
    assert refused.value.prompt_tokens == counted


async def test_capacity_is_slots_plus_queue(engine: LlamaCppEngine) -> None:
    streams = [engine.stream(_request("hi", max_tokens=2)) for _ in range(3)]
    with pytest.raises(EngineOverloaded):
        engine.stream(_request("hi"))
    for stream in streams:
        await stream.aclose()
    assert engine.capacity().in_flight == 0
    again = engine.stream(_request("hi", max_tokens=1))  # admitted again
    assert engine.capacity().in_flight == 1
    await again.aclose()  # closing a stream never iterated releases its place too
    assert engine.capacity().in_flight == 0


async def test_not_ready_until_loaded() -> None:
    eng = LlamaCppEngine("smol", LlamaCppConfig(chat_model_path(), ModelKind.CHAT, threads=2))
    assert eng.health().state is EngineState.LOADING
    with pytest.raises(EngineNotReady):
        eng.stream(_request("hi"))


async def test_missing_model_file_fails_loading_with_the_reason(tmp_path) -> None:
    eng = LlamaCppEngine("ghost", LlamaCppConfig(tmp_path / "none.gguf", ModelKind.CHAT))
    with pytest.raises(FileNotFoundError):
        await eng.start()
    health = eng.health()
    assert health.state is EngineState.FAILED and "none.gguf" in health.detail


async def test_counting_prompt_tokens_matches_what_generation_reads(
    engine: LlamaCppEngine,
) -> None:
    from openmaas.core.types import Tool

    tools = (
        Tool(
            "get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}}
        ),
    )
    for request in (
        _request("Name three fruits.", max_tokens=1),
        GenerationRequest(
            "r", "smol", prompt="The capital of France is", sampling=SamplingParams(max_tokens=1)
        ),
        GenerationRequest(
            "r",
            "smol",
            messages=(Message(Role.USER, "Weather?"),),
            tools=tools,
            sampling=SamplingParams(max_tokens=1),
        ),
    ):
        counted = await engine.count_prompt_tokens(request)
        stream = engine.stream(request)
        events = [event async for event in stream]
        await stream.aclose()
        finished = events[-1]
        assert isinstance(finished, Finished)
        assert counted == finished.usage.prompt_tokens


# -- heavy work off the event loop ------------------------------------------------------------


async def test_an_embedding_model_loads_embeds_and_unloads_while_requests_are_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = Answers()
    watch_llamacpp(monkeypatch, answers)
    minilm = embedding_model_dir()

    def converted() -> Path:
        path = ensure_gguf(minilm, tmp_path)
        answers.during("convert")
        return path

    engine = LlamaCppEngine(
        "minilm",
        LlamaCppConfig(
            converted,
            ModelKind.EMBEDDING,
            slots=1,
            queue=0,
            context_per_slot=512,
            threads=1,
            pooling="mean",
            tokenizer_path=minilm / "tokenizer.json",
            max_input_tokens=EMBEDDING_MAX_TOKENS,
        ),
    )
    base = FakeEngine("base", FakeScript(text="still here", first_token_delay=0.001))
    await base.start()
    done = asyncio.Event()
    asking = asyncio.create_task(keep_asking(lambda: base, answers, done))
    try:
        await engine.start()
        result = await engine.embed(EmbeddingRequest("e", "minilm", ("one text", "another")))
        await engine.stop()
    finally:
        done.set()
        texts = await asking
    assert [len(vector) for vector in result.vectors] == [EMBEDDING_DIMENSIONS] * 2
    for step in ("tokenizer load", "convert", "load", "encode", "unload"):
        assert answers.answered_during(step) >= ANSWERS_DURING, answers.report()
    assert set(texts) == {"still here"}


async def test_embedding_token_ids_are_the_models_own(tmp_path: Path) -> None:
    """Token arrays are read as the model's own ids: its tokenizer's ids of a text (special
    tokens included) embed as the text does; an id outside its vocabulary, or more ids than
    its context, is refused by name before llama.cpp sees them."""
    from tokenizers import Tokenizer

    engine = _minilm(tmp_path)
    tokenizer = Tokenizer.from_file(str(embedding_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128; the model's own ids of the text are these
    ids = tuple(tokenizer.encode("A cat.").ids)
    await engine.start()
    try:
        by_text = await engine.embed(EmbeddingRequest("t", "minilm", ("A cat.",)))
        by_ids = await engine.embed(EmbeddingRequest("i", "minilm", (ids, "A cat.")))
        with pytest.raises(InvalidRequest) as outside:
            await engine.embed(EmbeddingRequest("o", "minilm", ((101, 30522, 102),)))
        with pytest.raises(PromptTooLong):
            await engine.embed(EmbeddingRequest("l", "minilm", ((101,) + (1996,) * 511 + (102,),)))
    finally:
        await engine.stop()
    assert by_ids.vectors[0] == pytest.approx(by_text.vectors[0], abs=1e-6)
    assert by_ids.vectors[1] == pytest.approx(by_text.vectors[0], abs=1e-6)
    assert by_ids.usage.prompt_tokens == 2 * len(ids)
    assert "token id 30522, outside the vocabulary of 'minilm'" in outside.value.message
    assert outside.value.param == "input"


class _Held:
    """Servers built and freed under the test's control: a build waits for ``build``, a
    release (off the event loop's thread) for ``free``; ``freed_on`` lists the threads the
    releases ran on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import xllamacpp

        self.building, self.build = threading.Event(), threading.Event()
        self.freeing, self.free = threading.Event(), threading.Event()
        self.freed = threading.Event()
        self.freed_on: list[int] = []
        self.loop_thread = threading.get_ident()  # made on the event loop's thread
        real = xllamacpp.Server
        monkeypatch.setattr(xllamacpp, "Server", lambda params: _HeldServer(real, params, self))


class _HeldServer:
    def __init__(self, real: Any, params: Any, held: _Held) -> None:
        held.building.set()
        held.build.wait(GUARD_SECONDS)
        self._held = held
        self._real = real(params)

    def __getattr__(self, name: str) -> Any:
        if name == "_real":
            raise AttributeError(name)
        return getattr(self._real, name)

    def __del__(self) -> None:
        self._held.freeing.set()
        if threading.get_ident() != self._held.loop_thread:  # there, nothing could set it
            self._held.free.wait(GUARD_SECONDS)
        self._held.freed_on.append(threading.get_ident())
        self._held.freed.set()


def _smol() -> LlamaCppEngine:
    return LlamaCppEngine(
        "smol", LlamaCppConfig(chat_model_path(), ModelKind.CHAT, slots=1, threads=1)
    )


async def test_a_load_cancelled_midway_frees_the_server_it_was_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = _Held(monkeypatch)
    held.free.set()
    engine = _smol()
    loading = asyncio.create_task(engine.start())
    await asyncio.to_thread(held.building.wait, GUARD_SECONDS)
    loading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loading  # at once: llama.cpp's build goes on on its thread
    assert not held.freeing.is_set()
    held.build.set()
    assert await asyncio.to_thread(held.freed.wait, GUARD_SECONDS)  # freed once built
    assert threading.get_ident() not in held.freed_on
    await engine.stop()
    assert engine.health().state is EngineState.STOPPED


async def test_a_cancelled_stop_ends_with_the_server_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = _Held(monkeypatch)
    held.build.set()
    engine = _smol()
    await engine.start()
    stopping = asyncio.create_task(engine.stop())
    await asyncio.to_thread(held.freeing.wait, GUARD_SECONDS)
    stopping.cancel()
    await asyncio.sleep(0)  # the event loop runs on meanwhile ...
    assert not stopping.done()  # ... but the cancelled stop waits for the server to be freed
    held.free.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert held.freed.is_set() and threading.get_ident() not in held.freed_on
    await engine.stop()  # stopping again finds nothing left to free
    assert engine.health().state is EngineState.STOPPED


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


async def test_a_schema_llama_cpp_cannot_use_is_the_requests_fault_and_leaves_the_breaker_closed(
    engine: LlamaCppEngine,
) -> None:
    """Issue 12: ``"$ref": "#"`` (llama.cpp follows no such reference) and a tool schema 200
    levels deep (its converter's recursion limit) were 500 ``engine_error`` and opened the
    deployment's circuit, so every organization got 503. They are the request's fault: an
    ``InvalidRequest`` naming the schema, not counted by the breaker, and the next request
    (another organization's) is served at once. (The gateway refuses both before any engine
    sees them, serving/bounds.py; this is the engine's own answer, for whatever else it
    cannot use.)"""
    router = RoutedEngine(
        "smol",
        [Deployment("local", engine)],
        config=RouterConfig(breaker=BreakerConfig(failures=1, failure_rate=None)),
    )
    hello = _request("Say hi.", max_tokens=4)
    cyclic = replace(
        hello,
        response_format=ResponseFormat(
            ResponseFormatKind.JSON_SCHEMA, {"type": "object", "properties": {"a": {"$ref": "#"}}}
        ),
    )
    deep = replace(hello, tools=(Tool("lookup", "", _nested(200)),))
    for bad, param in ((cyclic, "response_format.json_schema.schema"), (deep, "tools")):
        with pytest.raises(InvalidRequest) as refused:
            async for _ in router.stream(bad):
                pass
        assert refused.value.param == param
        assert router.breaker_state("local") is BreakerState.CLOSED
    events = [event async for event in router.stream(hello)]
    assert isinstance(events[-1], Finished)


def test_a_grammar_llama_cpp_fails_to_parse_names_the_field_it_came_from() -> None:
    """Issue 12: llama.cpp's "failed to parse grammar" (a 400 it answers in the stream) was
    a 400 naming ``messages``; it names the schema the grammar came from, as the request
    bounds name it (tests/server/test_grammar_errors.py: over HTTP)."""
    answer = {
        "error": {"code": 400, "message": "Failed to initialize samplers: failed to parse grammar"}
    }
    schema = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, {"type": "object"})
    tool = Tool("lookup", "", {"type": "object"})
    asked = _request("hi")
    for request, field in (
        (replace(asked, response_format=schema), "response_format.json_schema.schema"),
        (replace(asked, tools=(tool,)), "tools"),
        (replace(asked, tools=(tool,), response_format=schema), "tools"),  # tools' grammar
        (
            replace(asked, response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT)),
            "response_format",
        ),
    ):
        with pytest.raises(InvalidRequest) as refused:
            _raise_if_error(answer, schema_param=_schema_param(request))
        assert refused.value.param == field
        assert refused.value.message.startswith(f"{field}: ")
    with pytest.raises(InvalidRequest) as plain:  # no schema: the request's other fault
        _raise_if_error(answer, schema_param=_schema_param(asked))
    assert plain.value.param == "messages"


async def _cached_tokens(engine: LlamaCppEngine, scope: str, text: str) -> int:
    request = replace(_request(text, max_tokens=1), routing=RoutingHints(cache_scope=scope))
    events = [event async for event in engine.stream(request)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    return finished.usage.cached_tokens


async def test_one_organizations_prompt_cache_is_not_anothers(engine: LlamaCppEngine) -> None:
    """Issue 12's probe: org A sends a prompt twice (the second reads it from the cache),
    then org B sends the same prompt: B's usage shows no cached tokens, so B cannot learn
    that A sent it, not even once every slot holds the prompt."""
    note = "Confidential note: the acquisition target is Globex Corporation. " * 4
    await _cached_tokens(engine, "org-a", note)
    assert await _cached_tokens(engine, "org-a", note) > 0
    assert await _cached_tokens(engine, "org-b", note) == 0
    assert await _cached_tokens(engine, "org-b", note) > 0  # B's own cache serves B
    # Both slots hold the note now; a third organization gets one of them, not its cache.
    assert await _cached_tokens(engine, "org-c", note) == 0


def _minilm(tmp_path: Path) -> LlamaCppEngine:
    minilm = embedding_model_dir()
    return LlamaCppEngine(
        "minilm",
        LlamaCppConfig(
            lambda: ensure_gguf(minilm, tmp_path),
            ModelKind.EMBEDDING,
            slots=1,
            queue=0,
            context_per_slot=512,
            threads=1,
            pooling="mean",
            tokenizer_path=minilm / "tokenizer.json",
            max_input_tokens=EMBEDDING_MAX_TOKENS,
        ),
    )


class _GatedServer:
    """llama.cpp's server, its embedding calls counted; the first one waits for ``open``."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.calls = 0
        self.inputs = 0  # inputs embedded
        self.entered = threading.Event()
        self.open = threading.Event()

    def handle_embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        self.inputs += len(body["input"])
        self.entered.set()
        self.open.wait()
        return self._server.handle_embeddings(body)  # type: ignore[no-any-return]


async def test_a_large_embedding_request_is_embedded_in_batches_in_order(tmp_path: Path) -> None:
    engine = _minilm(tmp_path)
    await engine.start()
    try:
        texts = tuple(f"sentence number {i} about cats" for i in range(EMBED_BATCH * 2 + 5))
        whole = await engine.embed(EmbeddingRequest("all", "minilm", texts))
        for i in (0, EMBED_BATCH, len(texts) - 1):  # one of each batch, where it belongs
            alone = await engine.embed(EmbeddingRequest(f"one-{i}", "minilm", (texts[i],)))
            assert whole.vectors[i] == pytest.approx(alone.vectors[0], abs=1e-4)
        assert len(whole.vectors) == len(texts)
        assert whole.usage.prompt_tokens == 7 * len(texts)  # [CLS] 5 words [SEP], each
    finally:
        await engine.stop()


async def test_a_cancelled_embedding_request_starts_no_further_batch(tmp_path: Path) -> None:
    """Issue 12: 5,000 inputs went on being embedded 25 s after the client left, while the
    engine reported nothing in flight. Now the batch in progress ends, no other starts, and
    only then is the slot free."""
    engine = _minilm(tmp_path)
    await engine.start()
    gated = _GatedServer(engine._server)
    engine._server = gated
    try:
        texts = tuple(f"word {i}" for i in range(EMBED_BATCH * 10))
        task = asyncio.create_task(engine.embed(EmbeddingRequest("big", "minilm", texts)))
        await eventually(gated.entered.is_set, what="the first batch in llama.cpp")
        task.cancel()
        assert engine.capacity().in_flight == 1  # the batch in progress still holds the slot
        gated.open.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gated.calls == 1 and gated.inputs == EMBED_BATCH  # of 10 batches
        assert engine.capacity().in_flight == 0
        ok = await engine.embed(EmbeddingRequest("next", "minilm", ("hello",)))
        assert len(ok.vectors) == 1
    finally:
        engine._server = gated._server
        await engine.stop()
