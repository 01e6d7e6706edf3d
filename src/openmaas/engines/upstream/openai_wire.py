"""The OpenAI wire format as an upstream speaks it, without I/O: request bodies for
``/chat/completions`` and ``/completions``, an incremental server-sent-events decoder, stream
chunks to canonical events, usage and cost from the usage chunk, error bodies.

``engines/upstream/openai_http.py`` does the I/O around these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import orjson

from openmaas.core.errors import EngineFailure, InvalidRequest
from openmaas.core.money import MICROS_PER_UNIT, Currency, Money
from openmaas.core.types import (
    FinishReason,
    GenerationRequest,
    Message,
    ReasoningDelta,
    ResponseFormatKind,
    SamplingParams,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolChoiceKind,
    Usage,
)
from openmaas.engines.base import UsageTracker

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "eos": FinishReason.STOP,
    "end_turn": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "max_tokens": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
    "sensitive": FinishReason.CONTENT_FILTER,  # Zhipu's moderation cut
}
_FAILED_FINISH_REASONS = frozenset({"network_error", "error", "abort"})


class ThinkingStyle(StrEnum):
    """How the canonical ``Thinking`` switch is spelled for this upstream."""

    CHAT_TEMPLATE_KWARGS = "chat_template_kwargs"  # vLLM, SGLang: enable_thinking, clear_thinking
    ZHIPU = "zhipu"  # Zhipu paas/v4: "thinking": {"type": "enabled"|"disabled", ...}
    NONE = "none"  # the upstream has no switch: never sent


# -- server-sent events ---------------------------------------------------------------------
class SseDecoder:
    """Incremental server-sent-events decoder: ``feed`` bytes as they arrive (split anywhere),
    get the ``data`` payloads of the events they complete. Comments (keep-alives) and other
    fields are skipped; multi-line data is joined with newlines."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._buffer and not self._data and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            # What upstreams send: whole events of one ``data: `` line each, ``\n``-ended.
            # Taken apart at once; anything else (a comment, another field, a line that
            # goes on) is read line by line below.
            whole: list[bytes] = []
            for block in chunk.split(b"\n\n"):
                if block.startswith(b"data: ") and b"\n" not in block:
                    whole.append(block[6:])
                elif block:
                    break
            else:
                return whole
        buffer = self._buffer + chunk
        if not buffer:
            return []
        lines = buffer.splitlines(keepends=True)
        last = lines[-1]
        # A line is complete once it ends in \n, or in \r that is not the end of the input
        # (the \n of a \r\n may be in the next chunk).
        if last.endswith(b"\n"):
            self._buffer = b""
        else:
            self._buffer = lines.pop()
        payloads: list[bytes] = []
        for line in lines:
            self._line(line.rstrip(b"\r\n"), payloads)
        return payloads

    def flush(self) -> list[bytes]:
        """At the end of the stream: whatever event is pending (lenient about a missing
        final blank line)."""
        payloads: list[bytes] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r\n"), payloads)
            self._buffer = b""
        self._line(b"", payloads)
        return payloads

    def _line(self, line: bytes, payloads: list[bytes]) -> None:
        if not line:
            if self._data:
                payloads.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)


# -- chunks → events ------------------------------------------------------------------------
def chunk_events(
    chunk: dict[str, Any], chat: bool, tracker: UsageTracker, count: Callable[[str], int]
) -> Iterable[StreamEvent]:
    """The events of one chunk (its first choice), counting each delta's tokens."""
    choices = chunk.get("choices")
    if not choices:
        return ()
    choice = choices[0]
    if not chat:
        text = choice.get("text")
        if not text:
            return ()
        tracker.completion_tokens += max(1, count(text))
        return (
            TextDelta(
                text, tracker.completion_tokens, tracker.prompt_tokens, tracker.cached_tokens
            ),
        )
    delta = choice.get("delta")
    if not delta:
        return ()
    events: list[StreamEvent] = []
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if reasoning:
        tracker.completion_tokens += max(1, count(reasoning))
        events.append(ReasoningDelta(reasoning, tracker.completion_tokens))
    content = delta.get("content")
    if content:
        tracker.completion_tokens += max(1, count(content))
        events.append(
            TextDelta(
                content, tracker.completion_tokens, tracker.prompt_tokens, tracker.cached_tokens
            )
        )
    for position, call in enumerate(delta.get("tool_calls") or ()):
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if not isinstance(arguments, str):  # some upstreams send the object itself
            arguments = orjson.dumps(arguments).decode()
        name = function.get("name")
        tracker.completion_tokens += max(1, count(arguments) + (1 if name else 0))
        index = call.get("index")
        events.append(
            ToolCallDelta(
                index if isinstance(index, int) else position,
                call.get("id"),
                name,
                arguments,
                tracker.completion_tokens,
            )
        )
    return events


def uncounted(text: str) -> int:
    """A count function for texts whose tokens another count covers (the usage)."""
    return 0


def chunk_finish(chunk: dict[str, Any], where: str) -> FinishReason | None:
    choices = chunk.get("choices")
    if not choices:
        return None
    raw = choices[0].get("finish_reason")
    if not raw:
        return None
    if raw in _FAILED_FINISH_REASONS:
        raise EngineFailure(f"Upstream {where} ended the stream with finish_reason {raw!r}.")
    return _FINISH_REASONS.get(raw, FinishReason.STOP)


def exact_usage(raw: dict[str, Any], tracker: UsageTracker) -> int:
    """Take the upstream's counts; returns its reasoning tokens."""
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens")
    if cached is None:
        cached = raw.get("prompt_cache_hit_tokens", 0)  # DeepSeek
    tracker.prompt_tokens = _int(raw.get("prompt_tokens"))
    tracker.cached_tokens = _int(cached)
    tracker.completion_tokens = _int(raw.get("completion_tokens"))
    tracker.estimated = False
    return _int(completion_details.get("reasoning_tokens"))


def usage_of(tracker: UsageTracker, reasoning_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=tracker.prompt_tokens,
        cached_tokens=tracker.cached_tokens,
        completion_tokens=tracker.completion_tokens,
        estimated=tracker.estimated,
        reasoning_tokens=min(reasoning_tokens, tracker.completion_tokens),
    )


def reported_cost(raw: dict[str, Any], currency: Currency) -> Money | None:
    """``usage.cost`` (OpenRouter: a number of USD), rounded up to the micro."""
    value = raw.get("cost")
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    micros = (amount * MICROS_PER_UNIT).to_integral_value(rounding=ROUND_CEILING)
    return Money(int(micros), currency)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# -- request bodies -------------------------------------------------------------------------
def chat_body(
    request: GenerationRequest,
    model: str,
    thinking_style: ThinkingStyle,
    *,
    cache_salt: bool = False,
) -> dict[str, Any]:
    """The upstream's ``/chat/completions`` body for ``request``; ``cache_salt``: the
    request's cache scope is sent as vLLM's ``cache_salt`` (see ``_cache_salt``)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [_wire_message(m) for m in request.messages or ()],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _sampling(request, body)
    if request.tools:
        body["tools"] = tools_json(request)
    choice = request.tool_choice
    if request.tools or choice.kind is not ToolChoiceKind.AUTO:
        if choice.kind is ToolChoiceKind.NAMED:
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = choice.kind.value
    fmt = request.response_format
    if fmt.kind is ResponseFormatKind.JSON_OBJECT:
        body["response_format"] = {"type": "json_object"}
    elif fmt.kind is ResponseFormatKind.JSON_SCHEMA:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": fmt.name or "response", "schema": fmt.json_schema or {}},
        }
    _thinking(request, thinking_style, body)
    _cache_salt(request, body, cache_salt)
    return body


def completion_body(
    request: GenerationRequest, model: str, *, cache_salt: bool = False
) -> dict[str, Any]:
    """The upstream's ``/completions`` body for a plain-prompt ``request``."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt or "",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _sampling(request, body)
    _cache_salt(request, body, cache_salt)
    return body


def _cache_salt(request: GenerationRequest, body: dict[str, Any], wanted: bool) -> None:
    """vLLM (0.9 and later) shares prefix-cache blocks only between requests of the same
    ``cache_salt``: the request's cache scope (a keyed hash of its organization, never the
    organization's id), so one organization's ``cached_tokens`` say nothing of another's
    prompts. Only where ``wanted``: other upstreams may refuse a field they do not know."""
    if wanted and request.routing.cache_scope:
        body["cache_salt"] = request.routing.cache_scope


def _sampling(request: GenerationRequest, body: dict[str, Any]) -> None:
    body.update(sampling_fields(request.sampling))
    if request.user:
        body["user"] = request.user


def sampling_fields(sampling: SamplingParams) -> dict[str, Any]:
    """The OpenAI-style sampling fields a request sets (llama.cpp's server reads the same)."""
    body: dict[str, Any] = {}
    if sampling.max_tokens is not None:
        body["max_tokens"] = sampling.max_tokens
    if sampling.temperature is not None:
        body["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        body["top_p"] = sampling.top_p
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.ignore_eos:
        body["ignore_eos"] = True  # vLLM / SGLang / llama.cpp extension, only when asked for
    return body


def _thinking(request: GenerationRequest, style: ThinkingStyle, body: dict[str, Any]) -> None:
    thinking = request.thinking
    if thinking.enabled is None and thinking.clear_thinking is None:
        return
    if style is ThinkingStyle.ZHIPU:
        wire: dict[str, Any] = {}
        if thinking.enabled is not None:
            wire["type"] = "enabled" if thinking.enabled else "disabled"
        if thinking.clear_thinking is not None:
            wire["clear_thinking"] = thinking.clear_thinking
        body["thinking"] = wire
    elif style is ThinkingStyle.CHAT_TEMPLATE_KWARGS:
        kwargs: dict[str, Any] = {}
        if thinking.enabled is not None:
            kwargs["enable_thinking"] = thinking.enabled
        if thinking.clear_thinking is not None:
            kwargs["clear_thinking"] = thinking.clear_thinking
        body["chat_template_kwargs"] = kwargs


def _wire_message(message: Message) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role.value, "content": message.content}
    if message.tool_calls:
        if not message.content:
            wire["content"] = None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.reasoning is not None:
        wire["reasoning_content"] = message.reasoning  # byte-exact: prefix caches depend on it
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        wire["name"] = message.name
    return wire


def tools_json(request: GenerationRequest) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters or {"type": "object", "properties": {}},
            },
        }
        for tool in request.tools
    ]


def message_texts(message: Message) -> list[str]:
    texts = [message.content, message.reasoning or "", message.tool_call_id or ""]
    texts.append(message.name or "")
    for call in message.tool_calls:
        texts += [call.id, call.name, call.arguments]
    return texts


def utf8(text: str) -> int:
    return len(text.encode("utf-8"))


# -- error bodies -------------------------------------------------------------------------
def error_detail(raw: bytes) -> str:
    """The upstream's error message, from an OpenAI-style body or its text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip() or "no details"
    if isinstance(body, dict):
        error = body.get("error", body)
        return error_text(error)
    return str(body)


def error_text(error: Any) -> str:
    if isinstance(error, dict):
        for key in ("message", "msg", "detail"):
            text = error.get(key)
            if isinstance(text, str):
                return text
        return orjson.dumps(error).decode()
    return str(error)


def error_status(error: Any) -> int | None:
    if not isinstance(error, dict):
        return None
    for key in ("status", "status_code", "code"):
        value = error.get(key)
        if isinstance(value, int) and 400 <= value <= 599:
            return value
    return None


# What upstreams say when the request's own JSON schema, regex or grammar cannot be compiled
# or followed: vLLM ("Grammar error: Invalid type: ...", "The provided JSON schema contains
# features not supported by xgrammar", its guided-decoding backends xgrammar, outlines and
# guidance/llguidance), SGLang and llama.cpp's server ("failed to parse grammar"). vLLM
# answers several of them with 500 (vllm-project/vllm#57725).
_SCHEMA_MARKERS = (
    "grammar",
    "json schema",
    "json_schema",
    "xgrammar",
    "guided",
    "structured output",
    "structured_output",
    "outlines",
    "llguidance",
    "regex",
    "$ref",
)


def schema_fault(request: GenerationRequest, detail: str) -> InvalidRequest | None:
    """The request's own fault, when an upstream's error (whatever its status) names the
    schema or grammar the request carries (a JSON schema ``response_format``, JSON mode, or
    tools, which vLLM constrains by a schema): a 400 naming that field, which no circuit
    breaker counts. None when the request carries none, or the text does not name one: an
    upstream's 500 with an empty message stays the deployment's failure."""
    text = detail.lower()
    if not any(marker in text for marker in _SCHEMA_MARKERS):
        return None
    kind = request.response_format.kind
    if kind is ResponseFormatKind.JSON_SCHEMA:
        param = "response_format.json_schema.schema"
    elif kind is ResponseFormatKind.JSON_OBJECT:
        param = "response_format"
    elif request.tools:
        param = "tools"
    else:
        return None
    return InvalidRequest(f"{param}: the upstream cannot use this schema: {detail}", param=param)


def is_context_error(detail: str) -> bool:
    text = detail.lower()
    return "context" in text and any(w in text for w in ("length", "window", "maximum", "exceed"))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: left to the router's own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
