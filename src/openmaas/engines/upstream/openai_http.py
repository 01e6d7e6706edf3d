"""Any OpenAI-compatible HTTP upstream: vLLM, SGLang, Ollama, Zhipu ``paas/v4``, OpenAI,
DeepSeek, OpenRouter.

The engine relays a canonical request as ``POST {base_url}/chat/completions`` (or
``/completions`` for a plain prompt) with ``stream: true`` and always
``stream_options: {"include_usage": true}``, and turns the server-sent events back into
canonical events. ``docs/engines.md`` ("OpenAI-compatible upstreams") is the user's guide.

Usage. The final usage chunk's counts are exact (cached tokens from
``prompt_tokens_details.cached_tokens``, reasoning tokens from
``completion_tokens_details.reasoning_tokens``). Until it arrives, and for an upstream that
sends none, the counts are a tokenizer's estimate and marked ``estimated``.

Errors (``core/errors.py``):

=============================================  ===========================================
what happened                                  raised
=============================================  ===========================================
connection refused, reset before any byte;     ``UpstreamUnavailable`` (a ``CapacityError``:
408, 429, 502, 503, 504, 529 (``Retry-After``  the router may try another deployment)
honoured); stream cut before the first token
400, 404, 413, 422                             ``InvalidRequest`` (``PromptTooLong`` when
                                               the upstream says the context is exceeded)
401, 403, 500 and any other status; a          ``EngineFailure``
malformed chunk; an error event; a stream cut
after the first token
500 or an error event before the first token   ``InvalidRequest`` naming the field
whose text names the schema or grammar the     (``openai_wire.schema_fault``: vLLM's 500
request carries (``response_format``, tools)   to a schema it cannot compile)
connect / first token / idle / total timeout   ``EngineTimeout(phase, seconds)``
=============================================  ===========================================

The API key is sent as ``Authorization: Bearer …`` and is never logged, never in a repr and
never in an error message (upstream error text is scrubbed of it).

The HTTP client is our own keep-alive HTTP/1.1 pool (``http1.py``: one per engine, capped at
``slots`` connections; no proxy or credentials from the environment, no redirects, TLS
verified against certifi's CA bundle). It replaced aiohttp, which replaced httpx:
``docs/benchmarks.md`` has the measurements.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from openmaas.core.errors import (
    EngineFailure,
    EngineTimeout,
    InvalidRequest,
    OpenMaaSError,
    PromptTooLong,
    UpstreamUnavailable,
)
from openmaas.core.money import Currency, Money
from openmaas.core.prices import AppliedPrice, ModelPrice
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationRequest,
    ReasoningDelta,
    StreamEvent,
    Usage,
)
from openmaas.engines.base import ModelKind, SlotEngine, UsageTracker
from openmaas.engines.upstream.deadlines import Deadlines, ReadTimer, Timeouts
from openmaas.engines.upstream.http1 import (
    ConnectTimeout,
    HttpPool,
    Origin,
    Response,
    TransportError,
)
from openmaas.engines.upstream.openai_wire import (
    SseDecoder,
    ThinkingStyle,
    chat_body,
    chunk_events,
    chunk_finish,
    completion_body,
    error_detail,
    error_status,
    error_text,
    exact_usage,
    is_context_error,
    message_texts,
    parse_retry_after,
    reported_cost,
    schema_fault,
    tools_json,
    uncounted,
    usage_of,
    utf8,
)
from openmaas.engines.upstream.token_estimate import TokenEstimator

__all__ = ["OpenAIHttpConfig", "OpenAIHttpEngine", "ThinkingStyle", "Timeouts"]

log = logging.getLogger("openmaas.engines.upstream.openai_http")

# _count_prompt_tokens: the upper bound's allowances (see the method's docstring).
_REQUEST_OVERHEAD = 64
_MESSAGE_OVERHEAD = 16
_TOOLS_OVERHEAD = 1024
_TOOL_OVERHEAD = 32
_ERROR_BODY_LIMIT = 64 * 1024
_DRAIN_SECONDS = 1.0
_ERROR_TEXT_LIMIT = 500

_UNAVAILABLE_STATUSES = frozenset({402, 408, 429, 502, 503, 504, 529})
_INVALID_STATUSES = frozenset({400, 404, 413, 422})


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OpenAIHttpConfig:
    """One OpenAI-compatible deployment. ``api_key`` and ``headers`` are secrets: they are
    left out of the repr and never logged."""

    base_url: str  # e.g. "http://gpu-1:8000/v1", "https://open.bigmodel.cn/api/paas/v4"
    upstream_model: str  # the model's name at the upstream
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    kind: ModelKind = ModelKind.CHAT
    slots: int = 16  # requests at once; also the size of the keep-alive pool
    queue: int = 0  # more requests waiting for a connection; beyond: EngineOverloaded
    timeouts: Timeouts = field(default_factory=Timeouts)
    deployment: str | None = None  # the deployment's id, for errors (default: model name)
    price: ModelPrice | None = None  # what the upstream charges us, when it reports no cost
    reported_cost_currency: Currency = Currency.USD  # of a ``usage.cost`` (OpenRouter: USD)
    thinking_style: ThinkingStyle = ThinkingStyle.CHAT_TEMPLATE_KWARGS
    probe_models: bool = False  # GET {base_url}/models at load (not every upstream serves it)
    tokenizer_path: Path | None = None  # tokenizer.json for estimates (default: see below)
    uds: str | None = None  # a Unix socket to connect through (base_url's host is then a name)
    cache_salt: bool = False  # send vLLM's cache_salt (prefix caches kept per organization)
    # A client that reads only the whole answer gets it from the upstream in one response
    # (``stream: false``; see ``OpenAIHttpEngine._whole``). False: always streamed.
    whole_answers: bool = True

    def __post_init__(self) -> None:
        if self.slots < 1 or self.queue < 0:
            raise ValueError("slots must be at least 1 and queue not negative")
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL")


# -- the engine -----------------------------------------------------------------------------
class OpenAIHttpEngine(SlotEngine):
    def __init__(self, model: str, config: OpenAIHttpConfig) -> None:
        super().__init__(model, config.kind, slots=config.slots, queue=config.queue)
        self.config = config
        self.deployment = config.deployment or model
        self._base = config.base_url.rstrip("/")
        self._where = _safe_url(self._base)
        self._prefix = urllib.parse.urlsplit(self._base).path  # each request's path, before its own
        self._client: HttpPool | None = None
        self._tokens: TokenEstimator | None = None
        timeouts = config.timeouts  # a whole answer's: its connection's, then the total
        self._whole_timeouts = Timeouts(timeouts.connect, None, None, timeouts.total)

    def __repr__(self) -> str:
        return (
            f"OpenAIHttpEngine(model={self.model!r}, deployment={self.deployment!r}, "
            f"base_url={self._where!r})"
        )

    # -- lifecycle ---------------------------------------------------------------------
    async def _load(self) -> None:
        cfg = self.config
        self._tokens = await asyncio.to_thread(TokenEstimator.load, cfg.tokenizer_path)
        tls = None
        if not cfg.uds and self._base.startswith("https:"):  # reading the CAs takes a while
            tls = await asyncio.to_thread(_tls_context)
        headers = dict(cfg.headers)
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        parts = urllib.parse.urlsplit(self._base)
        https = parts.scheme == "https"
        origin = Origin(
            parts.hostname or "",
            parts.port or (443 if https else 80),
            tls=tls,
            uds=cfg.uds,
        )
        # Waiting for a pooled connection has no limit (the slots bound the waiters); reads
        # are bounded by our own first-token / idle / total deadlines.
        self._client = HttpPool(
            origin, limit=cfg.slots, connect_timeout=cfg.timeouts.connect, headers=headers
        )
        if cfg.probe_models:
            try:
                await self._probe()
            except BaseException:
                await self._unload()
                raise

    async def _probe(self) -> None:
        client = self._ready()
        try:
            async with asyncio.timeout(self.config.timeouts.total):
                response = await client.request("GET", f"{self._prefix}/models")
                try:
                    status, raw, headers = response.status, await response.read(), response.headers
                finally:
                    response.release()
        except (TransportError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"Upstream {self._where} did not answer GET /models ({type(exc).__name__}).",
                deployment=self.deployment,
            ) from None
        if status != 200:
            raise self._status_error(status, raw, headers)

    async def _unload(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _ready(self) -> HttpPool:
        if self._client is None:
            raise EngineFailure(f"The engine for {self.model!r} is not loaded.")
        return self._client

    # -- generation --------------------------------------------------------------------
    def _stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        if request.stream or not self.config.whole_answers:
            return self._streamed(request, tracker)
        return self._whole(request, tracker)

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The upstream's path and (streamed) body for ``request``."""
        cfg = self.config
        if request.is_chat:
            body = chat_body(
                request, cfg.upstream_model, cfg.thinking_style, cache_salt=cfg.cache_salt
            )
            return "/chat/completions", body
        return "/completions", completion_body(
            request, cfg.upstream_model, cache_salt=cfg.cache_salt
        )

    async def _whole(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        """The answer in one response (``stream: false``), for a client that reads only the
        whole answer anyway: one body to read and parse instead of a stream's events, and no
        estimate while the upstream reports usage. Bounded by the ``total`` timeout alone (a
        long answer is not a stalled one). Nothing arrives before the end, so there is no
        running count: a request cut before its answer (the client left, a timeout, the
        process killed) has the prompt's estimate and no completion tokens
        (``docs/engines.md``, "Whole answers")."""
        client = self._ready()
        tokens = self._estimator()
        path, body = self._body(request)
        body["stream"] = False
        del body["stream_options"]
        tracker.estimated = True
        deadline = Deadlines(self._whole_timeouts, asyncio.get_running_loop().time())
        headers = {**self._headers_for(request), "Accept": "application/json"}
        finished: Finished | None = None
        response: Response | None = None
        try:
            # One deadline (the total) for the request and its body: one timer, not two.
            at, phase = deadline.next()
            try:
                async with asyncio.timeout_at(at):
                    response = await self._post(client, path, body, headers, request)
                    try:
                        raw = await response.read()
                    except TransportError as exc:
                        raise self._cut(False, exc) from None
            except TimeoutError:
                raise EngineTimeout(phase, deadline.seconds(phase)) from None
            try:
                answer = self._parse(raw, False)
            except EngineFailure as exc:
                raise self._schema_fault(request, exc, raw) or exc from None
            try:
                events, reason, reasoning, cost = self._answer_events(
                    answer, request.is_chat, tracker, tokens.count
                )
            except (AttributeError, KeyError, TypeError, ValueError, IndexError):
                raise self._malformed() from None
            if tracker.estimated:
                await self._estimate_prompt(request, tokens, tracker)
            for event in events:
                yield event
            finished = Finished(reason, usage_of(tracker, reasoning))
            tracker.upstream_cost = self._cost(finished.usage, cost)
            yield finished
        finally:
            if response is not None:
                response.release()
            if finished is None:
                if tracker.estimated and not tracker.prompt_tokens:
                    await self._estimate_prompt(request, tokens, tracker)
                tracker.upstream_cost = self._cost(usage_of(tracker, 0), None)

    def _answer_events(
        self,
        answer: dict[str, Any],
        chat: bool,
        tracker: UsageTracker,
        count: Callable[[str], int],
    ) -> tuple[list[StreamEvent], FinishReason, int, Money | None]:
        """A whole answer's events (its first choice, as one stream chunk carries it),
        finish reason (``stop`` where it names none: the answer is complete), reasoning
        tokens and reported cost. The tracker gets the answer's usage, or else an estimate
        of the completion (only then is anything counted)."""
        choices = answer.get("choices")
        choice = choices[0] if choices else {}
        shaped = {
            "choices": [
                {
                    "delta": choice.get("message"),
                    "text": choice.get("text"),
                    "finish_reason": choice.get("finish_reason"),
                }
            ]
        }
        raw_usage = answer.get("usage")
        events = list(chunk_events(shaped, chat, tracker, uncounted if raw_usage else count))
        reason = chunk_finish(shaped, self._where) or FinishReason.STOP
        if raw_usage:
            cost = reported_cost(raw_usage, self.config.reported_cost_currency)
            return events, reason, exact_usage(raw_usage, tracker), cost
        reasoning = sum(max(1, count(e.text)) for e in events if isinstance(e, ReasoningDelta))
        return events, reason, reasoning, None

    @staticmethod
    async def _estimate_prompt(
        request: GenerationRequest, tokens: TokenEstimator, tracker: UsageTracker
    ) -> None:
        counted = tokens.prompt_now(request)
        tracker.prompt_tokens = counted if counted is not None else await tokens.prompt(request)

    async def _streamed(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        client = self._ready()
        tokens = self._estimator()
        chat = request.is_chat
        path, body = self._body(request)
        tracker.estimated = True
        # The prompt's estimate stands until the upstream's usage arrives. A short prompt is
        # counted now; a long one beside the request (it takes a thread a while).
        estimate: asyncio.Future[int] | None = None
        counted = tokens.prompt_now(request)
        if counted is not None:
            tracker.prompt_tokens = counted
        else:
            estimate = asyncio.ensure_future(tokens.prompt(request))
            estimate.add_done_callback(functools.partial(_take_estimate, tracker))
        clock = asyncio.get_running_loop().time
        deadline = Deadlines(self.config.timeouts, clock())
        timer: ReadTimer | None = None
        upstream_said: Money | None = None  # a cost the upstream reported
        reasoning_tokens = 0  # estimated until the usage chunk says
        finished: Finished | None = None
        response: Response | None = None
        try:
            response = await self._open(
                client, path, body, deadline, self._headers_for(request), request
            )
            decoder = SseDecoder()
            reason: FinishReason | None = None
            usage_seen = done = False
            drain_at: float | None = None  # after [DONE]: how long to wait for the body's end
            timer = ReadTimer()
            while not done:
                at, phase = deadline.next()
                if drain_at is not None:
                    at = drain_at if at is None else min(at, drain_at)
                try:
                    data = await timer.read(response, at)
                except TimeoutError:
                    if reason is not None or drain_at is not None:
                        break  # the answer is complete; only the usage or the body's end is late
                    raise EngineTimeout(phase, deadline.seconds(phase)) from None
                except TransportError as exc:
                    if reason is not None:
                        break
                    raise self._cut(deadline.first_token_seen, exc) from None
                if data:
                    payloads = decoder.feed(data)
                else:  # the body's end
                    payloads = decoder.flush()
                    done = True
                # The events of everything this read brought, then handed out one by one,
                # each saying how many more are in hand (``UsageTracker.ready``): a stream's
                # writer sends what it has framed only when the next event would wait.
                batch: list[StreamEvent] = []
                failure: OpenMaaSError | None = None
                for payload in payloads:
                    if payload == b"[DONE]":
                        # Read on to the body's end (normally at once), so that the
                        # connection stays in the keep-alive pool.
                        drain_at = clock() + _DRAIN_SECONDS
                        continue
                    seen = deadline.first_token_seen or bool(batch)
                    try:
                        chunk = self._parse(payload, seen)
                    except EngineFailure as exc:
                        # an error event in the first token's place may name the schema
                        failure = (
                            None if seen else self._schema_fault(request, exc, payload)
                        ) or exc
                        break
                    except OpenMaaSError as exc:
                        failure = exc
                        break
                    try:
                        events = self._chunk_events(chunk, chat, tracker, tokens.count)
                        for event in events:
                            if isinstance(event, ReasoningDelta):
                                reasoning_tokens += max(1, tokens.count(event.text))
                        reason = chunk_finish(chunk, self._where) or reason
                        raw_usage = chunk.get("usage")
                        if raw_usage:
                            usage_seen = True
                            reasoning_tokens = exact_usage(raw_usage, tracker)
                            cost = reported_cost(raw_usage, self.config.reported_cost_currency)
                            upstream_said = cost or upstream_said
                    except EngineFailure as exc:
                        failure = exc
                        break
                    except (AttributeError, KeyError, TypeError, ValueError):
                        failure = self._malformed()
                        break
                    batch.extend(events)
                if batch:
                    deadline.token(clock())
                    left = len(batch)
                    for event in batch:
                        left -= 1
                        tracker.ready = left
                        yield event
                if failure is not None:
                    raise failure from None
            if reason is None:
                raise self._cut(deadline.first_token_seen, None)
            if not usage_seen:
                log.debug(
                    "upstream reported no usage; the counts are estimated",
                    extra={"model": self.model, "deployment": self.deployment},
                )
            if estimate is not None:
                if not estimate.done():
                    await asyncio.wait({estimate})
                # Taken here too: an estimate done by now may not have run its callback yet
                # (a busy loop ran this task first), and the count must not be 0.
                _take_estimate(tracker, estimate)
            finished = Finished(reason, usage_of(tracker, reasoning_tokens))
            tracker.upstream_cost = self._cost(finished.usage, upstream_said)
            yield finished
        finally:
            if timer is not None:
                timer.close()
            if response is not None:
                # A response read to its end gives its connection back to the pool;
                # releasing an unfinished one closes its connection: the upstream sees the
                # disconnect and stops generating.
                response.release()
            if estimate is not None and finished is None:
                if not tracker.estimated:
                    estimate.cancel()
                else:  # a broken stream is billed on the estimate
                    if not estimate.done():
                        await asyncio.wait({estimate})
                    _take_estimate(tracker, estimate)
            if finished is None:
                usage = usage_of(tracker, reasoning_tokens)
                tracker.upstream_cost = self._cost(usage, upstream_said)

    def _chunk_events(
        self,
        chunk: dict[str, Any],
        chat: bool,
        tracker: UsageTracker,
        count: Callable[[str], int],
    ) -> Iterable[StreamEvent]:
        """The canonical events of one stream chunk (``openai_wire.chunk_events``)."""
        return chunk_events(chunk, chat, tracker, count)

    def _headers_for(self, request: GenerationRequest | EmbeddingRequest) -> dict[str, str]:
        """Headers of one request besides the configured ones (none here)."""
        return {}

    async def _open(
        self,
        client: HttpPool,
        path: str,
        body: dict[str, Any],
        deadline: Deadlines,
        headers: Mapping[str, str],
        request: GenerationRequest | None = None,
    ) -> Response:
        """:meth:`_post` within the deadline's next phase."""
        at, phase = deadline.next()
        try:
            async with asyncio.timeout_at(at):
                return await self._post(client, path, body, headers, request)
        except TimeoutError:
            raise EngineTimeout(phase, deadline.seconds(phase)) from None

    async def _post(
        self,
        client: HttpPool,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        request: GenerationRequest | None = None,
    ) -> Response:
        """The upstream's response to ``body`` when its status is 200; else the error it
        answers (its body read, and the response released, whatever happens meanwhile)."""
        try:
            response = await client.request(
                "POST",
                self._prefix + path,
                orjson.dumps(body),
                {"Content-Type": "application/json", "Accept": "text/event-stream", **headers},
            )
        except ConnectTimeout:
            raise EngineTimeout("connect", self.config.timeouts.connect or 0.0) from None
        except TransportError as exc:
            raise self._unavailable(f"connection failed ({_describe(exc)})") from None
        if response.status == 200:
            return response
        try:
            raw = await _read_limited(response)
        except TransportError as exc:
            raise self._unavailable(f"connection failed ({_describe(exc)})") from None
        finally:
            response.release()
        error = self._status_error(response.status, raw, response.headers)
        fault = None
        if request is not None and response.status not in (401, 403):
            fault = self._schema_fault(request, error, raw)
        raise fault or error

    def _schema_fault(
        self, request: GenerationRequest, error: OpenMaaSError, raw: bytes
    ) -> InvalidRequest | None:
        """An upstream failure (a 500, an error event before the first token) whose text
        names the schema or grammar the request carries: the request's fault, a 400 that
        no circuit breaker counts (``openai_wire.schema_fault``). vLLM answers some schemas
        it cannot compile with 500 (vllm-project/vllm#57725)."""
        if type(error) is not EngineFailure or _credentials_refused(raw):
            return None
        return schema_fault(request, self._scrub(error_detail(raw)))

    def _parse(self, payload: bytes, after_first_token: bool) -> dict[str, Any]:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise self._malformed() from None
        if not isinstance(chunk, dict):
            raise self._malformed()
        error = chunk.get("error")
        if error:
            status = error_status(error)
            message = self._scrub(error_text(error))
            if not after_first_token and status is not None:
                raise self._status_error(status, orjson.dumps(chunk), {})
            raise EngineFailure(f"Upstream {self._where} sent an error mid-stream: {message}")
        return chunk

    def _malformed(self) -> EngineFailure:
        return EngineFailure(f"Upstream {self._where} sent a malformed stream chunk.")

    def _cut(self, after_first_token: bool, exc: Exception | None) -> OpenMaaSError:
        how = _describe(exc) if exc is not None else "the stream ended without a finish reason"
        if after_first_token:
            return EngineFailure(f"Upstream {self._where} broke off the stream ({how}).")
        return self._unavailable(f"the stream ended before the first token ({how})")

    def _unavailable(self, what: str, status: int | None = None) -> UpstreamUnavailable:
        log.warning("upstream unavailable: %s", what, extra={"deployment": self.deployment})
        return UpstreamUnavailable(
            f"Upstream {self._where} is unavailable: {what}.",
            deployment=self.deployment,
            status=status,
        )

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> OpenMaaSError:
        detail = self._scrub(error_detail(raw))
        if status in _UNAVAILABLE_STATUSES:
            error = self._unavailable(f"HTTP {status}: {detail}", status)
            retry_after = parse_retry_after(headers.get("retry-after"))
            if retry_after is not None:
                error.retry_after_seconds = retry_after
            return error
        if status in _INVALID_STATUSES:
            if status in (400, 413) and is_context_error(detail):
                return PromptTooLong(f"The upstream refused the request: {detail}")
            return InvalidRequest(f"The upstream refused the request ({status}): {detail}")
        log.warning("upstream failed with HTTP %s", status, extra={"deployment": self.deployment})
        if status in (401, 403):
            return EngineFailure(
                f"Upstream {self._where} refused our credentials (HTTP {status}): {detail}"
            )
        return EngineFailure(f"Upstream {self._where} failed (HTTP {status}): {detail}")

    def _scrub(self, text: str) -> str:
        """Upstream text for our messages: bounded, and never with our credentials in it."""
        text = text[:_ERROR_TEXT_LIMIT]
        secrets = [self.config.api_key or "", *self.config.headers.values()]
        for secret in secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _cost(self, usage: Usage, reported: Money | None) -> Money | None:
        if reported is not None:
            return reported
        if self.config.price is None:
            return None
        return AppliedPrice(self.config.price).charge(usage).money

    def _estimator(self) -> TokenEstimator:
        if self._tokens is None:
            raise EngineFailure(f"The engine for {self.model!r} is not loaded.")
        return self._tokens

    # -- counting and embeddings ------------------------------------------------------
    async def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        """An upper bound of the prompt tokens the upstream will count, for billing holds.

        We do not know the upstream's tokenizer or chat template, so: the UTF-8 bytes of
        everything the template may render (contents, reasoning, names, tool-call ids and
        arguments, the tool definitions' JSON, a JSON schema) -- a byte-level BPE tokenizer
        never makes more tokens than bytes, and SentencePiece with byte fallback at most
        one more per piece -- plus ``_MESSAGE_OVERHEAD`` per message for role and separator
        tokens, ``_REQUEST_OVERHEAD`` for the template's frame, and, when tools are offered,
        ``_TOOLS_OVERHEAD`` plus ``_TOOL_OVERHEAD`` per tool for the instructions templates
        add around them."""
        total = _REQUEST_OVERHEAD + utf8(request.prompt or "")
        for message in request.messages or ():
            total += _MESSAGE_OVERHEAD + utf8("".join(message_texts(message)))
        if request.tools:
            total += _TOOLS_OVERHEAD + len(orjson.dumps(tools_json(request)))
            total += _TOOL_OVERHEAD * len(request.tools)
        if request.response_format.json_schema is not None:
            total += len(orjson.dumps(request.response_format.json_schema))
        return total

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        client = self._ready()
        body: dict[str, Any] = {
            "model": self.config.upstream_model,
            "input": list(request.inputs),
            "encoding_format": "float",
        }
        if request.user:
            body["user"] = request.user
        timeouts = self.config.timeouts
        try:
            async with asyncio.timeout(timeouts.total):
                response = await client.request(
                    "POST",
                    f"{self._prefix}/embeddings",
                    orjson.dumps(body),
                    {"Content-Type": "application/json", **self._headers_for(request)},
                )
                try:
                    status, raw, headers = response.status, await response.read(), response.headers
                finally:
                    response.release()
        except ConnectTimeout:
            raise EngineTimeout("connect", timeouts.connect or 0.0) from None
        except TimeoutError:
            raise EngineTimeout("total", timeouts.total or 0.0) from None
        except TransportError as exc:
            raise self._unavailable(f"connection failed ({_describe(exc)})") from None
        if status != 200:
            raise self._status_error(status, raw, headers)
        try:
            result = orjson.loads(raw)
            data = sorted(result["data"], key=lambda item: item["index"])
            vectors = tuple(tuple(float(x) for x in item["embedding"]) for item in data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise EngineFailure(f"Upstream {self._where} sent malformed embeddings.") from None
        if len(vectors) != len(request.inputs):
            raise EngineFailure(
                f"Upstream {self._where} sent {len(vectors)} embeddings for "
                f"{len(request.inputs)} inputs."
            )
        prompt = (result.get("usage") or {}).get("prompt_tokens")
        if isinstance(prompt, int):
            return EmbeddingResult(vectors, Usage(prompt_tokens=prompt))
        texts = [item for item in request.inputs if isinstance(item, str)]
        estimate = await self._estimator().count_texts(texts)
        estimate += sum(len(item) for item in request.inputs if not isinstance(item, str))
        return EmbeddingResult(vectors, Usage(prompt_tokens=estimate, estimated=True))


def _credentials_refused(raw: bytes) -> bool:
    """An error event or body that says 401 or 403: our key, never the request's schema."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    error = body.get("error", body) if isinstance(body, dict) else None
    return error_status(error) in (401, 403)


def _take_estimate(tracker: UsageTracker, estimate: asyncio.Future[int]) -> None:
    if tracker.estimated and not estimate.cancelled() and estimate.exception() is None:
        tracker.prompt_tokens = estimate.result()


# -- errors -------------------------------------------------------------------------------
async def _read_limited(response: Response) -> bytes:
    body = b""
    while len(body) < _ERROR_BODY_LIMIT:
        part = await response.readany()
        if not part:
            break
        body += part
    return body[:_ERROR_BODY_LIMIT]


def _tls_context() -> ssl.SSLContext:
    """Verification against certifi's CA bundle, as httpx did (blocking: it reads the file)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _describe(exc: BaseException) -> str:
    """A transport error's class and text (never a URL: ours name none)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_url(url: str) -> str:
    """``url`` without user info, query or fragment: what error messages may show."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
