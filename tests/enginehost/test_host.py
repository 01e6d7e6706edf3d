"""The engine host serving the real embedded models to a worker over its Unix socket: the
same answers, usage, tool calls and token counts as the in-process engines, exact (never
estimated), and a worker that closes a stream stops generation in the host."""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from openmaas.catalog.builtin import build_engine, settings_context, settings_document
from openmaas.core.errors import PromptTooLong
from openmaas.core.types import (
    EmbeddingRequest,
    Finished,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceKind,
)
from openmaas.enginehost.app import EngineHost, create_host_app, local_engines
from openmaas.engines.base import Engine, EngineState
from openmaas.engines.embedded import CHAT_MODEL, EMBEDDING_MODEL, chat_model_path
from openmaas.engines.hosted import HostedEngine
from openmaas.engines.llamacpp import LlamaCppEngine
from openmaas.engines.prompt_bound import FALLBACK_TOKEN_BYTES, longest_token_bytes
from openmaas.server.enginehost import bind_socket
from openmaas.settings import Settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@dataclass
class Served:
    host: EngineHost
    hosted: dict[str, Engine]  # the worker's engines, through the socket
    reference: dict[str, Engine]  # the same models in-process, loaded apart
    socket: Path


async def _started(engines: dict[str, Engine]) -> dict[str, Engine]:
    await asyncio.gather(*(engine.start() for engine in engines.values()))
    return engines


@pytest.fixture()
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = Settings(
        home=tmp_path / "home", threads=1, embedding_threads=1, chat_slots=2, engine_queue=2
    )
    path = tmp_path / "e.sock"
    host = EngineHost(local_engines(settings))
    server = uvicorn.Server(uvicorn.Config(create_host_app(host), log_config=None, lifespan="on"))
    sock = bind_socket(path)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    # The worker builds its engines as the catalog does, through the host's socket.
    worker = settings.model_copy(update={"engine_socket": path})
    ctx = settings_context(worker)
    hosted = {spec.name: build_engine(spec, ctx) for spec in settings_document(worker).models}
    reference = local_engines(settings)
    try:
        await _started(hosted)  # ready once the host has loaded them
        await _started(reference)
        yield Served(host, hosted, reference, path)
    finally:
        for engine in [*hosted.values(), *reference.values()]:
            await engine.stop()
        server.should_exit = True
        await serving
        sock.close()


def _chat(text: str, request_id: str = "req-1", **kwargs: object) -> GenerationRequest:
    sampling = kwargs.pop("sampling", SamplingParams(max_tokens=24, temperature=0.0, seed=1))
    return GenerationRequest(
        request_id,
        CHAT_MODEL,
        messages=(Message(Role.USER, text),),
        sampling=sampling,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


async def _all(engine: Engine, request: GenerationRequest) -> list[StreamEvent]:
    stream = engine.stream(request)
    try:
        return [event async for event in stream]
    finally:
        await stream.aclose()


def _metric(engine: Engine, name: str) -> int:
    assert isinstance(engine, LlamaCppEngine)
    match = re.search(rf"^llamacpp:{name} (\d+)", engine.metrics_text(), re.M)
    assert match is not None
    return int(match.group(1))


def _predicted_total(engine: Engine) -> int:
    return _metric(engine, "tokens_predicted_total")


async def test_the_worker_gets_the_in_process_answer_and_exact_usage(served: Served) -> None:
    assert isinstance(served.hosted[CHAT_MODEL], HostedEngine)
    for request in (
        _chat("Name three fruits."),
        GenerationRequest(
            "req-2",
            CHAT_MODEL,
            prompt="The capital of France is",
            sampling=SamplingParams(max_tokens=8, temperature=0.0),
        ),
    ):
        through_host = await _all(served.hosted[CHAT_MODEL], request)
        in_process = await _all(served.reference[CHAT_MODEL], request)
        text = "".join(e.text for e in through_host if isinstance(e, TextDelta))
        assert text and text == "".join(e.text for e in in_process if isinstance(e, TextDelta))
        finished, expected = through_host[-1], in_process[-1]
        assert isinstance(finished, Finished) and isinstance(expected, Finished)
        assert finished.usage == expected.usage and not finished.usage.estimated
        assert finished.reason is expected.reason


async def test_tool_calls_are_the_in_process_engines(served: Served) -> None:
    request = _chat(
        "What is the weather in Paris?",
        tools=(WEATHER,),
        tool_choice=ToolChoice(ToolChoiceKind.REQUIRED),
        sampling=SamplingParams(max_tokens=60, temperature=0.0, seed=1),
    )
    through_host = await _all(served.hosted[CHAT_MODEL], request)
    in_process = await _all(served.reference[CHAT_MODEL], request)
    calls = [e for e in through_host if isinstance(e, ToolCallDelta)]
    assert calls and calls == [e for e in in_process if isinstance(e, ToolCallDelta)]
    assert calls[0].id is not None and request.request_id in calls[0].id
    assert isinstance(through_host[-1], Finished)
    assert through_host[-1] == in_process[-1]  # reason and usage


async def test_prompt_tokens_are_counted_by_the_host_engine(served: Served) -> None:
    for request in (
        _chat("Name three fruits."),
        _chat("Weather?", tools=(WEATHER,)),
        GenerationRequest("r", CHAT_MODEL, prompt="The capital of France is"),
    ):
        counted = await served.hosted[CHAT_MODEL].count_prompt_tokens(request)
        assert counted == await served.reference[CHAT_MODEL].count_prompt_tokens(request)


async def test_embeddings_and_their_usage_are_the_in_process_engines(served: Served) -> None:
    request = EmbeddingRequest("e", EMBEDDING_MODEL, ("a river", "ein Fluss", "x " * 400))
    through_host = await served.hosted[EMBEDDING_MODEL].embed(request)
    assert through_host == await served.reference[EMBEDDING_MODEL].embed(request)
    assert through_host.usage.prompt_tokens > 0 and not through_host.usage.estimated


async def test_an_error_keeps_its_class(served: Served) -> None:
    with pytest.raises(PromptTooLong, match="context") as info:
        await _all(served.hosted[CHAT_MODEL], _chat("hello " * 5000))
    assert info.value.prompt_tokens and info.value.context_length  # and the engine's counts
    assert info.value.prompt_tokens > info.value.context_length


async def test_a_prompt_too_many_bytes_for_the_context_is_refused_by_the_host_as_such(
    served: Served,
) -> None:
    """Refused before llama.cpp tokenizes it (engines/prompt_bound.py): the worker gets the
    same PromptTooLong, its message naming the bytes, and no token count (none was made)."""
    bound = 2048 * (longest_token_bytes(chat_model_path()) or FALLBACK_TOKEN_BYTES)
    request = _chat("a" * (bound + 1))
    with pytest.raises(PromptTooLong, match=f"{bound + 1} bytes") as info:
        await _all(served.hosted[CHAT_MODEL], request)
    assert info.value.context_length == 2048 and info.value.prompt_tokens is None
    assert info.value.param == "messages"
    with pytest.raises(PromptTooLong, match=f"{bound + 1} bytes"):
        await served.hosted[CHAT_MODEL].count_prompt_tokens(request)


async def test_closing_a_stream_stops_generation_in_the_host(served: Served) -> None:
    engine = served.host.engines[CHAT_MODEL]
    before = _predicted_total(engine)
    request = _chat(
        "Write a long essay about rivers.",
        sampling=SamplingParams(max_tokens=1500, ignore_eos=True),
    )
    stream = served.hosted[CHAT_MODEL].stream(request)
    seen = 0
    async for event in stream:
        seen += isinstance(event, TextDelta)
        if seen == 5:
            break
    await stream.aclose()
    # By then the host has stopped the engine and said what it counted.
    assert engine.capacity().in_flight == 0
    # llama.cpp publishes its counters once its slot is idle.
    await eventually(lambda: _metric(engine, "requests_processing") == 0, what="slot idle")
    generated = _predicted_total(engine) - before
    reported = stream.tracker.completion_tokens
    assert 5 <= reported <= generated <= reported + 2
    assert stream.tracker.prompt_tokens > 0 and not stream.tracker.estimated


async def test_the_socket_is_for_its_user_only(served: Served) -> None:
    assert stat.S_IMODE(served.socket.stat().st_mode) == 0o600


async def test_a_model_the_host_failed_to_load_fails_in_the_worker_with_its_reason(
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        embedded_models=False,
        local_models={"ghost": {"path": str(tmp_path / "none.gguf")}},
    )
    host = EngineHost(local_engines(settings))
    server = uvicorn.Server(uvicorn.Config(create_host_app(host), log_config=None))
    sock = bind_socket(tmp_path / "e.sock")
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    worker = settings.model_copy(update={"engine_socket": tmp_path / "e.sock"})
    [spec] = settings_document(worker).models
    engine = build_engine(spec, settings_context(worker))
    try:
        with pytest.raises(Exception):  # noqa: B017 - the host's reason is what matters
            await engine.start()
        health = engine.health()
        assert health.state is EngineState.FAILED and "none.gguf" in health.detail
    finally:
        await engine.stop()
        server.should_exit = True
        await serving
        sock.close()


async def test_a_request_through_the_host_leaves_nothing_for_the_garbage_collector(
    served: Served,
) -> None:
    """Neither the worker's side nor the host's leaves a reference cycle per request
    (``tests/server/test_reference_cycles.py`` says why that matters)."""
    import gc
    from collections import Counter

    engine = served.hosted[CHAT_MODEL]
    await _all(engine, _chat("Say hi.", "req-warm"))  # what is made once, made now
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for n in range(3):
            await _all(engine, _chat("Say hi.", f"req-{n}"))
        await served.hosted[EMBEDDING_MODEL].embed(
            EmbeddingRequest("req-embed", EMBEDDING_MODEL, ("hello", "world"))
        )
        gc.collect()
        ours = Counter(
            type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("openmaas.")
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == Counter()
