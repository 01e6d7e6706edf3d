"""In-process llama.cpp through ``xllamacpp``: llama.cpp's own C++ server, without HTTP.

xllamacpp's handlers block until the request ends and report stream chunks through a
callback on the calling thread, so each request runs on a worker thread of this engine's
own pool and hands chunks to the event loop. The callback's return value is llama.cpp's
"stop" signal: returning True cancels the task inside llama.cpp at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmaas.core.embeddings import check_token_ids
from openmaas.core.errors import EngineFailure, InvalidRequest, OpenMaaSError, PromptTooLong
from openmaas.core.types import (
    EmbeddingInput,
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationRequest,
    ResponseFormatKind,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.engines import generic_tools
from openmaas.engines.base import EngineStream, ModelKind, SlotEngine, UsageTracker
from openmaas.engines.prompt_bound import FALLBACK_TOKEN_BYTES, PromptBound, longest_token_bytes
from openmaas.engines.slots.prompt_cache import SlotScopes
from openmaas.engines.upstream.openai_wire import sampling_fields

# How long closing a stream waits for llama.cpp to confirm the stop (and its last count).
_STOP_WAIT_SECONDS = 2.0
EMBED_BATCH = 32
"""Inputs of one embeddings request given to llama.cpp at a time: a request whose client
left stops after the batch in progress (at most this many inputs of the model's context)."""
_DONE = object()
# Before a server is freed: how often (and how far apart) its listener is asked to answer.
_LISTENER_TRIES = 200
_LISTENER_RETRY_SECONDS = 0.01
_UNCONSTRAINED = (
    "The tools' parameter schemas could not be turned into a grammar for this model; "
    "check that they are valid JSON Schema."
)


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    # A path, or a function that produces one at load time (e.g. converting weights first).
    model_path: Path | Callable[[], Path]
    kind: ModelKind
    slots: int = 4
    queue: int = 64
    context_per_slot: int = 2048
    threads: int = 2
    pooling: str | None = None  # embeddings: "mean", "cls", ...
    # Embeddings: tokenize with this tokenizer.json and cut to max_input_tokens, as the
    # reference implementation does (llama.cpp itself refuses over-long inputs instead).
    tokenizer_path: Path | None = None
    max_input_tokens: int | None = None


class LlamaCppEngine(SlotEngine):
    many_choices = True  # n > 1: n generations in llama.cpp's parallel slots

    def __init__(self, model: str, config: LlamaCppConfig) -> None:
        super().__init__(model, config.kind, slots=config.slots, queue=config.queue)
        self._config = config
        self._server: Any = None
        self._tokenizer: Any = None
        self._vocabulary: int | None = None  # embedding models: the vocabulary's size
        self._prompt_bound: PromptBound | None = None  # generation: read at load
        self._listener_key = secrets.token_urlsafe(32)
        self._scopes = SlotScopes(config.slots)  # whose prompt each slot's cache holds
        # A thread per running request (at most ``slots``: the others wait in the fair queue,
        # engines/slots/fair.py), and for token counts, which do not queue.
        self._pool = ThreadPoolExecutor(
            max_workers=config.slots + config.queue, thread_name_prefix=f"llamacpp-{model}"
        )

    # -- lifecycle ---------------------------------------------------------------------
    # Loading (converting weights, reading a tokenizer, building llama.cpp's server) and
    # freeing (its destructor joins llama.cpp's threads) run on threads, never on the event
    # loop: the other models keep answering meanwhile.
    async def _load(self) -> None:
        cfg = self._config
        if cfg.tokenizer_path is not None:  # first: a bad tokenizer leaves no server behind
            self._tokenizer = await asyncio.to_thread(
                _load_tokenizer, cfg.tokenizer_path, cfg.max_input_tokens
            )
        built: list[Any] = []  # the server, until this coroutine takes it
        building = asyncio.get_running_loop().run_in_executor(self._pool, self._build_into, built)
        try:
            await asyncio.shield(building)
        except asyncio.CancelledError:
            # llama.cpp cannot stop half-way: free what it builds once it is built.
            building.add_done_callback(lambda _: _free_in_thread(built, self.model))
            raise
        self._server = built.pop()

    def _build_into(self, built: list[Any]) -> None:
        cfg = self._config
        path = cfg.model_path() if callable(cfg.model_path) else cfg.model_path
        server = self._create_server(path)
        built.append(server)
        if cfg.kind is ModelKind.EMBEDDING:  # what token-id inputs are checked by
            self._vocabulary = self._read_vocabulary(server)
        else:  # what prompts are refused by before llama.cpp tokenizes them
            token_bytes = longest_token_bytes(path) or FALLBACK_TOKEN_BYTES
            self._prompt_bound = PromptBound(cfg.context_per_slot, token_bytes)

    def _read_vocabulary(self, server: Any) -> int | None:
        """The model's vocabulary size, as llama.cpp reads it from the GGUF (None when its
        listener does not say)."""
        try:
            _wait_listening(server)
            meta = self._listener("/v1/models", None, server)["data"][0]["meta"]
            return int(meta["n_vocab"])
        except (EngineFailure, OSError, KeyError, IndexError, TypeError, ValueError):
            return None

    def _create_server(self, path: Path) -> Any:
        import xllamacpp

        cfg = self._config
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = cfg.slots
        params.n_ctx = cfg.context_per_slot * cfg.slots
        params.cpuparams.n_threads = cfg.threads
        params.cpuparams_batch.n_threads = cfg.threads
        params.verbosity = -1
        params.endpoint_metrics = True
        # No prompt cache shared by the slots (llama.cpp restores a slot from the one in RAM
        # that best matches a new prompt, whoever sent it): each slot keeps its own, and
        # SlotScopes keeps one organization's prefixes from another's requests.
        params.cache_ram_mib = 0
        # xllamacpp also opens an HTTP listener on loopback; lock it with a key only this
        # engine knows (it uses the listener to count tokens).
        params.api_keys = [self._listener_key]
        if cfg.kind is ModelKind.EMBEDDING:
            params.embedding = True
            params.n_batch = params.n_ubatch = cfg.context_per_slot
            if cfg.pooling:
                params.pooling_type = getattr(
                    xllamacpp.llama_pooling_type, f"LLAMA_POOLING_TYPE_{cfg.pooling.upper()}"
                )
        return xllamacpp.Server(params)

    async def _unload(self) -> None:
        """Free llama.cpp's server on a thread of its own; its last reference is dropped
        there, so the destructor runs there. A cancelled stop still ends freed: the
        cancellation is raised once the server is gone."""
        try:
            if self._server is not None:
                held, self._server = [self._server], None
                await _finish(_free_in_thread(held, self.model))
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def metrics_text(self) -> str:
        """llama.cpp's own Prometheus metrics (tokens predicted, requests processing ...)."""
        raw = self._server.handle_metrics() if self._server is not None else b""
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    # -- generation --------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> EngineStream:
        """As every slot engine's, after refusing a prompt too long to fit the context
        before it waits for a slot or llama.cpp tokenizes it (engines/prompt_bound.py)."""
        self._check_prompt_bytes(request)
        return super().stream(request)

    def _check_prompt_bytes(self, request: GenerationRequest) -> None:
        if self._prompt_bound is None:  # not loaded: the caller's next step says so
            return
        if request.messages is None:
            self._prompt_bound.check([request.prompt or ""], param="prompt")
        else:
            contents = [message["content"] for message in _llama_messages(request)]
            self._prompt_bound.check(contents, param="messages")

    async def _stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        raw = self._raw_stream(request, tracker)
        if not request.wants_tools:
            async for event in raw:
                yield event
            return
        # The reply is constrained JSON (engines/generic_tools.py): read it whole, then say
        # what it is, an answer or tool calls.
        parts: list[str] = []
        try:
            async for event in raw:
                if isinstance(event, TextDelta):
                    if not parts and not event.text.startswith("{"):
                        # llama.cpp samples without a grammar it could not build
                        raise InvalidRequest(_UNCONSTRAINED, param="tools")
                    parts.append(event.text)
                    continue
                assert isinstance(event, Finished)
                # Cut short (max_tokens), the reply is the part that parsed, and the
                # engine's own finish reason says so.
                reply = generic_tools.parse_reply("".join(parts), request.request_id)
                count = event.usage.completion_tokens
                if reply.content:
                    yield TextDelta(reply.content, count, event.usage.prompt_tokens)
                for index, call in enumerate(reply.calls):
                    yield ToolCallDelta(index, call.id, call.name, call.arguments, count)
                called = reply.calls and reply.complete
                yield Finished(FinishReason.TOOL_CALLS if called else event.reason, event.usage)
        finally:
            await raw.aclose()

    async def _raw_stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncGenerator[StreamEvent, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        body = _llama_body(request)
        # The slot is chosen here, not by llama.cpp: a prefix another organization's prompt
        # left in a slot is never reused (engines/slots/prompt_cache.py). This request holds one
        # of the slots (engines/slots/fair.py): one is free.
        prompt = json.dumps(body.get("messages", body.get("prompt")), ensure_ascii=False)
        slot = self._scopes.take(request.routing.cache_scope, prompt)
        body["id_slot"] = slot.slot
        body["cache_prompt"] = slot.reuse_cache
        handler = (
            self._server.handle_chat_completions
            if request.is_chat
            else self._server.handle_completions
        )

        def on_chunk(chunk: dict[str, Any]) -> bool:
            _track(chunk, tracker)
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return stop.is_set()

        def run() -> None:
            try:
                handler(body, on_chunk)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop below
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        worker = loop.run_in_executor(self._pool, run)
        reason: FinishReason | None = None
        usage: Usage | None = None
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise _failure(item, request) from item
                _raise_if_error(item, schema_param=_schema_param(request))
                choice = item["choices"][0] if item.get("choices") else None
                if choice is not None:
                    text = _choice_text(choice)
                    if text:
                        yield _text_delta(text, item.get("timings"), tracker)
                    if choice.get("finish_reason"):
                        reason = _finish_reason(choice["finish_reason"])
                if item.get("usage"):
                    usage = _usage(item["usage"], tracker)
            if reason is None:
                raise EngineFailure("llama.cpp ended the stream without a finish reason")
            yield Finished(reason, usage or tracker.snapshot())
        finally:
            stop.set()
            try:
                if not worker.done():
                    # Let llama.cpp confirm the stop so the tracker holds its final count.
                    await asyncio.wait({worker}, timeout=_STOP_WAIT_SECONDS)
            finally:
                self._scopes.give_back(slot.slot)

    async def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        self._check_prompt_bytes(request)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._count_blocking, request)

    def _count_blocking(self, request: GenerationRequest) -> int:
        """llama.cpp's own template and tokenizer, through its loopback listener (the
        in-process API has no tokenize call); the listener's key is ours alone."""
        prompt = request.prompt or ""
        if request.messages is not None:
            prompt = self._listener("/apply-template", {"messages": _llama_messages(request)})[
                "prompt"
            ]
        tokens = self._listener(
            "/tokenize", {"content": prompt, "add_special": True, "parse_special": True}
        )["tokens"]
        return len(tokens)

    def _listener(
        self, path: str, body: dict[str, Any] | None, server: Any = None
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` of the (loopback) listener of ``server`` (this engine's
        by default), GET when ``body`` is None."""
        address = urllib.parse.urlsplit((server or self._server).listening_address)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        try:
            connection.request(
                "GET" if body is None else "POST",
                path,
                None if body is None else json.dumps(body),
                {
                    "Authorization": f"Bearer {self._listener_key}",
                    "Content-Type": "application/json",
                },
            )
            response = connection.getresponse()
            payload = json.loads(response.read())
        finally:
            connection.close()
        if response.status != 200:
            _raise_if_error(payload)
            raise EngineFailure(f"llama.cpp {path} answered {response.status}")
        return payload  # type: ignore[no-any-return]

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        check_token_ids(request.inputs, self.model, self._vocabulary, self._config.context_per_slot)
        loop = asyncio.get_running_loop()
        server, items = self._server, list(request.inputs)
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        # EMBED_BATCH inputs at a time, each batch on a worker thread: a request whose client
        # left starts no further batch, and gives its slot back once llama.cpp has ended the
        # one in progress (the engine is then really free).
        for start in range(0, len(items), EMBED_BATCH):
            work = loop.run_in_executor(
                self._pool, self._embed_blocking, server, items[start : start + EMBED_BATCH]
            )
            try:
                result = await asyncio.shield(work)
            except asyncio.CancelledError:
                await _finish(asyncio.ensure_future(_settled(work)))
                raise
            _raise_if_error(result, param="input")
            data += ({**item, "index": start + int(item["index"])} for item in result["data"])
            prompt_tokens += int(result.get("usage", {}).get("prompt_tokens", 0))
        data.sort(key=lambda item: item["index"])
        vectors = tuple(tuple(item["embedding"]) for item in data)
        return EmbeddingResult(vectors, Usage(prompt_tokens=prompt_tokens))

    def _embed_blocking(self, server: Any, items: list[EmbeddingInput]) -> dict[str, Any]:
        """Tokenize the texts (when a tokenizer is configured) and embed, on a worker thread.
        llama.cpp takes token ids as they are (no special tokens added again)."""
        inputs: list[Any] = [item if isinstance(item, str) else list(item) for item in items]
        texts = [item for item in items if isinstance(item, str)]
        if self._tokenizer is not None and texts:
            encoded = iter(self._tokenizer.encode_batch(texts))
            inputs = [next(encoded).ids if isinstance(item, str) else item for item in inputs]
        result: dict[str, Any] = server.handle_embeddings({"input": inputs, "model": self.model})
        return result


def _load_tokenizer(path: Path, max_tokens: int | None) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    if max_tokens is not None:
        tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def _free_in_thread(held: list[Any], model: str) -> asyncio.Future[None]:
    """Drop the server in ``held`` (emptied) on a new daemon thread; done when it is freed.
    The caller must keep no other reference to it. A daemon thread: a destructor that never
    returns cannot keep the process from exiting."""
    loop = asyncio.get_running_loop()
    freed: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not freed.done():
            freed.set_result(None)

    def run() -> None:
        try:
            with contextlib.suppress(Exception):  # best effort: it is freed all the same
                _wait_listening(held[0])
            held.clear()  # the last reference: llama.cpp's destructor runs here
        finally:
            try:
                loop.call_soon_threadsafe(done)
            except RuntimeError:  # the event loop is closed: nobody waits any more
                pass

    threading.Thread(target=run, name=f"llamacpp-free-{model}", daemon=True).start()
    return freed


def _wait_listening(server: Any) -> None:
    """Wait until the server's loopback listener answers: freeing a server whose listener
    has not started yet (right after it was built) hangs in its destructor."""
    address = urllib.parse.urlsplit(server.listening_address)
    for _ in range(_LISTENER_TRIES):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=1)
        try:
            connection.request("GET", "/health")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(_LISTENER_RETRY_SECONDS)
        finally:
            connection.close()


async def _settled(future: asyncio.Future[Any]) -> None:
    """Done when ``future`` is, whatever its outcome (for ``_finish``)."""
    await asyncio.wait({future})


async def _finish(future: asyncio.Future[None]) -> None:
    """Await ``future`` to its end even if cancelled meanwhile; then raise the cancellation."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _llama_body(request: GenerationRequest) -> dict[str, Any]:
    sampling = request.sampling
    body: dict[str, Any] = {
        "stream": True,
        "stream_options": {"include_usage": True},
        "timings_per_token": True,
        "cache_prompt": True,
    }
    if request.messages is not None:
        body["messages"] = _llama_messages(request)
    else:
        body["prompt"] = request.prompt
    body.update(sampling_fields(sampling))
    fmt = request.response_format
    if request.wants_tools:
        body["grammar"] = _tool_grammar(request)
    elif fmt.kind is ResponseFormatKind.JSON_OBJECT:
        body["response_format"] = {"type": "json_object"}
    elif fmt.kind is ResponseFormatKind.JSON_SCHEMA:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": fmt.name or "response", "schema": fmt.json_schema or {}},
        }
    return body


def _tool_grammar(request: GenerationRequest) -> str:
    """The grammar of a tool reply, in compact JSON: llama.cpp's own conversion of the
    reply's schema, told to allow no whitespace. Its llguidance form reads that from the
    schema's ``x-guidance`` (lenient: keywords and formats it does not know are not
    enforced, as llama.cpp's GBNF conversion does); its GBNF form (builds without
    llguidance) gets an empty ``space`` rule. Sent as ``grammar``: ``response_format``
    would allow whitespace. A grammar llama.cpp cannot build is not an error there (it
    samples unconstrained), so ``_stream`` checks that the reply opens as JSON."""
    import xllamacpp

    schema = generic_tools.reply_schema(request.tools, request.tool_choice)
    compact = {"x-guidance": {"whitespace_flexible": False, "lenient": True}, **schema}
    try:
        grammar = xllamacpp.json_schema_to_grammar(compact)
    except Exception as exc:  # the tools' schemas: the request's fault, not the engine's
        raise InvalidRequest(
            f"tools: llama.cpp cannot turn the tools' parameter schemas into a grammar: {exc}",
            param="tools",
        ) from None
    return _compact_grammar(grammar)


def _compact_grammar(grammar: str) -> str:
    """A GBNF grammar from llama.cpp's json-schema-to-grammar with its optional whitespace
    (the one ``space`` rule) made empty; an llguidance grammar is returned as it is."""
    return re.sub(r"^space ::= .*$", 'space ::= ""', grammar, count=1, flags=re.M)


def _llama_messages(request: GenerationRequest) -> list[dict[str, str]]:
    messages = request.messages or ()
    if not (request.wants_tools or generic_tools.needs_flattening(messages)):
        return [{"role": m.role.value, "content": m.content} for m in messages]
    flat = generic_tools.plain_messages(messages)
    if request.wants_tools:
        instructions = generic_tools.system_prompt(request.tools, request.tool_choice)
        if flat and flat[0]["role"] == "system":
            flat[0] = {"role": "system", "content": f"{flat[0]['content']}\n\n{instructions}"}
        else:
            flat.insert(0, {"role": "system", "content": instructions})
    return flat


def _track(chunk: dict[str, Any], tracker: UsageTracker) -> None:
    """Keep the running counts. They are cumulative, so they only ever go up: a chunk
    without counts (or a late one without prediction counts) never lowers them."""
    timings = chunk.get("timings")
    if timings:
        cached = int(timings.get("cache_n", 0))
        prompt = cached + int(timings.get("prompt_n", 0))
        if prompt >= tracker.prompt_tokens:
            tracker.prompt_tokens, tracker.cached_tokens = prompt, cached
        tracker.completion_tokens = max(
            tracker.completion_tokens, int(timings.get("predicted_n", 0))
        )


def _text_delta(text: str, timings: dict[str, Any] | None, tracker: UsageTracker) -> TextDelta:
    if not timings:
        return TextDelta(
            text, tracker.completion_tokens, tracker.prompt_tokens, tracker.cached_tokens
        )
    cached = int(timings.get("cache_n", 0))
    return TextDelta(
        text, int(timings.get("predicted_n", 0)), cached + int(timings.get("prompt_n", 0)), cached
    )


def _usage(raw: dict[str, Any], tracker: UsageTracker) -> Usage:
    details = raw.get("prompt_tokens_details") or {}
    usage = Usage(
        prompt_tokens=int(raw.get("prompt_tokens", 0)),
        cached_tokens=int(details.get("cached_tokens", 0)),
        completion_tokens=int(raw.get("completion_tokens", 0)),
    )
    tracker.prompt_tokens = usage.prompt_tokens
    tracker.cached_tokens = usage.cached_tokens
    tracker.completion_tokens = usage.completion_tokens
    return usage


def _choice_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if delta is not None:
        return delta.get("content") or ""
    return choice.get("text") or ""


def _finish_reason(raw: str) -> FinishReason:
    return FinishReason.LENGTH if raw == "length" else FinishReason.STOP


_SCHEMA_ERRORS = ("JSON schema", "json schema", "grammar", "Unable to generate parser")


def _failure(exc: BaseException, request: GenerationRequest) -> OpenMaaSError:
    """What llama.cpp raising ``exc`` says: a JSON schema it could not turn into a grammar
    (``$ref`` it cannot follow, a keyword it refuses) is the request's fault, a 400 that no
    circuit breaker counts; anything else is the engine's."""
    text = str(exc)
    param = _schema_param(request)
    if param is not None and _names_schema(text):
        return _schema_refused(param, text)
    return EngineFailure(f"llama.cpp failed: {text}")


def _schema_param(request: GenerationRequest) -> str | None:
    """The field the grammar of ``request`` came from, named as the request bounds name it
    (serving/bounds.py; each protocol's error table says it in its own words): the tools'
    schemas (their one grammar, ``_tool_grammar``), else the response format's."""
    if request.wants_tools:
        return "tools"
    kind = request.response_format.kind
    if kind is ResponseFormatKind.JSON_SCHEMA:
        return "response_format.json_schema.schema"
    if kind is ResponseFormatKind.JSON_OBJECT:
        return "response_format"
    return None


def _names_schema(text: str) -> bool:
    return any(marker in text for marker in _SCHEMA_ERRORS)


def _schema_refused(param: str, text: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: llama.cpp cannot use this schema: {text}", param=param)


def _raise_if_error(
    item: dict[str, Any], param: str = "messages", schema_param: str | None = None
) -> None:
    """Raise what an error llama.cpp answered says: over the context window, a grammar of
    the request's schema (``schema_param``: its field) it failed to build or parse, another
    fault of the request (naming ``param``), or its own failure."""
    error = item.get("error")
    if error is None and "code" in item and "message" in item:
        error = item
    if error is None:
        return
    message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    if code == 400 and "context size" in message:
        counts = error if isinstance(error, dict) else {}
        raise PromptTooLong(
            message,
            param=param,
            prompt_tokens=_int_or_none(counts.get("n_prompt_tokens")),
            context_length=_int_or_none(counts.get("n_ctx")),
        )
    if code == 400 and schema_param is not None and _names_schema(message):
        raise _schema_refused(schema_param, message)
    if code == 400:
        raise InvalidRequest(message, param=param)
    raise EngineFailure(f"llama.cpp error: {message}")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
