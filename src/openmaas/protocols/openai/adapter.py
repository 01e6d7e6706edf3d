"""OpenAI wire JSON <-> core types."""

from __future__ import annotations

import base64
import struct
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from openmaas.core.assembly import Assembler
from openmaas.core.embeddings import checked_inputs
from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    Message,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    Thinking,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceKind,
    Usage,
)
from openmaas.core.validation import blamed_field
from openmaas.protocols.openai.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequestBody,
    ResponseFormatSpec,
)

W = TypeVar("W", bound=BaseModel)


def parse_body(raw: bytes, model: type[W]) -> W:
    """Decode and validate a request body; errors name the offending field."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        param, error = blamed_field(exc)
        raise InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param) from None


# -- requests ---------------------------------------------------------------------------
def _common_sampling(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> SamplingParams:
    stop: tuple[str, ...] = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
        n=body.n or 1,
    )


def chat_request(body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    if body.logprobs:
        raise InvalidRequest("logprobs are not supported.", param="logprobs")
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise InvalidRequest(
            "Set either max_tokens or max_completion_tokens, not two different values.",
            param="max_completion_tokens",
        )
    max_tokens = body.max_completion_tokens or body.max_tokens
    messages = tuple(_message(m, i) for i, m in enumerate(body.messages))
    tools = tuple(
        Tool(t.function.name, t.function.description, t.function.parameters)
        for t in body.tools or ()
    )
    return GenerationRequest(
        request_id=request_id,
        model=body.model,
        messages=messages,
        sampling=_common_sampling(body, max_tokens),
        response_format=_response_format(body.response_format),
        user=body.user,
        tools=tools,
        tool_choice=_tool_choice(body, tools),
        thinking=_thinking(body),
        stream=body.stream,
    )


def _tool_choice(body: ChatCompletionRequest, tools: tuple[Tool, ...]) -> ToolChoice:
    choice = body.tool_choice
    if choice is None or choice == "auto":
        return ToolChoice()
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs 'tools'.", param="tool_choice")
        return ToolChoice(ToolChoiceKind(choice))
    if choice.function.name not in {t.name for t in tools}:
        raise InvalidRequest(
            f"tool_choice names '{choice.function.name}', which is not among 'tools'.",
            param="tool_choice.function.name",
        )
    return ToolChoice(ToolChoiceKind.NAMED, choice.function.name)


def _thinking(body: ChatCompletionRequest) -> Thinking:
    """Thinking controls, in the spellings clients use: vLLM's chat_template_kwargs,
    Zhipu's thinking object, and reasoning_effort "none"."""
    kwargs = body.chat_template_kwargs or {}
    enabled = kwargs.get("enable_thinking")
    clear = kwargs.get("clear_thinking")
    if body.thinking is not None:
        enabled = body.thinking.type == "enabled"
        clear = body.thinking.clear_thinking if body.thinking.clear_thinking is not None else clear
    if body.reasoning_effort == "none":
        enabled = False
    return Thinking(
        enabled=None if enabled is None else bool(enabled),
        clear_thinking=None if clear is None else bool(clear),
    )


def _message(message: ChatMessage, index: int) -> Message:
    role = Role.SYSTEM if message.role == "developer" else Role(message.role)
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    if role is Role.TOOL and not message.tool_call_id:
        raise InvalidRequest(
            "A tool message needs the 'tool_call_id' it answers.",
            param=f"messages[{index}].tool_call_id",
        )
    calls = tuple(
        ToolCall(call.id, call.function.name, _json_object_text(call.function.arguments, index, j))
        for j, call in enumerate(message.tool_calls or ())
    )
    return Message(
        role=role,
        content=content or "",
        reasoning=message.reasoning_content,
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def _json_object_text(arguments: str, index: int, call: int) -> str:
    try:
        if isinstance(orjson.loads(arguments), dict):
            return arguments
    except orjson.JSONDecodeError:
        pass
    raise InvalidRequest(
        "Tool-call arguments must be a JSON object.",
        param=f"messages[{index}].tool_calls[{call}].function.arguments",
    )


def _response_format(spec: ResponseFormatSpec | None) -> ResponseFormat:
    if spec is None or spec.type == "text":
        return ResponseFormat()
    if spec.type == "json_object":
        return ResponseFormat(ResponseFormatKind.JSON_OBJECT)
    if spec.json_schema is None:
        raise InvalidRequest(
            "response_format.json_schema is required when type is json_schema.",
            param="response_format.json_schema",
        )
    return ResponseFormat(
        ResponseFormatKind.JSON_SCHEMA, spec.json_schema.schema_, spec.json_schema.name
    )


def completion_request(body: CompletionRequest, request_id: str) -> GenerationRequest:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("Exactly one prompt per request is supported.", param="prompt")
        prompt = prompt[0]
    for field in ("echo", "suffix", "logprobs"):
        value = getattr(body, field)
        if value is not None and value is not False:  # logprobs=0 is a real request too
            raise InvalidRequest(f"'{field}' is not supported.", param=field)
    return GenerationRequest(
        request_id=request_id,
        model=body.model,
        prompt=prompt,
        sampling=_common_sampling(body, body.max_tokens),
        user=body.user,
        stream=body.stream,
    )


def embedding_request(
    body: EmbeddingRequestBody, request_id: str, native_dimensions: int | None
) -> EmbeddingRequest:
    inputs = checked_inputs(
        body.input, body.model, body.dimensions, native_dimensions, token_ids=True
    )
    return EmbeddingRequest(request_id, body.model, inputs, body.user)


# -- responses --------------------------------------------------------------------------
def usage_json(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
    if usage.reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return body


def chat_completion(request_id: str, model: str, created: int, answer: Assembler) -> dict[str, Any]:
    """The chat completion, one choice per ``n``; its usage sums them all."""
    assert answer.finished is not None
    choices = []
    for index, (choice, reason) in enumerate(answer.choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text}
        if choice.reasoning is not None:
            message["reasoning_content"] = choice.reasoning
        if choice.tool_calls:
            message["content"] = choice.text or None
            message["tool_calls"] = [tool_call_json(call) for call in choice.tool_calls]
        choices.append(
            {"index": index, "message": message, "finish_reason": reason.value, "logprobs": None}
        )
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_json(answer.finished.usage),
    }


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def text_completion(request_id: str, model: str, created: int, answer: Assembler) -> dict[str, Any]:
    assert answer.finished is not None
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": choice.text, "finish_reason": reason.value, "logprobs": None}
            for index, (choice, reason) in enumerate(answer.choices)
        ],
        "usage": usage_json(answer.finished.usage),
    }


def embeddings(model: str, result: EmbeddingResult, encoding: str) -> dict[str, Any]:
    data = []
    for index, vector in enumerate(result.vectors):
        value: Any = list(vector)
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "total_tokens": result.usage.prompt_tokens,
        },
    }


def model_card(
    name: str, owned_by: str, created: int, context_length: int | None = None
) -> dict[str, Any]:
    """A model as ``/v1/models`` lists it; ``context_length`` (as OpenRouter, LM Studio and
    others name it) is the tokens one request may read and write together, when known."""
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": owned_by}
    if context_length is not None:
        card["context_length"] = context_length
    return card
