"""Tool calling for models without a tool format of their own (such as the embedded
SmolLM2): the tools are described in a system message, and llama.cpp's grammar-constrained
sampling forces the reply to be JSON of one of two shapes, so a client that asks for a tool
always gets a well-formed call:

    {"tool_calls": [{"name": "<tool>", "arguments": {...}}, ...]}    a call (or several)
    {"content": "<text>"}                                            an answer (tool_choice auto)

The conversation history is flattened to roles every chat template knows: earlier calls
become assistant turns holding that JSON, and tool results become user turns.
"""

from __future__ import annotations

import json
from typing import Any

from openmaas.core.types import Message, Role, Tool, ToolCall, ToolChoice, ToolChoiceKind

_INSTRUCTIONS = (
    "You can call these tools. Each is given as a JSON object with its name, what it does, "
    "and a JSON Schema of its arguments:\n{tools}\n\n{rule} Reply with JSON only: "
    '{{"tool_calls": [{{"name": <tool name>, "arguments": <object>}}]}} to call tools{answer}.'
)
_RULES = {
    ToolChoiceKind.AUTO: "Call a tool when it helps answer the user; otherwise answer directly.",
    ToolChoiceKind.REQUIRED: "You must call at least one tool.",
    ToolChoiceKind.NAMED: "You must call the tool '{name}'.",
}


def offered(tools: tuple[Tool, ...], choice: ToolChoice) -> tuple[Tool, ...]:
    """The tools the model may call under ``choice``."""
    if choice.kind is ToolChoiceKind.NAMED:
        return tuple(t for t in tools if t.name == choice.name)
    return tools


def system_prompt(tools: tuple[Tool, ...], choice: ToolChoice) -> str:
    listing = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
        for t in offered(tools, choice)
    )
    answer = (
        ', or {"content": <your answer>} to answer' if choice.kind is ToolChoiceKind.AUTO else ""
    )
    rule = _RULES[choice.kind].format(name=choice.name)
    return _INSTRUCTIONS.format(tools=listing, rule=rule, answer=answer)


def reply_schema(tools: tuple[Tool, ...], choice: ToolChoice) -> dict[str, Any]:
    """The JSON Schema the reply is constrained to."""
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": t.parameters or {"type": "object"},
                },
                "required": ["name", "arguments"],
            }
            for t in offered(tools, choice)
        ]
    }
    calls = {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1}},
        "required": ["tool_calls"],
    }
    if choice.kind is not ToolChoiceKind.AUTO:
        return calls
    answer = {
        "type": "object",
        "properties": {"content": {"type": "string"}},
        "required": ["content"],
    }
    return {"anyOf": [calls, answer]}


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
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls})})
        else:
            out.append({"role": m.role.value, "content": m.content})
    return out


def parse_reply(text: str, call_id_prefix: str) -> tuple[str | None, tuple[ToolCall, ...]]:
    """(answer text, calls) from a constrained reply. A reply cut short (max_tokens) that is
    not complete JSON is returned as text."""
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        return text, ()
    if not isinstance(reply, dict):
        return text, ()
    if isinstance(reply.get("tool_calls"), list):
        calls = tuple(
            ToolCall(
                f"call_{call_id_prefix}_{i}",
                str(c.get("name", "")),
                json.dumps(c.get("arguments") or {}),
            )
            for i, c in enumerate(reply["tool_calls"])
            if isinstance(c, dict)
        )
        return None, calls
    content = reply.get("content")
    return (content if isinstance(content, str) else text), ()


def needs_flattening(messages: tuple[Message, ...]) -> bool:
    return any(m.role is Role.TOOL or m.tool_calls for m in messages)


def _object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return {}
