"""Canonical request and stream types: what every protocol adapter translates to and from.

Nothing here knows which protocol a request arrived on or which engine serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


class ResponseFormatKind(StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    kind: ResponseFormatKind = ResponseFormatKind.TEXT
    json_schema: dict[str, Any] | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample. ``None`` leaves the choice to the engine's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


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

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    request_id: str
    model: str
    inputs: tuple[str, ...]
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the engine reports them; ``estimated`` marks a tokenizer fallback."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output text. ``completion_tokens`` is the engine's running count so far."""

    text: str
    completion_tokens: int
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    usage: Usage


StreamEvent = TextDelta | Finished


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage
