"""Tool calling for models without a tool format of their own (such as the embedded
SmolLM2): the tools are described in a system message, and llama.cpp's grammar-constrained
sampling forces the reply to be JSON of one of two shapes, so a client that asks for a tool
always gets a well-formed call:

    {"tool_calls": [{"name": "<tool>", "arguments": {...}}, ...]}    a call (or several)
    {"content": "<text>"}                                            an answer (tool_choice auto)

The JSON is compact (no whitespace between tokens: the engine's grammar allows none, so
none is generated or billed), and every object holds only the properties its schema lists
unless the schema says otherwise (a small model given room for extra keys fills it).

A reply cut short (``max_tokens``) is read as far as it goes and never passed on as text:
the answer so far, or the calls so far, where the last call counts once its name is whole
(its arguments are the JSON text written so far). See docs/api.md.

The conversation history is flattened to roles every chat template knows: earlier calls
become assistant turns holding that JSON, and tool results become user turns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from openmaas.core.types import Message, Role, Tool, ToolCall, ToolChoice, ToolChoiceKind

_INSTRUCTIONS = (
    "You can call these tools. Each is given as a JSON object with its name, what it does, "
    "and a JSON Schema of its arguments:\n{tools}\n\n{rule} Reply with JSON only: "
    '{{"tool_calls":[{{"name":<tool name>,"arguments":<object>}}]}} to call tools{answer}.'
)
_COMPACT = (",", ":")
_RULES = {
    ToolChoiceKind.AUTO: "Call a tool when it helps answer the user; otherwise answer directly.",
    ToolChoiceKind.REQUIRED: "You must call at least one tool.",
    ToolChoiceKind.NAMED: "You must call the tool '{name}', once.",
}


def offered(tools: tuple[Tool, ...], choice: ToolChoice) -> tuple[Tool, ...]:
    """The tools the model may call under ``choice``."""
    if choice.kind is ToolChoiceKind.NAMED:
        return tuple(t for t in tools if t.name == choice.name)
    return tools


def system_prompt(tools: tuple[Tool, ...], choice: ToolChoice) -> str:
    listing = "\n".join(
        _dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
        for t in offered(tools, choice)
    )
    auto = choice.kind is ToolChoiceKind.AUTO
    answer = ', or {"content":<your answer>} to answer' if auto else ""
    rule = _RULES[choice.kind].format(name=choice.name)
    return _INSTRUCTIONS.format(tools=listing, rule=rule, answer=answer)


def reply_schema(tools: tuple[Tool, ...], choice: ToolChoice) -> dict[str, Any]:
    """The JSON Schema the reply is constrained to."""
    call = {
        "anyOf": [
            _closed(
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        "arguments": t.parameters or {"type": "object"},
                    },
                    "required": ["name", "arguments"],
                }
            )
            for t in offered(tools, choice)
        ]
    }
    array: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if choice.kind is ToolChoiceKind.NAMED:
        # One call of the named tool (as OpenAI and Anthropic make it); left free, a small
        # model tends to repeat the same call until max_tokens.
        array["maxItems"] = 1
    calls = {
        "type": "object",
        "properties": {"tool_calls": array},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if choice.kind is not ToolChoiceKind.AUTO:
        return calls
    answer = {
        "type": "object",
        "properties": {"content": {"type": "string"}},
        "required": ["content"],
        "additionalProperties": False,
    }
    return {"anyOf": [calls, answer]}


def _closed(schema: Any) -> Any:
    """A copy of ``schema`` whose objects with listed properties admit no others, unless
    they say so themselves (what llama.cpp's own GBNF conversion assumes, and OpenAI's
    strict mode requires). Branches of ``allOf`` are left open: they are intersected."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _closed(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("items", "anyOf", "oneOf", "prefixItems"):
        if key in out:
            out[key] = _closed(out[key])
    for key in ("$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {k: _closed(v) for k, v in out[key].items()}
    return out


def plain_messages(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    """The history in system/user/assistant turns only."""
    out: list[dict[str, str]] = []
    for m in messages:
        if m.role is Role.TOOL:
            out.append(
                {"role": "user", "content": f"Result of tool call {m.tool_call_id}: {m.content}"}
            )
        elif m.tool_calls:
            calls = [{"name": c.name, "arguments": _object(c.arguments)} for c in m.tool_calls]
            out.append({"role": "assistant", "content": _dumps({"tool_calls": calls})})
        else:
            out.append({"role": m.role.value, "content": m.content})
    return out


@dataclass(frozen=True, slots=True)
class Reply:
    """What a constrained reply says. ``complete`` is False when the JSON was cut short (by
    ``max_tokens``): ``content`` is then the answer so far, and ``calls`` the calls so far."""

    content: str | None
    calls: tuple[ToolCall, ...]
    complete: bool


def parse_reply(text: str, call_id_prefix: str) -> Reply:
    """Read a constrained reply, whole or cut short; the wrapper itself is never returned as
    text. (Text that is not JSON of the wrapper's shape at all, which the grammar rules out,
    is returned as the answer.)"""
    try:
        whole = json.loads(text)
        complete = True
    except json.JSONDecodeError:
        whole, complete = None, False
    if complete and not _is_wrapper(whole):
        return Reply(text, (), True)
    if not complete and text.lstrip()[:1] not in ("", "{"):
        return Reply(text, (), True)
    content, calls = _Scanner(text).reply()
    return Reply(
        content,
        tuple(
            ToolCall(f"call_{call_id_prefix}_{i}", name, arguments)
            for i, (name, arguments) in enumerate(calls)
        ),
        complete,
    )


def _is_wrapper(reply: Any) -> bool:
    return isinstance(reply, dict) and (
        isinstance(reply.get("tool_calls"), list) or isinstance(reply.get("content"), str)
    )


class _Cut(Exception):
    """The text ends (or stops making sense) here."""


class _Scanner:
    """Reads the wrapper JSON as far as it goes: whole values through ``json``'s own
    decoder, and where the text ends, whatever is whole before that point."""

    _decoder = json.JSONDecoder()

    def __init__(self, text: str) -> None:
        self._text = text
        self._at = 0

    def reply(self) -> tuple[str | None, list[tuple[str, str]]]:
        content: str | None = None
        calls: list[tuple[str, str]] = []
        try:
            self._expect("{")
            while True:
                key = self._key()
                if key == "content":
                    content = self._string_so_far()
                elif key == "tool_calls":
                    self._calls(calls)
                else:
                    self._value()
                if not self._next_member("}"):
                    break
        except _Cut:
            pass
        return content, calls

    def _calls(self, calls: list[tuple[str, str]]) -> None:
        self._expect("[")
        if self._peek() == "]":
            self._at += 1
            return
        while True:
            self._call(calls)
            if not self._next_member("]"):
                return

    def _call(self, calls: list[tuple[str, str]]) -> None:
        """One call; appended once its name is whole, with its arguments as far as they go
        (a whole call without arguments has ``{}``)."""
        self._expect("{")
        name: str | None = None
        arguments: str | None = None
        closed = False
        try:
            while True:
                key = self._key()
                if key == "name":
                    value = self._value()
                    name = value if isinstance(value, str) else json.dumps(value)
                elif key == "arguments":
                    self._peek()
                    start = self._at
                    try:
                        self._value()
                    except _Cut:
                        arguments = self._text[start:].rstrip()
                        raise
                    arguments = self._text[start : self._at]
                else:
                    self._value()
                if not self._next_member("}"):
                    closed = True
                    return
        finally:
            if name is not None:
                calls.append((name, arguments or ("{}" if closed else "")))

    # -- tokens ----------------------------------------------------------------------
    def _peek(self) -> str:
        while self._at < len(self._text) and self._text[self._at] in " \t\r\n":
            self._at += 1
        if self._at >= len(self._text):
            raise _Cut
        return self._text[self._at]

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise _Cut
        self._at += 1

    def _next_member(self, close: str) -> bool:
        """After a member: True for a comma (another follows), False for ``close``."""
        char = self._peek()
        self._at += 1
        if char == ",":
            return True
        if char == close:
            return False
        raise _Cut

    def _key(self) -> str:
        key = self._value()
        if not isinstance(key, str):
            raise _Cut
        self._expect(":")
        return key

    def _value(self) -> Any:
        self._peek()
        try:
            value, self._at = self._decoder.raw_decode(self._text, self._at)
        except json.JSONDecodeError:
            raise _Cut from None
        return value

    def _string_so_far(self) -> str:
        """A string value, or as much of it as there is (an escape cut in half left out)."""
        if self._peek() != '"':
            raise _Cut
        try:
            return str(self._value())
        except _Cut:
            rest = self._text[self._at + 1 :]
        for end in range(len(rest), max(len(rest) - 6, 0) - 1, -1):
            try:
                return str(json.loads(f'"{rest[:end]}"'))
            except json.JSONDecodeError:
                continue
        raise _Cut


def needs_flattening(messages: tuple[Message, ...]) -> bool:
    return any(m.role is Role.TOOL or m.tool_calls for m in messages)


def _object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return {}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=_COMPACT)
