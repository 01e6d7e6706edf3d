"""Anthropic Messages wire request bodies, validated.

Unknown fields are ignored, as Anthropic's API ignores them (the SDK and Claude Code add new
ones often: ``cache_control`` on any block, ``defer_loading`` on tools, ``output_config`` on
a turn). Content blocks are kept as raw objects here and validated one
by one in the adapter, so an error names the exact block (``messages[2].content[1].input``)
and a block type we cannot honour (``image``) is refused by name rather than dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openmaas.core.types import MAX_TOKENS_LIMIT


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- content blocks (validated by the adapter, one at a time) ---------------------------
class AnthropicTextBlock(_Wire):
    type: Literal["text"]
    text: str


class AnthropicToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class AnthropicToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[dict[str, Any]] = ""
    is_error: bool = False


class AnthropicThinkingBlock(_Wire):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None  # opaque; we neither issue nor check real signatures


# -- the request ------------------------------------------------------------------------
class AnthropicInputMessage(_Wire):
    """A turn. ``system`` turns (Anthropic's mid-conversation system messages, which Claude
    Code sends) hold text only and are folded into the system prompt by the adapter."""

    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class AnthropicToolSpec(_Wire):
    """A client tool. Server tools (a ``type`` such as ``web_search_20250305``) are refused."""

    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class AnthropicToolChoiceSpec(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None  # accepted; engines decide parallelism


class AnthropicThinkingSpec(_Wire):
    """``enabled`` and ``between_tools`` turn thinking on, ``disabled`` off; ``adaptive``
    leaves the choice to the model's default. ``display: "omitted"`` returns thinking blocks
    with empty text (the reasoning is still generated and billed), any other display the
    whole reasoning."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(None, ge=1)
    display: str | None = None


class AnthropicThinkingTurns(_Wire):
    type: Literal["thinking_turns"]
    value: int = Field(ge=0)


class AnthropicClearThinking(_Wire):
    """The ``clear_thinking_20251015`` edit: keep the thinking of the last ``value``
    assistant turns that have some, or ``all`` (the default keeps one)."""

    type: Literal["clear_thinking_20251015"]
    keep: Literal["all"] | AnthropicThinkingTurns | None = None


class AnthropicContextManagement(_Wire):
    """Context editing. Edits are validated one by one in the adapter: ``clear_thinking``
    is honoured, other edits (``clear_tool_uses_20250919``) are accepted and not applied."""

    edits: list[dict[str, Any]] = Field(default_factory=list)


class AnthropicOutputFormatSpec(_Wire):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class AnthropicOutputConfig(_Wire):
    """Structured outputs (``format``); ``effort`` is accepted and ignored."""

    format: AnthropicOutputFormatSpec | None = None
    effort: str | None = None


class AnthropicMetadata(_Wire):
    user_id: str | None = Field(None, max_length=256)


class _Common(_Wire):
    model: str = Field(min_length=1)
    messages: list[AnthropicInputMessage]
    system: str | list[dict[str, Any]] | None = None
    tools: list[AnthropicToolSpec] | None = None
    tool_choice: AnthropicToolChoiceSpec | None = None
    thinking: AnthropicThinkingSpec | None = None
    output_config: AnthropicOutputConfig | None = None
    context_management: AnthropicContextManagement | None = None


class AnthropicMessagesRequest(_Common):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=1, le=MAX_TOKENS_LIMIT)
    messages: list[AnthropicInputMessage] = Field(min_length=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(
        None, ge=0, description="Accepted and ignored: the engines take no top_k."
    )
    stream: bool = False
    metadata: AnthropicMetadata | None = None


class AnthropicCountTokensRequest(_Common):
    """``POST /v1/messages/count_tokens``: a Messages request without sampling fields."""

    messages: list[AnthropicInputMessage] = Field(min_length=1)
