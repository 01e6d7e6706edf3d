"""A model served by the engine host (``openmaas.enginehost``), seen from a gateway worker.

With ``openmaas serve --workers N`` the local models (embedded, ``OPENMAAS_LOCAL_MODELS``)
are loaded once, by an engine host process, and every worker reaches them through the
host's Unix socket (``OPENMAAS_ENGINE_SOCKET``). :class:`HostedEngine` is the
``OpenAIHttpEngine`` over that socket, with what the gateway needs that the OpenAI wire
lacks (``docs/engines.md``, "The engine host"):

- the request id travels in a header (tool-call ids and llama.cpp's logs are the same as
  in-process), and so do its fairness key and weight (the host's engines share their slots
  between organizations as in-process, ``engines/slots/fair.py``);
- every stream chunk carries the host engine's running usage, so the counts are exact, never
  a tokenizer's estimate, at every moment of the stream;
- a stream closed before its end (the client went away) closes the connection, which stops
  generation in the host; then the host's final count of it is asked for, so the usage of a
  cut stream is the engine's own, as in-process;
- ``count_prompt_tokens`` is the host engine's exact count, not an upper bound;
- an error keeps its class (``PromptTooLong``, ``EngineOverloaded`` ...) and message.

A model of the catalog document (a deployment of an in-process kind) is not in the host's
settings: its engine *holds* it (:class:`HeldDeployment`): it declares the deployment to the
host when it starts, again every ``HOLD_REFRESH_S`` (which also brings it back into a host
that restarted), and releases it when it stops. The host loads each deployment once,
whatever the number of workers that hold it, keyed by the deployment itself
(:func:`hold_key`), and unloads it once no worker holds it (a worker that died stops
refreshing: its hold expires after ``HOLD_EXPIRY_S``).

The host and this engine share the names below: the host imports them from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from openmaas.core.errors import (
    EngineFailure,
    EngineNotReady,
    EngineOverloaded,
    InvalidRequest,
    OpenMaaSError,
    PromptTooLong,
    UpstreamUnavailable,
)
from openmaas.core.types import (
    EmbeddingRequest,
    Finished,
    GenerationRequest,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from openmaas.engines.base import EngineHealth, EngineState, ModelKind, UsageTracker
from openmaas.engines.upstream.openai_http import OpenAIHttpConfig, OpenAIHttpEngine, Timeouts
from openmaas.engines.upstream.openai_wire import (
    chat_body,
    chunk_events,
    completion_body,
    exact_usage,
    uncounted,
)

log = logging.getLogger("openmaas.engines.hosted")

BASE_URL = "http://engine-host/v1"  # the host name is only the Host header over a socket
REQUEST_ID_HEADER = "x-openmaas-request-id"
# The request's fairness key (its cache scope) and weight, for the host engine's fair queue
# (engines/slots/fair.py): the workers' requests share the host's slots as one process's would.
SHARE_KEY_HEADER = "x-openmaas-share-key"
SHARE_WEIGHT_HEADER = "x-openmaas-share-weight"
HEALTH_PATH = "/engine/health"  # GET: each model's state
PROMPT_TOKENS_PATH = "/engine/prompt_tokens"  # POST a generation body: {"prompt_tokens": n}
ENDS_PATH = "/engine/ends/"  # GET + request id: the final usage of a stream that did not finish
HOLD_PATH = "/engine/holds"  # POST a hold (HeldDeployment.body): load it / keep it loaded
RELEASE_PATH = "/engine/holds/release"  # POST {"key", "holder"}: no longer held by that one
HOLD_REFRESH_S = 5.0  # a worker declares its holds again this often
HOLD_EXPIRY_S = 30.0  # a hold not declared again for this long is dropped (its worker died)
ERROR_CLASS = "openmaas_error"  # in an error body: the class of the error the engine raised
# In a stream chunk: the counts its event carried in the host, [completion, prompt, cached].
EVENT_COUNTS = "openmaas_counts"

_CONTROL_TIMEOUT_S = 30.0  # counting tokens, asking for a stream's end
_END_WAIT_S = 10.0  # the host waits up to 2 s for llama.cpp to confirm a stop
_POLL_FIRST_S = 0.05
_POLL_MAX_S = 1.0


def hold_key(kind: ModelKind | str, deployment: Mapping[str, Any]) -> str:
    """The name the host serves a held deployment under: its id and a digest of its kind
    and every field, the same in every worker (a changed deployment is another engine). Not
    the model's public name: a model renamed keeps its engine, as in-process. ``~`` is in
    no public model name, so a held deployment never takes a settings model's name."""
    text = orjson.dumps([str(kind), deployment], option=orjson.OPT_SORT_KEYS)
    return f"{deployment['id']}~{hashlib.sha256(text).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class HeldDeployment:
    """A catalog deployment of an in-process kind that the engine host loads when told:
    the model it serves (its name names the engine in the host's messages and logs), the
    model's kind, and the deployment's fields as JSON (``catalog/schema.py`` reads them)."""

    model: str
    kind: ModelKind
    deployment: Mapping[str, Any]

    @property
    def key(self) -> str:
        return hold_key(self.kind, self.deployment)

    def body(self, holder: str) -> dict[str, Any]:
        return {
            "holder": holder,
            "model": self.model,
            "kind": self.kind.value,
            "deployment": dict(self.deployment),
        }


@dataclass(frozen=True, slots=True)
class HostedConfig:
    """A model of the engine host: its socket, and the capacity of the host's engine;
    ``held``: a deployment the host loads when this engine tells it to (not a settings
    model)."""

    socket: Path
    kind: ModelKind
    slots: int
    queue: int
    held: HeldDeployment | None = None


class _HostModelFailed(Exception):
    """The host could not load the model; ``detail`` is the host engine's reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class HostedEngine(OpenAIHttpEngine):
    many_choices = True  # n > 1: n generations in the host, each a request of its own

    def __init__(self, model: str, config: HostedConfig) -> None:
        held = config.held
        super().__init__(
            model,
            OpenAIHttpConfig(
                base_url=BASE_URL,
                upstream_model=model if held is None else held.key,
                kind=config.kind,
                slots=config.slots,
                queue=config.queue,
                # As in-process: no deadline but the connection's (the host queues requests
                # beyond its slots, and a long answer is not a stalled one).
                timeouts=Timeouts(connect=10.0, first_token=None, idle=None, total=None),
                deployment=model if held is None else str(held.deployment["id"]),
                uds=str(config.socket),
                cache_salt=True,  # the host's llama.cpp keeps prefix caches per organization
                whole_answers=False,  # the host streams every answer
            ),
        )
        self.socket = config.socket
        self.held = held
        self.served_as = self.config.upstream_model  # the name the host serves it under
        self._holder = uuid.uuid4().hex  # this engine's hold, apart from other workers'
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_now = asyncio.Event()
        # Counting, health and stream ends: never queued behind the streams' connections.
        self._control: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"HostedEngine(model={self.model!r}, socket={str(self.socket)!r})"

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Ready once the host serves the model; failed with the host's own reason."""
        try:
            await super().start()
        except _HostModelFailed as exc:
            self._health = EngineHealth(EngineState.FAILED, exc.detail)
            raise

    async def _load(self) -> None:
        self._control = httpx.AsyncClient(
            base_url=BASE_URL,
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            timeout=httpx.Timeout(_CONTROL_TIMEOUT_S, connect=10.0),
            trust_env=False,
            follow_redirects=False,
        )
        try:
            await super()._load()
            await self._until_served()
        except BaseException:
            await self._unload()
            raise
        if self.held is not None:
            self._refresher = asyncio.create_task(self._keep_holding())

    async def _unload(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        try:
            if self.held is not None:
                await self._release()
            await super()._unload()
        finally:
            control, self._control = self._control, None
            if control is not None:
                await control.aclose()

    # -- holds: a catalog deployment, loaded by the host while a worker holds it ---------
    async def _hold(self) -> None:
        """Tell the host to load the deployment (if it has not) and that we hold it."""
        assert self.held is not None
        response = await self._controller().post(HOLD_PATH, json=self.held.body(self._holder))
        if response.status_code != 200:
            raise self._status_error(response.status_code, response.content, response.headers)

    async def _keep_holding(self) -> None:
        """Declare the hold again every ``HOLD_REFRESH_S`` (sooner when the host said it
        does not serve the deployment: it restarted), so the host keeps it, or loads it
        again."""
        failing = False
        while True:
            try:
                async with asyncio.timeout(HOLD_REFRESH_S):
                    await self._refresh_now.wait()
            except TimeoutError:
                pass
            self._refresh_now.clear()
            try:
                await self._hold()
            except (httpx.HTTPError, OpenMaaSError) as exc:
                if not failing:
                    log.warning(
                        "the engine host did not take the hold; trying again",
                        extra={"model": self.model, "error": type(exc).__name__},
                    )
                failing = True
            else:
                failing = False

    async def _release(self) -> None:
        """Tell the host we no longer hold the deployment (if it does not hear it, the
        hold expires)."""
        assert self.held is not None
        body = {"key": self.served_as, "holder": self._holder}
        try:
            async with asyncio.timeout(_CONTROL_TIMEOUT_S):
                await self._controller().post(RELEASE_PATH, json=body)
        except (httpx.HTTPError, TimeoutError, EngineFailure) as exc:
            log.warning(
                "the engine host did not hear a release; the hold will expire",
                extra={"model": self.model, "error": type(exc).__name__},
            )

    async def _until_served(self) -> None:
        """Wait while the host is unreachable or still loading the model."""
        delay, said = _POLL_FIRST_S, False
        while True:
            if self.held is not None:  # (again: the host may have restarted meanwhile)
                try:
                    await self._hold()
                except httpx.HTTPError:
                    pass  # unreachable: the health below says so
                except OpenMaaSError as exc:  # the host refuses the deployment
                    raise _HostModelFailed(exc.message) from None
            try:
                response = await self._controller().get(HEALTH_PATH)
                state = response.json()["models"].get(self.served_as)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
                state = {"state": "unreachable"}
            if state is None:
                raise _HostModelFailed(f"the engine host at {self.socket} does not serve it")
            if state["state"] == EngineState.READY:
                return
            if state["state"] in (EngineState.FAILED, EngineState.STOPPED):
                raise _HostModelFailed(str(state.get("detail") or state["state"]))
            if not said:
                log.info(
                    "waiting for the engine host",
                    extra={"model": self.model, "socket": str(self.socket), "host": state},
                )
                said = True
            await asyncio.sleep(delay)
            delay = min(_POLL_MAX_S, delay * 2)

    def _controller(self) -> httpx.AsyncClient:
        if self._control is None:
            raise EngineFailure(f"The engine for {self.model!r} is not loaded.")
        return self._control

    # -- generation --------------------------------------------------------------------
    def _headers_for(self, request: GenerationRequest | EmbeddingRequest) -> dict[str, str]:
        headers = {
            REQUEST_ID_HEADER: request.request_id,
            SHARE_WEIGHT_HEADER: str(request.routing.share_weight),
        }
        if request.routing.cache_scope:
            headers[SHARE_KEY_HEADER] = request.routing.cache_scope
        return headers

    async def _stream(
        self, request: GenerationRequest, tracker: UsageTracker
    ) -> AsyncIterator[StreamEvent]:
        events = super()._stream(request, tracker)
        finished = False
        try:
            async for event in events:
                finished = isinstance(event, Finished)
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # closing stops the host
            if not finished:
                await self._take_end(request.request_id, tracker)

    def _chunk_events(
        self,
        chunk: dict[str, Any],
        chat: bool,
        tracker: UsageTracker,
        count: Callable[[str], int],
    ) -> Iterable[StreamEvent]:
        """The chunk's event with the counts it had in the host (the chunk's usage, read
        next, makes the tracker exact): nothing is estimated here."""
        events = chunk_events(chunk, chat, tracker, uncounted)
        counts = chunk.get(EVENT_COUNTS)
        if not counts:
            return events
        completion, prompt, cached = (int(n) for n in counts)
        exact: list[StreamEvent] = []
        for event in events:
            if isinstance(event, TextDelta):
                event = dataclasses.replace(
                    event, completion_tokens=completion, prompt_tokens=prompt, cached_tokens=cached
                )
            elif isinstance(event, ReasoningDelta | ToolCallDelta):
                event = dataclasses.replace(event, completion_tokens=completion)
            exact.append(event)
        return exact

    async def _take_end(self, request_id: str, tracker: UsageTracker) -> None:
        """The host engine's final count of a stream that did not finish (it stops, then
        counts); without an answer, the last count the stream carried stands."""
        try:
            async with asyncio.timeout(_END_WAIT_S):
                response = await self._controller().get(ENDS_PATH + request_id)
            if response.status_code == 200:
                exact_usage(orjson.loads(response.content), tracker)
        except (httpx.HTTPError, TimeoutError, orjson.JSONDecodeError, EngineFailure) as exc:
            log.warning(
                "the engine host did not say how a cut stream ended; its last count stands",
                extra={"model": self.model, "error": type(exc).__name__},
            )

    async def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        if request.is_chat:
            body = chat_body(request, self.served_as, self.config.thinking_style)
        else:
            body = completion_body(request, self.served_as)
        try:
            response = await self._controller().post(
                PROMPT_TOKENS_PATH,
                content=orjson.dumps(body),
                headers={"Content-Type": "application/json", REQUEST_ID_HEADER: request.request_id},
            )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"The engine host is unavailable ({type(exc).__name__}).",
                deployment=self.deployment,
            ) from None
        if response.status_code != 200:
            raise self._status_error(response.status_code, response.content, response.headers)
        try:
            return int(orjson.loads(response.content)["prompt_tokens"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise EngineFailure("The engine host sent a malformed token count.") from None

    # -- errors: the host engine's own --------------------------------------------------
    def _status_error(
        self, status: int, raw: bytes, headers: httpx.Headers | Mapping[str, str]
    ) -> OpenMaaSError:
        revived = _revive(_error_of(raw), self.model)
        if isinstance(revived, EngineNotReady) and self.held is not None:
            self._refresh_now.set()  # the host may have restarted: hold the deployment again
        return revived or super()._status_error(status, raw, headers)

    def _parse(self, payload: bytes, after_first_token: bool) -> dict[str, Any]:
        revived = _revive(_error_of(payload), self.model)
        if revived is not None:
            raise revived
        return super()._parse(payload, after_first_token)


def _error_of(raw: bytes) -> dict[str, Any] | None:
    if not raw.startswith(b'{"error"'):
        return None
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return error if isinstance(error, dict) and ERROR_CLASS in error else None


def _revive(error: dict[str, Any] | None, model: str) -> OpenMaaSError | None:
    """The error the host's engine raised, as that class with that message."""
    if error is None:
        return None
    name, message, param = error[ERROR_CLASS], str(error.get("message")), error.get("param")
    exc: OpenMaaSError
    if name == "PromptTooLong":
        prompt, context = error.get("prompt_tokens"), error.get("context_length")
        return PromptTooLong(
            message,
            param,
            prompt_tokens=prompt if isinstance(prompt, int) else None,
            context_length=context if isinstance(context, int) else None,
        )
    if name == "InvalidRequest":
        return InvalidRequest(message, param)
    if name == "EngineOverloaded":
        exc = EngineOverloaded(model, 0)
    elif name == "EngineNotReady":
        exc = EngineNotReady(model)
    elif name == "ModelNotFound":  # a held deployment the host has not loaded (yet)
        return EngineNotReady(model, "the engine host does not serve it yet")
    else:
        return EngineFailure(message)
    exc.message, exc.args = message, (message,)
    return exc
