"""Zhipu paas/v4 wire JSON <-> core types (requests, non-streamed responses)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from openmaas.core.assembly import Assembler
from openmaas.core.embeddings import checked_inputs
from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
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
)
from openmaas.core.validation import blamed_field

# Zhipu's usage object and model list have OpenAI's shape exactly (reference §2, §4).
from openmaas.protocols.openai.adapter import model_card as model_card
from openmaas.protocols.openai.adapter import usage_json as usage_json
from openmaas.protocols.zhipu.schemas import (
    ZhipuChatRequest,
    ZhipuEmbeddingRequest,
    ZhipuMessage,
)

W = TypeVar("W", bound=BaseModel)

# Zhipu's finish reasons for ours ("sensitive" is its name for a moderation cut).
FINISH_REASONS: dict[FinishReason, str] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "sensitive",
}


class MissingField(InvalidRequest):
    """A required field is absent (Zhipu code 1213; other invalid fields are 1214)."""


class MalformedBody(InvalidRequest):
    """The body is not a JSON object at all (Zhipu code 1210)."""


def parse_body(raw: bytes, model: type[W]) -> W:
    """Decode and validate a request body; errors name the offending field."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise MalformedBody("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        param, error = blamed_field(exc)
        if error["type"] == "missing":
            raise MissingField(f"The field '{param}' is required.", param=param) from None
        raise InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param) from None


# -- requests ---------------------------------------------------------------------------
def chat_request(body: ZhipuChatRequest, request_id: str) -> GenerationRequest:
    """The core request of a chat body. ``do_sample=false`` means greedy decoding."""
    stop: tuple[str, ...] = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    greedy = not body.do_sample
    sampling = SamplingParams(
        max_tokens=body.max_tokens,
        temperature=0.0 if greedy else body.temperature,
        top_p=None if greedy else body.top_p,
        stop=stop,
        seed=body.seed,
    )
    thinking = Thinking()
    if body.thinking is not None:
        thinking = Thinking(body.thinking.type == "enabled", body.thinking.clear_thinking)
    fmt = ResponseFormat()
    if body.response_format is not None and body.response_format.type == "json_object":
        fmt = ResponseFormat(ResponseFormatKind.JSON_OBJECT)
    return GenerationRequest(
        request_id=request_id,
        model=body.model,
        messages=tuple(_message(m, i) for i, m in enumerate(body.messages)),
        sampling=sampling,
        response_format=fmt,
        user=body.user_id,
        tools=_tools(body),
        tool_choice=_tool_choice(body.tool_choice),
        thinking=thinking,
        stream=body.stream,
    )


def _tools(body: ZhipuChatRequest) -> tuple[Tool, ...]:
    tools = []
    for index, spec in enumerate(body.tools or ()):
        if spec.type != "function":
            raise InvalidRequest(
                f"Tools of type '{spec.type}' are not supported; only 'function'.",
                param=f"tools[{index}].type",
            )
        if spec.function is None:
            raise MissingField(
                "A function tool needs 'function'.", param=f"tools[{index}].function"
            )
        fn = spec.function
        tools.append(Tool(fn.name, fn.description, fn.parameters))
    return tuple(tools)


def _tool_choice(choice: str | dict[str, Any] | None) -> ToolChoice:
    if choice is None or choice == "auto":
        return ToolChoice()
    if choice == "none":
        return ToolChoice(ToolChoiceKind.NONE)
    if choice == "required":
        return ToolChoice(ToolChoiceKind.REQUIRED)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") == "function" and isinstance(name, str) and name:
            return ToolChoice(ToolChoiceKind.NAMED, name)
    raise InvalidRequest(
        "'tool_choice' must be 'auto', 'none', 'required' or a named function.",
        param="tool_choice",
    )


def _message(message: ZhipuMessage, index: int) -> Message:
    content = message.content
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            if part.type != "text" or part.text is None:
                raise InvalidRequest(
                    f"Content parts of type '{part.type}' are not supported; only 'text'.",
                    param=f"messages[{index}].content[{part_index}].type",
                )
            texts.append(part.text)
        content = "".join(texts)
    calls = tuple(
        ToolCall(
            call.id,
            call.function.name,
            call.function.arguments
            if isinstance(call.function.arguments, str)
            else orjson.dumps(call.function.arguments).decode(),
        )
        for call in message.tool_calls or ()
    )
    return Message(
        role=Role(message.role),
        content=content or "",
        reasoning=message.reasoning_content,
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def embedding_request(
    body: ZhipuEmbeddingRequest, request_id: str, native_dimensions: int | None
) -> EmbeddingRequest:
    inputs = checked_inputs(body.input, body.model, body.dimensions, native_dimensions)
    return EmbeddingRequest(request_id, body.model, inputs, body.user)


# -- responses --------------------------------------------------------------------------
def tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if index is not None:
        body["index"] = index
    return body


def choices_json(answer: Assembler) -> list[dict[str, Any]]:
    assert answer.finished is not None
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.reasoning is not None:
        message["reasoning_content"] = answer.reasoning
    if answer.tool_calls:
        message["content"] = answer.text or None
        message["tool_calls"] = [tool_call_json(call) for call in answer.tool_calls]
    reason = FINISH_REASONS[answer.finished.reason]
    return [{"index": 0, "finish_reason": reason, "message": message}]


def chat_completion(
    response_id: str, client_request_id: str | None, model: str, created: int, answer: Assembler
) -> dict[str, Any]:
    """A non-streamed answer; ``request_id`` echoes the client's (else our id)."""
    assert answer.finished is not None
    return {
        "id": response_id,
        "request_id": client_request_id or response_id,
        "created": created,
        "model": model,
        "object": "chat.completion",
        "choices": choices_json(answer),
        "usage": usage_json(answer.finished.usage),
    }


def embeddings(model: str, result: EmbeddingResult) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": list(vector)}
            for index, vector in enumerate(result.vectors)
        ],
        "model": model,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": 0,
            "total_tokens": result.usage.prompt_tokens,
        },
    }
