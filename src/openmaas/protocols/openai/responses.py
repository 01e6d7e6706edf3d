"""The OpenAI Responses API (``POST /v1/responses``): the request body, its input items as
core messages, and the output items and response object built from a generation's events.

A conversation is a list of *items* (messages, function calls and their outputs, reasoning).
A request's context is the stored conversation of its ``previous_response_id`` (if any),
then its own ``input`` items, after its ``instructions`` as a system message (instructions
are never carried over, as OpenAI documents). What is stored for the next turn is that
list of items plus the response's output items (``serving`` side: ``server/routes/
responses.py``). The SSE events are in ``responses_sse.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
    MAX_TOKENS_LIMIT,
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    ReasoningDelta,
    ResponseFormat,
    ResponseFormatKind,
    Role,
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
from openmaas.core.validation import blamed_field

RESPONSE_PREFIX = "resp_"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NamedFunctionChoice(_Wire):
    type: Literal["function"]
    name: str


class ReasoningSpec(_Wire):
    effort: str | None = None  # "none" turns thinking off; any other effort turns it on
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # its old name


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = Field("response", max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextSpec(_Wire):
    format: TextFormat | None = None


class ResponsesRequest(_Wire):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningSpec | None = None
    text: TextSpec | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    top_logprobs: int | None = None

    @property
    def summary(self) -> str | None:
        """The reasoning summary asked for, if any."""
        if self.reasoning is None:
            return None
        return self.reasoning.summary or self.reasoning.generate_summary


def check_supported(body: ResponsesRequest) -> None:
    """Refuse by name what is not served, rather than ignore it."""
    if body.background:
        raise InvalidRequest("Background responses are not supported.", param="background")
    if body.conversation is not None:
        raise InvalidRequest(
            "Conversations are not supported; continue with 'previous_response_id'.",
            param="conversation",
        )
    if body.prompt is not None:
        raise InvalidRequest("Prompt templates are not supported.", param="prompt")
    if body.top_logprobs:
        raise InvalidRequest("logprobs are not supported.", param="top_logprobs")


# -- input items ------------------------------------------------------------------------
class _TextPart(_Wire):
    type: str
    text: str | None = None
    refusal: str | None = None


class _MessageItem(_Wire):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[_TextPart]


class _FunctionCallItem(_Wire):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = "{}"
    id: str | None = None


class _FunctionOutputItem(_Wire):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[_TextPart]


class _ReasoningPart(_Wire):
    type: str
    text: str = ""


class _ReasoningItem(_Wire):
    type: Literal["reasoning"]
    summary: list[_ReasoningPart] = Field(default_factory=list)
    content: list[_ReasoningPart] | None = None


_Item = _MessageItem | _FunctionCallItem | _FunctionOutputItem | _ReasoningItem
_ITEM_TYPES: dict[str, type[_Item]] = {
    "message": _MessageItem,
    "function_call": _FunctionCallItem,
    "function_call_output": _FunctionOutputItem,
    "reasoning": _ReasoningItem,
}
_TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "reasoning_text"}


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items (a string is one user message), each checked."""
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    for index, item in enumerate(body.input):
        _parse_item(item, f"input[{index}]")
    return list(body.input)


def _parse_item(item: dict[str, Any], where: str) -> _Item:
    kind = item.get("type", "message")
    model = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidRequest(
            f"Input items of type {kind!r} are not supported; send messages, function calls, "
            "function call outputs and reasoning.",
            param=f"{where}.type",
        )
    try:
        parsed = model.model_validate(item)
    except ValidationError as exc:
        field, error = blamed_field(exc)
        raise InvalidRequest(
            f"Invalid value for '{where}.{field}': {error['msg']}.", param=f"{where}.{field}"
        ) from None
    if isinstance(parsed, _MessageItem | _FunctionOutputItem):
        parts = parsed.content if isinstance(parsed, _MessageItem) else parsed.output
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            if part.type not in _TEXT_PARTS | {"refusal"}:
                raise InvalidRequest(
                    f"Content of type {part.type!r} is not supported; send text.",
                    param=f"{where}.content[{j}].type",
                )
    if isinstance(parsed, _FunctionCallItem):
        _check_arguments(parsed.arguments, f"{where}.arguments")
    return parsed


def _check_arguments(arguments: str, where: str) -> None:
    try:
        if isinstance(orjson.loads(arguments), dict):
            return
    except orjson.JSONDecodeError:
        pass
    raise InvalidRequest("Function-call arguments must be a JSON object.", param=where)


def _text(content: str | list[_TextPart]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.text or part.refusal or "" for part in content)


def messages(instructions: str | None, items: list[dict[str, Any]]) -> tuple[Message, ...]:
    """Core messages of a conversation. An assistant turn gathers the reasoning, text and
    function calls that follow each other; a function call output is a tool turn."""
    out: list[Message] = []
    if instructions:
        out.append(Message(Role.SYSTEM, instructions))
    turn: dict[str, Any] | None = None  # the assistant turn being gathered

    def flush() -> None:
        nonlocal turn
        if turn is not None:
            reasoning = "".join(turn["reasoning"]) if turn["reasoning"] else None
            calls = tuple(turn["calls"])
            out.append(Message(Role.ASSISTANT, "".join(turn["text"]), reasoning, calls))
            turn = None

    def assistant() -> dict[str, Any]:
        nonlocal turn
        if turn is None:
            turn = {"reasoning": [], "text": [], "calls": []}
        return turn

    for index, raw in enumerate(items):
        item = _parse_item(raw, f"input[{index}]")
        if isinstance(item, _ReasoningItem):
            parts = item.content if item.content else item.summary
            assistant()["reasoning"].append("".join(part.text for part in parts))
        elif isinstance(item, _FunctionCallItem):
            assistant()["calls"].append(ToolCall(item.call_id, item.name, item.arguments))
        elif isinstance(item, _MessageItem) and item.role == "assistant":
            if turn is not None and turn["calls"]:
                flush()  # text after calls: the next assistant turn
            assistant()["text"].append(_text(item.content))
        elif isinstance(item, _FunctionOutputItem):
            flush()
            out.append(Message(Role.TOOL, _text(item.output), tool_call_id=item.call_id))
        else:
            assert isinstance(item, _MessageItem)
            flush()
            role = Role.USER if item.role == "user" else Role.SYSTEM
            out.append(Message(role, _text(item.content)))
    flush()
    return tuple(out)


# -- the core request -------------------------------------------------------------------
def generation_request(
    body: ResponsesRequest, items: list[dict[str, Any]], request_id: str
) -> GenerationRequest:
    """The core request of ``body`` over the conversation ``items`` (stored, then input)."""
    conversation = messages(body.instructions, items)
    if not conversation or all(m.role is Role.SYSTEM for m in conversation):
        raise InvalidRequest("'input' must hold at least one message.", param="input")
    tools = _tools(body.tools or [])
    return GenerationRequest(
        request_id=request_id,
        model=body.model,
        messages=conversation,
        sampling=SamplingParams(
            max_tokens=body.max_output_tokens, temperature=body.temperature, top_p=body.top_p
        ),
        response_format=_format(body.text),
        user=body.safety_identifier or body.user,
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        thinking=_thinking(body.reasoning),
        stream=body.stream,
    )


HOSTED_TOOLS = frozenset(
    {
        "web_search", "web_search_preview", "file_search", "code_interpreter",
        "computer_use_preview", "image_generation", "local_shell", "mcp",
    }
)  # fmt: skip
"""Tools OpenAI runs on its own servers: there are none here, so a request that offers
them is served without them (as Codex CLI sends ``web_search`` with every request)."""


def _tools(specs: list[dict[str, Any]], where: str = "tools") -> tuple[Tool, ...]:
    """Function tools, those of a ``namespace`` tool included (by their own names); hosted
    tools (:data:`HOSTED_TOOLS`) are left out; any other type is a 400."""
    tools: list[Tool] = []
    for index, spec in enumerate(specs):
        at = f"{where}[{index}]"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind in HOSTED_TOOLS:
            continue
        if kind == "namespace" and isinstance(spec.get("tools"), list):
            tools += _tools(spec["tools"], f"{at}.tools")
            continue
        if kind != "function":
            raise InvalidRequest(
                f"Tools of type {kind!r} are not supported; only function tools (also "
                "inside a namespace) are, and hosted tools are ignored.",
                param=f"{at}.type",
            )
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("A function tool needs a 'name'.", param=f"{at}.name")
        parameters = spec.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise InvalidRequest(
                "A function tool's 'parameters' must be a JSON Schema object.",
                param=f"{at}.parameters",
            )
        tools.append(Tool(name, str(spec.get("description") or ""), parameters))
    return tuple(tools)


def _tool_choice(choice: str | NamedFunctionChoice | None, tools: tuple[Tool, ...]) -> ToolChoice:
    if choice is None or choice == "auto":
        return ToolChoice()
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs 'tools'.", param="tool_choice")
        return ToolChoice(ToolChoiceKind(choice))
    if choice.name not in {t.name for t in tools}:
        raise InvalidRequest(
            f"tool_choice names '{choice.name}', which is not among 'tools'.",
            param="tool_choice.name",
        )
    return ToolChoice(ToolChoiceKind.NAMED, choice.name)


def _format(text: TextSpec | None) -> ResponseFormat:
    spec = text.format if text is not None else None
    if spec is None or spec.type == "text":
        return ResponseFormat()
    if spec.type == "json_object":
        return ResponseFormat(ResponseFormatKind.JSON_OBJECT)
    if spec.schema_ is None:
        raise InvalidRequest(
            "text.format.schema is required when type is json_schema.", param="text.format.schema"
        )
    return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, spec.schema_, spec.name)


def _thinking(reasoning: ReasoningSpec | None) -> Thinking:
    if reasoning is None or reasoning.effort is None:
        return Thinking()
    return Thinking(enabled=reasoning.effort != "none")


# -- output -----------------------------------------------------------------------------
class Output:
    """The output items of one response, built from its events in the order they come: a
    reasoning item, a message, function calls (each a new item when the kind changes).
    ``event`` says what changed, for the stream's events: ``(opened, closed)`` items."""

    def __init__(self, request_id: str, summary: bool) -> None:
        self._request_id = request_id
        self._summary = summary
        self.items: list[dict[str, Any]] = []
        self._texts: list[list[str]] = []  # per item: its text (message, reasoning, arguments)
        self._calls: dict[int, int] = {}  # a call's index in the stream -> its item's index
        self.finished: Finished | None = None

    @property
    def current(self) -> dict[str, Any] | None:
        return self.items[-1] if self.items else None

    def open(self, kind: str, event: StreamEvent) -> dict[str, Any]:
        """A new item of ``kind`` ("reasoning", "message", "function_call"), in progress."""
        index = len(self.items)
        rid = self._request_id
        item: dict[str, Any]
        if kind == "reasoning":
            item = {"id": f"rs_{rid}_{index}", "type": "reasoning", "summary": []}
        elif kind == "message":
            item = {
                "id": f"msg_{rid}_{index}",
                "type": "message",
                "role": "assistant",
                "content": [],
            }
        else:
            assert isinstance(event, ToolCallDelta)
            item = {
                "id": f"fc_{rid}_{index}",
                "type": "function_call",
                "call_id": event.id or f"call_{rid}_{index}",
                "name": event.name or "",
                "arguments": "",
            }
            self._calls[event.index] = index
        item["status"] = "in_progress"
        self.items.append(item)
        self._texts.append([])
        return item

    def add(self, event: TextDelta | ReasoningDelta | ToolCallDelta) -> tuple[bool, int]:
        """Take ``event``: whether it opened a new item, and the index of its item."""
        current = self.current
        opened = None
        if isinstance(event, ReasoningDelta):
            if current is None or current["type"] != "reasoning":
                opened = self.open("reasoning", event)
        elif isinstance(event, TextDelta):
            if current is None or current["type"] != "message":
                opened = self.open("message", event)
        else:
            if event.id is not None or event.index not in self._calls:
                opened = self.open("function_call", event)
            index = self._calls[event.index]
            self._texts[index].append(event.arguments)
            return opened is not None, index
        self._texts[-1].append(event.text)
        return opened is not None, len(self.items) - 1

    def text_of(self, index: int) -> str:
        return "".join(self._texts[index])

    def close(self, index: int) -> dict[str, Any]:
        """Item ``index`` complete (its text in place), as ``output_item.done`` shows it."""
        item = self.items[index]
        text = self.text_of(index)
        status = "incomplete" if self._cut_short else "completed"
        if item["type"] == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": text}]
            if self._summary:
                item["summary"] = [{"type": "summary_text", "text": text}]
        elif item["type"] == "message":
            item["content"] = [output_text(text)]
        else:
            item["arguments"] = text
        item["status"] = status
        return item

    @property
    def _cut_short(self) -> bool:
        return self.finished is not None and self.finished.reason is FinishReason.LENGTH

    def complete(self) -> list[dict[str, Any]]:
        """Every item complete; a response with no item gets an empty message."""
        if not self.items:
            self.open("message", TextDelta("", 0))
        return [self.close(index) for index in range(len(self.items))]


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    body: ResponsesRequest,
    response_id: str,
    created: int,
    output: list[dict[str, Any]],
    finished: Finished | None,
) -> dict[str, Any]:
    """The response object; ``finished`` None: still in progress (no output yet)."""
    status, incomplete = "in_progress", None
    if finished is not None:
        status = "completed"
        if finished.reason is FinishReason.LENGTH:
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        elif finished.reason is FinishReason.CONTENT_FILTER:
            status, incomplete = "incomplete", {"reason": "content_filter"}
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {
            "effort": body.reasoning.effort if body.reasoning else None,
            "summary": body.summary,
        },
        "store": body.store,
        "temperature": body.temperature,
        "text": {"format": _format_json(fmt)},
        "tool_choice": _tool_choice_json(body.tool_choice),
        "tools": body.tools or [],
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "usage": usage_json(finished.usage) if finished is not None else None,
        "user": body.user,
        "metadata": body.metadata or {},
    }


def _format_json(fmt: TextFormat | None) -> dict[str, Any]:
    if fmt is None:
        return {"type": "text"}
    return fmt.model_dump(by_alias=True, exclude_none=True)


def _tool_choice_json(choice: str | NamedFunctionChoice | None) -> Any:
    if isinstance(choice, NamedFunctionChoice):
        return {"type": "function", "name": choice.name}
    return choice or "auto"
