"""Canonical request and stream types: what every protocol adapter translates to and from.

Nothing here knows which protocol a request arrived on or which engine serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openmaas.core.tracing import RequestTrace


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made. ``arguments`` is the JSON text of an object, as on the wire."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One turn. Assistant turns may carry the reasoning that preceded them (sent back for
    interleaved and preserved thinking) and the tool calls they made; tool turns name the
    call they answer."""

    role: Role
    content: str
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


class ToolChoiceKind(StrEnum):
    AUTO = "auto"  # the model decides
    NONE = "none"  # never call a tool
    REQUIRED = "required"  # call at least one tool
    NAMED = "named"  # call the tool named in ``ToolChoice.name``


@dataclass(frozen=True, slots=True)
class ToolChoice:
    kind: ToolChoiceKind = ToolChoiceKind.AUTO
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Thinking:
    """GLM thinking modes. ``enabled``: turn-level on/off (None: the model's default).
    ``clear_thinking=False`` keeps earlier turns' reasoning verbatim (preserved thinking);
    reasoning of turns after the last user message is always kept (interleaved thinking)."""

    enabled: bool | None = None
    clear_thinking: bool | None = None


class DataPolicy(StrEnum):
    """Where an organization's requests may be served (``docs/routing.md``)."""

    LOCAL_ONLY = "local_only"  # never an ``external`` deployment, whatever fails
    BURST = "burst"  # ``external`` deployments only when no ``local`` one can take it


@dataclass(frozen=True, slots=True)
class RoutingHints:
    """What the router may use besides the request itself; set by the gateway."""

    data_policy: DataPolicy = DataPolicy.BURST
    affinity_key: str | None = None  # a session id; else the router hashes the prompt prefix
    # Who may share a prompt cache: requests of different scopes never reuse each other's
    # cached prefixes (nor learn of them from ``cached_tokens``). The gateway sets a keyed
    # hash of the organization; None: no isolation asked for. Also the key by which an
    # engine's slots are shared fairly (engines/slots/fair.py): None shares one key.
    cache_scope: str | None = None
    # The organization's weight in that sharing (its tier's ``weight``): a key of weight 2
    # gets twice the slots of a key of weight 1 while both have requests waiting.
    share_weight: int = 1
    # The request's trace (``core/tracing.py``) when the server traces it; None: tracing is
    # off, and nothing on the request path reports to one.
    trace: RequestTrace | None = field(default=None, compare=False, repr=False)


class ResponseFormatKind(StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    kind: ResponseFormatKind = ResponseFormatKind.TEXT
    json_schema: dict[str, Any] | None = None
    name: str | None = None


MAX_TOKENS_LIMIT = 2**31 - 1
"""The most tokens a request may ask an engine to generate (``max_tokens`` and its kin, in
every protocol): engines read the count as a signed 32-bit integer (llama.cpp's
``n_predict``), where a larger value wraps around."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample. ``None`` leaves the choice to the engine's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    n: int = 1  # choices: independent generations of one prompt (engines that can, docs/api.md)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A chat (``messages``) or a plain text completion (``prompt``) request."""

    request_id: str
    model: str
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    user: str | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    thinking: Thinking = field(default_factory=Thinking)
    routing: RoutingHints = field(default_factory=RoutingHints)
    # The client reads the answer as it is generated. False: it reads only the whole answer
    # (no ``stream``), which an upstream may then send in one response (docs/engines.md).
    stream: bool = True

    @property
    def wants_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.kind is not ToolChoiceKind.NONE

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


EmbeddingInput = str | tuple[int, ...]
"""One input to embed: a text, or token ids of the model's own vocabulary, read as they are
(no special tokens added)."""


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    request_id: str
    model: str
    inputs: tuple[EmbeddingInput, ...]
    user: str | None = None
    routing: RoutingHints = field(default_factory=RoutingHints)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the engine reports them; ``estimated`` marks a tokenizer fallback."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    reasoning_tokens: int = 0  # the part of completion_tokens spent reasoning, when known

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output text. ``completion_tokens`` is the engine's running count so far."""

    text: str
    completion_tokens: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    choice: int = 0  # which of the request's ``n`` choices it belongs to


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """New reasoning text (GLM ``<think>``, ``reasoning_content``, Anthropic thinking)."""

    text: str
    completion_tokens: int
    choice: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Part of tool call number ``index``: the first part of a call carries its ``id`` and
    ``name``; every part may add a fragment of the JSON ``arguments`` text."""

    index: int
    id: str | None
    name: str | None
    arguments: str
    completion_tokens: int = 0
    choice: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a generation: its reason and usage. With ``n`` > 1 choices, ``usage`` sums
    them all, ``choices`` holds each choice's own reason and ``reason`` is the first of
    "length", "tool_calls" any choice ended with, else choice 0's."""

    reason: FinishReason
    usage: Usage
    choices: tuple[FinishReason, ...] = ()


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finished


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage
