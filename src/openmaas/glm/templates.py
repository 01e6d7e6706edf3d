"""Render GLM prompts from canonical messages, tools and thinking settings.

Pure functions, written from the documented format facts (design reference §10-§12), not
from any model card's Jinja source. Three families (see :class:`GlmFamily`):

GLM-4.5 / GLM-4.6 (``GLM45``)::

    [gMASK]<sop><|system|>\\n# Tools ...<|system|>\\nBe brief.<|user|>\\nHi<|assistant|>
    \\n<think></think>\\nanswer ...

GLM-4.7 (``GLM47``): the same parts without the newlines, ``</think>`` as the placeholder
for dropped reasoning, and a generation prompt that ends ``<think>`` (thinking on) or
``</think>`` (thinking off).

GLM-4-9B-chat / GLM-4-0414 (``GLM4_9B``): ``<|role|>{metadata}\\n{content}``; a tool call
is an assistant turn whose metadata is the function name followed by the JSON arguments.

Wording note: the reference elides part of the GLM-4.5+ tools instruction with "…". The
sentence :data:`TOOLS_INTRO` is OpenMaaS's own text, not the model card's; everything else
in the tools block (``# Tools``, ``<tools>`` with one JSON object per line, the
"For each function call ..." line and the XML example) follows the reference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from openmaas.core.errors import InvalidRequest
from openmaas.core.types import Message, Role, Thinking, Tool, ToolCall
from openmaas.glm.family import PROMPT_PREFIX, GlmFamily

#: OpenMaaS's own wording (not the model card's) for the elided part of the tools block.
TOOLS_INTRO = (
    "You may call one or more of the functions below to help with the user's request. "
    "Their signatures are listed inside <tools></tools> XML tags:"
)

_FORMAT_LINE = (
    "For each function call, output the function name and arguments within the following "
    "XML format:"
)

_GLM45_CALL_EXAMPLE = (
    "<tool_call>{function-name}\n"
    "<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n"
    "<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n"
    "...\n</tool_call>"
)

_GLM47_CALL_EXAMPLE = (
    "<tool_call>{function-name}"
    "<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value>"
    "<arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>"
    "...</tool_call>"
)

#: GLM-4-9B tool-section heading and per-tool trailer (both verbatim from the reference).
_GLM4_TOOLS_HEADING = "# 可用工具"
_GLM4_TOOL_TRAILER = "在调用上述函数时，请使用 Json 格式表示调用的参数。"


# --------------------------------------------------------------------------- helpers


def tool_schema(tool: Tool) -> dict[str, Any]:
    """The OpenAI-shaped ``{"type": "function", "function": {...}}`` object of ``tool``.

    ``description`` is left out when empty; ``parameters`` is always present.
    """
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def parse_arguments(call: ToolCall, where: str = "tool_calls") -> dict[str, Any]:
    """``call.arguments`` (JSON text of an object) as a dict; empty text means ``{}``.

    Raises :class:`InvalidRequest` (naming ``where``) when the text is not a JSON object:
    the templates iterate the arguments as key/value pairs and cannot render anything else.
    """
    text = call.arguments.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(
            f"Tool call '{call.name}' has arguments that are not valid JSON: {exc}", param=where
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"Tool call '{call.name}' arguments must be a JSON object.", param=where
        )
    return value


def format_arg_value(value: Any) -> str:
    """A string argument is emitted raw; any other value as JSON (``ensure_ascii=False``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def split_reasoning(message: Message) -> tuple[str | None, str]:
    """``(reasoning, content)`` of an assistant message.

    ``message.reasoning`` wins when set. Otherwise, when the content (after leading
    whitespace) starts with ``<think>`` and contains ``</think>``, the text between them is
    the reasoning and the text after the first ``</think>`` (leading newlines removed) is the
    content.
    """
    if message.reasoning is not None:
        return message.reasoning, message.content
    content = message.content
    stripped = content.lstrip()
    if stripped.startswith("<think>") and "</think>" in stripped:
        head, _, tail = stripped[len("<think>") :].partition("</think>")
        return head.strip("\n"), tail.lstrip("\n")
    return None, content


def _last_user_index(messages: Sequence[Message]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role is Role.USER:
            return index
    return -1


def _tools_block(tools: Sequence[Tool], family: GlmFamily) -> str:
    lines = "\n".join(json.dumps(tool_schema(t), ensure_ascii=False) for t in tools)
    example = _GLM45_CALL_EXAMPLE if family is GlmFamily.GLM45 else _GLM47_CALL_EXAMPLE
    return (
        f"<|system|>\n# Tools\n\n{TOOLS_INTRO}\n<tools>\n{lines}\n</tools>\n\n"
        f"{_FORMAT_LINE}\n{example}"
    )


# --------------------------------------------------------------------------- GLM-4.5+


def _render_xml_call(call: ToolCall, family: GlmFamily, where: str) -> str:
    args = parse_arguments(call, where)
    if family is GlmFamily.GLM45:
        pairs = "".join(
            f"<arg_key>{k}</arg_key>\n<arg_value>{format_arg_value(v)}</arg_value>\n"
            for k, v in args.items()
        )
        return f"\n<tool_call>{call.name}\n{pairs}</tool_call>"
    pairs = "".join(
        f"<arg_key>{k}</arg_key><arg_value>{format_arg_value(v)}</arg_value>"
        for k, v in args.items()
    )
    return f"<tool_call>{call.name}{pairs}</tool_call>"


def _render_glm45_family(
    family: GlmFamily,
    messages: Sequence[Message],
    tools: Sequence[Tool],
    thinking: Thinking,
    add_generation_prompt: bool,
) -> str:
    nl = "\n" if family is GlmFamily.GLM45 else ""
    disabled = thinking.enabled is False
    preserve_all = family is GlmFamily.GLM47 and thinking.clear_thinking is False
    last_user = _last_user_index(messages)
    parts: list[str] = [PROMPT_PREFIX]
    if tools:
        parts.append(_tools_block(tools, family))
    for index, message in enumerate(messages):
        role = message.role
        if role is Role.SYSTEM:
            parts.append(f"<|system|>{nl}{message.content}")
        elif role is Role.USER:
            text = message.content
            if family is GlmFamily.GLM45 and disabled and not text.endswith("/nothink"):
                text += "/nothink"
            parts.append(f"<|user|>{nl}{text}")
        elif role is Role.ASSISTANT:
            reasoning, content = split_reasoning(message)
            keep = preserve_all or index > last_user
            if keep and reasoning and reasoning.strip():
                parts.append(f"<|assistant|>{nl}<think>{reasoning.strip()}</think>")
            elif family is GlmFamily.GLM45:
                parts.append("<|assistant|>\n<think></think>")
            else:
                parts.append("<|assistant|></think>")
            if content.strip():
                parts.append(f"{nl}{content.strip()}")
            for n, call in enumerate(message.tool_calls):
                where = f"messages[{index}].tool_calls[{n}].function.arguments"
                parts.append(_render_xml_call(call, family, where))
        elif role is Role.TOOL:
            if index == 0 or messages[index - 1].role is not Role.TOOL:
                parts.append("<|observation|>")
            parts.append(f"{nl}<tool_response>{nl}{message.content}{nl}</tool_response>")
    if add_generation_prompt:
        if family is GlmFamily.GLM45:
            parts.append("<|assistant|>\n<think></think>" if disabled else "<|assistant|>")
        else:
            parts.append("<|assistant|></think>" if disabled else "<|assistant|><think>")
    return "".join(parts)


# --------------------------------------------------------------------------- GLM-4-9B


def _render_glm4_9b(
    messages: Sequence[Message],
    tools: Sequence[Tool],
    add_generation_prompt: bool,
    identity: str | None,
) -> str:
    parts: list[str] = [PROMPT_PREFIX]
    if tools:
        head = f"{identity}\n\n" if identity else ""
        sections = "".join(
            f"\n\n## {t.name}\n\n"
            f"{json.dumps(tool_schema(t)['function'], ensure_ascii=False, indent=4)}\n"
            f"{_GLM4_TOOL_TRAILER}"
            for t in tools
        )
        parts.append(f"<|system|>\n{head}{_GLM4_TOOLS_HEADING}{sections}")
    elif identity:
        parts.append(f"<|system|>\n{identity}")
    for index, message in enumerate(messages):
        role = message.role
        if role is Role.ASSISTANT:
            _, content = split_reasoning(message)
            if content:
                parts.append(f"<|assistant|>\n{content}")
            for n, call in enumerate(message.tool_calls):
                where = f"messages[{index}].tool_calls[{n}].function.arguments"
                args = json.dumps(parse_arguments(call, where), ensure_ascii=False)
                parts.append(f"<|assistant|>{call.name}\n{args}")
        elif message.content:
            tag = "observation" if role is Role.TOOL else role.value
            parts.append(f"<|{tag}|>\n{message.content}")
    if add_generation_prompt:
        parts.append("<|assistant|>")
    return "".join(parts)


# --------------------------------------------------------------------------- public


def render_prompt(
    family: GlmFamily,
    messages: Sequence[Message],
    tools: Sequence[Tool] = (),
    thinking: Thinking | None = None,
    *,
    add_generation_prompt: bool = True,
    glm4_identity: str | None = None,
) -> str:
    """The prompt text for ``messages`` in ``family``'s chat format.

    - ``tools`` become the first ``<|system|>`` block; a caller's system message follows as
      its own block.
    - ``thinking.enabled=False`` turns thinking off (4.5/4.6: ``/nothink`` on user turns and
      a ``<think></think>`` generation prompt; 4.7: generation prompt ``</think>``).
      ``None``/``True`` keep the model default (thinking on / model decides).
    - Reasoning of assistant turns after the last user message is always rendered
      (interleaved thinking); with 4.7 and ``thinking.clear_thinking=False`` every assistant
      turn keeps its reasoning (preserved thinking). 4.5/4.6 ignore ``clear_thinking``.
    - ``glm4_identity``: GLM-4-9B only, an optional self-cognition line put first in the
      system block (GLM-4-9B-chat style); ``None`` renders GLM-4-0414 style (no line).
      GLM-4-9B ignores ``thinking`` and assistant reasoning.

    Raises :class:`InvalidRequest` when a tool call's arguments are not a JSON object.
    """
    family = GlmFamily(family)
    thinking = thinking or Thinking()
    if family is GlmFamily.GLM4_9B:
        return _render_glm4_9b(messages, tools, add_generation_prompt, glm4_identity)
    return _render_glm45_family(family, messages, tools, thinking, add_generation_prompt)
