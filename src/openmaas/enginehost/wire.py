"""The engine host's wire, without I/O: the OpenAI request bodies a worker's
``HostedEngine`` sends (``engines/upstream/openai_wire.py``'s ``chat_body`` and ``completion_body``)
read back into the very canonical request the worker had, and canonical events written as
OpenAI stream chunks that each carry the engine's running usage.

The reader is the exact inverse of those two writers, not the public API's parser: the
host's only callers are the local workers, whose requests the public API has already
checked, so nothing is refused or defaulted here that the in-process engine would take.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from openmaas.core.errors import InvalidRequest, OpenMaaSError, PromptTooLong
from openmaas.core.tiers import MAX_WEIGHT
from openmaas.core.types import (
    EmbeddingInput,
    EmbeddingRequest,
    EmbeddingResult,
    Finished,
    GenerationRequest,
    Message,
    ReasoningDelta,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    RoutingHints,
    SamplingParams,
    StreamEvent,
    TextDelta,
    Thinking,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceKind,
    Usage,
)
from openmaas.engines.hosted import (
    ERROR_CLASS,
    EVENT_COUNTS,
    SHARE_KEY_HEADER,
    SHARE_WEIGHT_HEADER,
)
from openmaas.protocols.openai.adapter import usage_json
from openmaas.protocols.openai.errors import to_openai_error

DONE = b"data: [DONE]\n\n"


# -- requests -------------------------------------------------------------------------------
def generation_request(
    raw: bytes, request_id: str, headers: Mapping[str, str] | None = None
) -> GenerationRequest:
    """A chat (``messages``) or completion (``prompt``) body, as the worker's request;
    ``headers``: the request's, which carry its fairness key and weight."""
    try:
        body = orjson.loads(raw)
        return _generation(body, request_id, _routing(body, headers or {}))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRequest(f"The engine host cannot read the request ({exc!r}).") from None


def embedding_request(
    raw: bytes, request_id: str, headers: Mapping[str, str] | None = None
) -> EmbeddingRequest:
    try:
        body = orjson.loads(raw)
        raw = body["input"]
        inputs = (raw,) if isinstance(raw, str) else tuple(_embedding_input(item) for item in raw)
        routing = _routing(body, headers or {})
        return EmbeddingRequest(request_id, str(body["model"]), inputs, body.get("user"), routing)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRequest(f"The engine host cannot read the request ({exc!r}).") from None


def _embedding_input(item: Any) -> EmbeddingInput:
    """A text, or token ids (a list of ints), as the worker sent it."""
    return tuple(int(token) for token in item) if isinstance(item, list) else str(item)


def _generation(body: dict[str, Any], request_id: str, routing: RoutingHints) -> GenerationRequest:
    stop = body.get("stop") or ()
    sampling = SamplingParams(
        max_tokens=body.get("max_tokens"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=body.get("seed"),
        ignore_eos=bool(body.get("ignore_eos", False)),
    )
    if "messages" not in body:
        return GenerationRequest(
            request_id=request_id,
            model=body["model"],
            prompt=body["prompt"],
            sampling=sampling,
            user=body.get("user"),
            routing=routing,
        )
    kwargs = body.get("chat_template_kwargs") or {}
    return GenerationRequest(
        request_id=request_id,
        model=body["model"],
        messages=tuple(_message(m) for m in body["messages"]),
        sampling=sampling,
        response_format=_response_format(body.get("response_format")),
        user=body.get("user"),
        tools=tuple(_tool(t["function"]) for t in body.get("tools") or ()),
        tool_choice=_tool_choice(body.get("tool_choice")),
        thinking=Thinking(kwargs.get("enable_thinking"), kwargs.get("clear_thinking")),
        routing=routing,
    )


def _routing(body: dict[str, Any], headers: Mapping[str, str]) -> RoutingHints:
    """The worker's cache scope, sent as vLLM's ``cache_salt`` (engines/slots/prompt_cache.py),
    or as the fairness key's header (embeddings); the fairness weight, in its header."""
    salt = body.get("cache_salt")
    if not (isinstance(salt, str) and salt):
        salt = headers.get(SHARE_KEY_HEADER) or None
    try:
        weight = min(max(int(headers.get(SHARE_WEIGHT_HEADER) or 1), 1), MAX_WEIGHT)
    except ValueError:
        weight = 1
    return RoutingHints(cache_scope=salt, share_weight=weight)


def _message(wire: dict[str, Any]) -> Message:
    return Message(
        role=Role(wire["role"]),
        content=wire.get("content") or "",
        reasoning=wire.get("reasoning_content"),
        tool_calls=tuple(
            ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])
            for call in wire.get("tool_calls") or ()
        ),
        tool_call_id=wire.get("tool_call_id"),
        name=wire.get("name"),
    )


def _tool(function: dict[str, Any]) -> Tool:
    return Tool(function["name"], function.get("description", ""), function["parameters"])


def _tool_choice(wire: Any) -> ToolChoice:
    if wire is None:
        return ToolChoice()
    if isinstance(wire, str):
        return ToolChoice(ToolChoiceKind(wire))
    return ToolChoice(ToolChoiceKind.NAMED, wire["function"]["name"])


def _response_format(wire: dict[str, Any] | None) -> ResponseFormat:
    if wire is None:
        return ResponseFormat()
    kind = ResponseFormatKind(wire["type"])
    if kind is not ResponseFormatKind.JSON_SCHEMA:
        return ResponseFormat(kind)
    spec = wire["json_schema"]
    return ResponseFormat(kind, spec.get("schema"), spec.get("name"))


# -- responses ------------------------------------------------------------------------------
class ChunkWriter:
    """The frames of one stream. Every chunk carries ``usage``: the engine's running
    counts when it was written (the worker's counts are exact at every moment)."""

    __slots__ = ("_base", "_chat")

    def __init__(self, request_id: str, model: str, *, chat: bool) -> None:
        self._chat = chat
        self._base = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def event(self, event: StreamEvent, usage: Usage) -> bytes:
        """``event``'s chunk; ``usage``: the stream's running counts (its tracker's)."""
        if isinstance(event, Finished):
            return self._finish(event)
        if isinstance(event, TextDelta):
            counts = [event.completion_tokens, event.prompt_tokens, event.cached_tokens]
            if not self._chat:
                return self._chunk({"text": event.text}, usage, counts)
            return self._chunk({"delta": {"content": event.text}}, usage, counts)
        counts = [event.completion_tokens, 0, 0]
        if isinstance(event, ReasoningDelta):
            return self._chunk({"delta": {"reasoning_content": event.text}}, usage, counts)
        return self._chunk({"delta": {"tool_calls": [_tool_call(event)]}}, usage, counts)

    def _finish(self, event: Finished) -> bytes:
        choice: dict[str, Any] = {"finish_reason": event.reason.value}
        if self._chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        final = _frame({**self._base, "choices": [], "usage": usage_json(event.usage)})
        return self._chunk(choice, event.usage) + final + DONE

    def _chunk(
        self, choice: dict[str, Any], usage: Usage, counts: list[int] | None = None
    ) -> bytes:
        chunk: dict[str, Any] = {
            **self._base,
            "choices": [{"index": 0, **choice}],
            "usage": usage_json(usage),
        }
        if counts is not None:
            chunk[EVENT_COUNTS] = counts
        return _frame(chunk)

    def error(self, exc: OpenMaaSError) -> bytes:
        return _frame(error_body(exc)[1]) + DONE


def _tool_call(event: ToolCallDelta) -> dict[str, Any]:
    call: dict[str, Any] = {"index": event.index}
    if event.id is not None:
        call |= {"id": event.id, "type": "function"}
    function: dict[str, Any] = {"arguments": event.arguments}
    if event.name is not None:
        function["name"] = event.name
    call["function"] = function
    return call


def _frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_body(exc: OpenMaaSError) -> tuple[int, dict[str, Any]]:
    """Status and body: OpenAI's, naming the class the worker raises it as again."""
    status, body, _headers = to_openai_error(exc)
    body["error"][ERROR_CLASS] = type(exc).__name__
    if isinstance(exc, PromptTooLong):  # the counts, and the engine's own words
        body["error"] |= {
            "message": exc.message,
            "prompt_tokens": exc.prompt_tokens,
            "context_length": exc.context_length,
        }
    return status, body


def embeddings_body(result: EmbeddingResult) -> bytes:
    data = [
        {"object": "embedding", "index": i, "embedding": vector}
        for i, vector in enumerate(result.vectors)
    ]
    prompt = result.usage.prompt_tokens
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return orjson.dumps({"object": "list", "data": data, "usage": usage})
