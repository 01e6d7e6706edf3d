"""OpenAI wire request bodies, validated. Unknown fields are ignored, as OpenAI's SDKs add
new ones often; fields we cannot honour are refused by name rather than silently dropped."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openmaas.core.types import MAX_TOKENS_LIMIT


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class FunctionCall(_Wire):
    name: str
    arguments: str = "{}"


class ToolCallWire(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = Field(
        None, description="Extension: the reasoning of an earlier assistant turn, sent back."
    )


class FunctionSpec(_Wire):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolSpec(_Wire):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: NamedFunction


class ThinkingSpec(_Wire):
    """Extension, as Zhipu's API spells it."""

    type: Literal["enabled", "disabled"] = "enabled"
    clear_thinking: bool | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


class JsonSchemaSpec(_Wire):
    name: str = Field("response", max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormatSpec(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _Sampling(_Wire):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Stop = None
    seed: int | None = None
    n: int | None = Field(1, ge=1)
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = Field(False, description="Extension (as in vLLM): do not stop at EOS.")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    response_format: ResponseFormatSpec | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    reasoning_effort: str | None = None
    thinking: ThinkingSpec | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="Extension, as in vLLM: enable_thinking, clear_thinking."
    )


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_LIMIT)
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None


class EmbeddingRequestBody(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
