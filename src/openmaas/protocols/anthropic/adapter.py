"""Anthropic Messages wire JSON <-> core types.

Mapping decisions (see docs/protocols/anthropic.md):

- ``system`` (a string or text blocks) becomes one leading system message. ``system``
  turns inside ``messages`` (Anthropic's mid-conversation system messages; Claude Code
  sends its environment as one) are folded into it, in order: every chat template takes a
  leading system message, not all take one later. Claude Code's
  ``x-anthropic-billing-header: ...`` text block is dropped: it is attribution for
  Anthropic's billing, not an instruction, and it differs per conversation, so it would
  defeat prompt caching of everything after it.
- In a user turn, ``tool_result`` blocks become tool messages (``tool_call_id`` =
  ``tool_use_id``) and runs of text blocks become user messages, in block order. A result
  with ``is_error`` is sent to the model prefixed with ``"Error: "``.
- In an assistant turn, ``thinking`` blocks become the turn's ``reasoning``, text blocks its
  content, ``tool_use`` blocks its tool calls (arguments = the JSON text of ``input``).
  ``redacted_thinking`` blocks, and thinking blocks with empty text (sent back after
  ``display: "omitted"``), are dropped.
- Multiple text blocks in one message are joined with a newline.
- ``top_k``, ``thinking.budget_tokens`` and ``output_config.effort`` are accepted and
  ignored (no engine takes them); ``output_config.format`` becomes a JSON-schema response
  format.
- ``context_management``: a ``clear_thinking_20251015`` edit drops the reasoning of all but
  the last ``keep`` assistant turns that have some (``"all"`` keeps every one); other edits
  are accepted and not applied. ``thinking.display: "omitted"`` empties the returned
  thinking blocks (``omits_thinking``).
- ``cached_tokens`` are reported as ``cache_read_input_tokens``; ``input_tokens`` excludes
  them, as Anthropic's does.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from openmaas.core.assembly import Assembler
from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
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
    Usage,
)
from openmaas.core.validation import blamed_field
from openmaas.protocols.anthropic.schemas import (
    AnthropicClearThinking,
    AnthropicContextManagement,
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    AnthropicOutputConfig,
    AnthropicTextBlock,
    AnthropicThinkingBlock,
    AnthropicThinkingSpec,
    AnthropicToolChoiceSpec,
    AnthropicToolResultBlock,
    AnthropicToolSpec,
    AnthropicToolUseBlock,
)

W = TypeVar("W", bound=BaseModel)

# Signature carried by the thinking blocks we return. We issue no real (HMAC) signatures
# and accept whatever a client sends back; an empty string is the honest "unsigned".
THINKING_SIGNATURE = ""

_STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}
_UNSUPPORTED_BLOCKS = {"image", "document", "search_result", "server_tool_use", "container_upload"}
# Claude Code's attribution for Anthropic's billing, sent as the first system text block.
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
# What clear_thinking_20251015 keeps when it names no ``keep`` (Anthropic's default).
_CLEAR_THINKING_KEEP = 1


# -- parsing ----------------------------------------------------------------------------
def parse_body(raw: bytes, model: type[W]) -> W:
    """Decode and validate a request body; errors name the offending field."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return _validate(model, data, "")


def _validate(model: type[W], data: Any, prefix: str) -> W:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, error = blamed_field(exc, prefix)
        raise InvalidRequest(f"{field}: {error['msg']}.", param=field) from None


# -- requests ---------------------------------------------------------------------------
def messages_request(
    body: AnthropicMessagesRequest, request_id: str, model: str
) -> GenerationRequest:
    """The core request for ``body``; ``model`` is the served name (aliases resolved)."""
    tools = _tools(body.tools)
    return GenerationRequest(
        request_id=request_id,
        model=model,
        messages=_conversation(body),
        sampling=SamplingParams(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop_sequences or ()),
        ),
        response_format=_response_format(body.output_config),
        user=body.metadata.user_id if body.metadata else None,
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        thinking=_thinking(body.thinking),
        stream=body.stream,
    )


def _conversation(
    body: AnthropicCountTokensRequest | AnthropicMessagesRequest,
) -> tuple[Message, ...]:
    """The system prompt (``system``, then each system turn's text) and the turns."""
    prompt: list[str] = []
    if body.system:
        prompt.append(_system_text(body.system, "system"))
    turns: list[Message] = []
    for index, message in enumerate(body.messages):
        path = f"messages[{index}]"
        if message.role == "system":
            prompt.append(_system_text(message.content, path + ".content"))
        elif message.role == "user":
            turns.extend(_user_turn(message.content, path))
        else:
            turns.append(_assistant_turn(message.content, path))
    keep = _thinking_kept(body.context_management)
    if keep is not None:
        turns = _clear_thinking(turns, keep)
    system = "\n\n".join(text for text in prompt if text)
    return (Message(Role.SYSTEM, system), *turns) if system else tuple(turns)


def _system_text(content: str | list[dict[str, Any]], path: str) -> str:
    if isinstance(content, str):
        return content
    parts = _text_parts(content, path)
    return "\n".join(text for text in parts if not text.startswith(BILLING_HEADER_PREFIX))


def _thinking_kept(config: AnthropicContextManagement | None) -> int | None:
    """How many assistant turns keep their reasoning under ``clear_thinking_20251015``;
    None keeps every one (no such edit, or ``keep: "all"``)."""
    for i, raw in enumerate(config.edits if config else ()):
        if raw.get("type") != "clear_thinking_20251015":
            continue  # other edits (clear_tool_uses_...) are accepted and not applied
        edit = _validate(AnthropicClearThinking, raw, f"context_management.edits[{i}]")
        if edit.keep == "all":
            return None
        return _CLEAR_THINKING_KEEP if edit.keep is None else edit.keep.value
    return None


def _clear_thinking(turns: list[Message], keep: int) -> list[Message]:
    """The reasoning of all but the last ``keep`` assistant turns that have some dropped."""
    thinking = [i for i, m in enumerate(turns) if m.reasoning is not None]
    cleared = set(thinking[: max(0, len(thinking) - keep)])
    return [replace(m, reasoning=None) if i in cleared else m for i, m in enumerate(turns)]


def _blocks(content: list[dict[str, Any]], path: str) -> list[tuple[str, Any]]:
    """Each block validated, as (its path, the block model)."""
    validated: list[tuple[str, Any]] = []
    kinds: dict[str, type[BaseModel]] = {
        "text": AnthropicTextBlock,
        "tool_use": AnthropicToolUseBlock,
        "tool_result": AnthropicToolResultBlock,
        "thinking": AnthropicThinkingBlock,
    }
    for i, raw in enumerate(content):
        where = f"{path}.content[{i}]"
        kind = raw.get("type")
        if kind == "redacted_thinking":
            continue
        if kind in _UNSUPPORTED_BLOCKS:
            raise InvalidRequest(f"{where}: '{kind}' content blocks are not supported.", where)
        if kind not in kinds:
            raise InvalidRequest(
                f"{where}.type: unknown content block type {kind!r}.", where + ".type"
            )
        validated.append((where, _validate(kinds[kind], raw, where)))
    return validated


def _user_turn(content: str | list[dict[str, Any]], path: str) -> list[Message]:
    if isinstance(content, str):
        return [Message(Role.USER, content)]
    out: list[Message] = []
    texts: list[str] = []
    for where, block in _blocks(content, path):
        if isinstance(block, AnthropicTextBlock):
            texts.append(block.text)
        elif isinstance(block, AnthropicToolResultBlock):
            if texts:
                out.append(Message(Role.USER, "\n".join(texts)))
                texts = []
            result = block.content
            text = result if isinstance(result, str) else _texts(result, where + ".content")
            if block.is_error:
                text = f"Error: {text}"
            out.append(Message(Role.TOOL, text, tool_call_id=block.tool_use_id))
        else:
            raise InvalidRequest(
                f"{where}: '{block.type}' blocks may only appear in assistant messages.", where
            )
    if texts or not out:
        out.append(Message(Role.USER, "\n".join(texts)))
    return out


def _assistant_turn(content: str | list[dict[str, Any]], path: str) -> Message:
    if isinstance(content, str):
        return Message(Role.ASSISTANT, content)
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for where, block in _blocks(content, path):
        if isinstance(block, AnthropicTextBlock):
            texts.append(block.text)
        elif isinstance(block, AnthropicThinkingBlock):
            if block.thinking:  # an omitted one (``display: "omitted"``) is empty
                reasoning.append(block.thinking)
        elif isinstance(block, AnthropicToolUseBlock):
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
        else:
            raise InvalidRequest(
                f"{where}: 'tool_result' blocks may only appear in user messages.", where
            )
    return Message(
        Role.ASSISTANT,
        "\n".join(texts),
        reasoning="\n".join(reasoning) if reasoning else None,
        tool_calls=tuple(calls),
    )


def _texts(blocks: list[dict[str, Any]], path: str) -> str:
    """The text of a list that may hold only text blocks (system, tool_result content)."""
    return "\n".join(_text_parts(blocks, path))


def _text_parts(blocks: list[dict[str, Any]], path: str) -> list[str]:
    parts: list[str] = []
    for i, raw in enumerate(blocks):
        where = f"{path}[{i}]"
        if raw.get("type") != "text":
            raise InvalidRequest(f"{where}: only text blocks are supported here.", where)
        parts.append(_validate(AnthropicTextBlock, raw, where).text)
    return parts


def _tools(specs: list[AnthropicToolSpec] | None) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for i, spec in enumerate(specs or ()):
        if spec.type not in (None, "custom"):
            raise InvalidRequest(
                f"tools[{i}].type: server tool '{spec.type}' is not supported.", f"tools[{i}].type"
            )
        if spec.input_schema is None:
            raise InvalidRequest(
                f"tools[{i}].input_schema: Field required.", f"tools[{i}].input_schema"
            )
        tools.append(Tool(spec.name, spec.description, spec.input_schema))
    return tuple(tools)


def _tool_choice(spec: AnthropicToolChoiceSpec | None, tools: tuple[Tool, ...]) -> ToolChoice:
    if spec is None or spec.type == "auto":
        return ToolChoice(ToolChoiceKind.AUTO)
    if spec.type == "none":
        return ToolChoice(ToolChoiceKind.NONE)
    if spec.type == "any":
        return ToolChoice(ToolChoiceKind.REQUIRED)
    if not spec.name:
        raise InvalidRequest("tool_choice.name: required when type is 'tool'.", "tool_choice.name")
    if spec.name not in {tool.name for tool in tools}:
        raise InvalidRequest(
            f"tool_choice.name: no tool named '{spec.name}' in 'tools'.", "tool_choice.name"
        )
    return ToolChoice(ToolChoiceKind.NAMED, spec.name)


def _thinking(spec: AnthropicThinkingSpec | None) -> Thinking:
    if spec is None or spec.type == "adaptive":
        return Thinking()
    return Thinking(enabled=spec.type != "disabled")


def omits_thinking(body: AnthropicMessagesRequest) -> bool:
    """``thinking.display: "omitted"``: thinking blocks come back with empty text."""
    return body.thinking is not None and body.thinking.display == "omitted"


def _response_format(config: AnthropicOutputConfig | None) -> ResponseFormat:
    if config is None or config.format is None:
        return ResponseFormat()
    return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, config.format.schema_)


def count_request(
    body: AnthropicCountTokensRequest, request_id: str, model: str
) -> GenerationRequest:
    """The core request whose prompt ``count_tokens`` measures: the conversation, tools and
    thinking mode, as ``messages_request`` would send them."""
    tools = _tools(body.tools)
    return GenerationRequest(
        request_id=request_id,
        model=model,
        messages=_conversation(body),
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        thinking=_thinking(body.thinking),
    )


# -- responses --------------------------------------------------------------------------
def usage_json(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` excludes the tokens read from the prompt cache."""
    return {
        "input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def stop_reason(reason: FinishReason, called_tools: bool) -> str:
    if called_tools and reason is FinishReason.STOP:
        return "tool_use"
    return _STOP_REASONS[reason]


def tool_input(arguments: str, *, cut: bool = False) -> dict[str, Any]:
    """A tool call's ``input`` object. Text that is not a JSON object (a model's mistake)
    is passed on unparsed as ``{"_raw": text}`` rather than lost. Arguments ``cut`` short
    by max_tokens give the members whose values are whole, as the anthropic SDK assembles
    the same arguments streamed as ``input_json_delta`` fragments."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        if not cut:
            return {"_raw": arguments}
        try:
            value = from_json(arguments, allow_partial=True)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return value if isinstance(value, dict) else {"_raw": arguments}


def message_response(
    request_id: str, model: str, answer: Assembler, *, omit_thinking: bool = False
) -> dict[str, Any]:
    """The non-streamed ``message`` object; ``omit_thinking`` empties its thinking block."""
    assert answer.finished is not None
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        thinking = "" if omit_thinking else answer.reasoning
        content.append({"type": "thinking", "thinking": thinking, "signature": THINKING_SIGNATURE})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    calls = answer.tool_calls
    cut = answer.finished.reason is FinishReason.LENGTH
    for index, call in enumerate(calls):
        content.append(
            {
                "type": "tool_use",
                "id": call.id or tool_use_id(request_id, index),
                "name": call.name,
                "input": tool_input(call.arguments, cut=cut),
            }
        )
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(answer.finished.reason, bool(calls)),
        "stop_sequence": None,
        "usage": usage_json(answer.finished.usage),
    }


def tool_use_id(request_id: str, index: int) -> str:
    """An id for a tool call whose engine gave none."""
    return f"toolu_{request_id}_{index}"
