"""Zhipu paas/v4 request bodies, validated. Unknown fields are ignored (the SDKs send new
ones often); fields we cannot honour are refused by name. Explicit ``null`` for
``thinking`` and ``response_format`` (which the SDKs send on every call) means "absent"."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openmaas.core.types import MAX_TOKENS_LIMIT


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ZhipuContentPart(_Wire):
    type: str
    text: str | None = None


class ZhipuFunctionCall(_Wire):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ZhipuToolCall(_Wire):
    id: str = ""
    type: str = "function"
    function: ZhipuFunctionCall


class ZhipuMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ZhipuContentPart] | None = None
    reasoning_content: str | None = None
    tool_calls: list[ZhipuToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ZhipuFunction(_Wire):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class ZhipuTool(_Wire):
    type: str
    function: ZhipuFunction | None = None


class ZhipuThinking(_Wire):
    type: Literal["enabled", "disabled"] = "enabled"
    clear_thinking: bool | None = None


class ZhipuResponseFormat(_Wire):
    type: Literal["text", "json_object"] = "text"


class ZhipuChatRequest(_Wire):
    model: str = Field(min_length=1)
    messages: list[ZhipuMessage] = Field(min_length=1)
    stream: bool = False
    do_sample: bool = True
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[ZhipuTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tool_stream: bool = False
    thinking: ZhipuThinking | None = None
    response_format: ZhipuResponseFormat | None = None
    request_id: str | None = Field(None, max_length=128)
    user_id: str | None = Field(None, max_length=128)


class ZhipuEmbeddingRequest(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float"] | None = None
    request_id: str | None = Field(None, max_length=128)
    user: str | None = Field(None, max_length=128)
