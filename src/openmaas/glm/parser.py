"""Incremental parser: raw GLM model output → canonical stream events.

``GlmOutputParser`` turns the text an engine generates (special tokens kept as text) into
:class:`ReasoningDelta`, :class:`TextDelta` and :class:`ToolCallDelta` events. It is a small
state machine fed chunk by chunk; the concatenated result is the same however the output is
split into chunks.

Formats (design reference §11, §12):

- GLM-4.5/4.6: ``\\n<think>reasoning</think>\\ncontent\\n<tool_call>name\\n<arg_key>k</arg_key>
  \\n<arg_value>v</arg_value>\\n</tool_call>``. The model opens ``<think>`` itself; the
  structural newlines (one at the start, one after ``</think>``, one before each
  ``<tool_call>``) are dropped.
- GLM-4.7: ``reasoning</think>content<tool_call>name<arg_key>k</arg_key><arg_value>v
  </arg_value></tool_call>``. With thinking enabled ``<think>`` is in the prompt, so output
  starts *inside* reasoning (a repeated ``<think>`` at the very start is tolerated); with
  thinking disabled it starts in content.
- GLM-4-9B: a first line that is a known tool name, then a JSON object, is a tool call;
  otherwise the output (less one leading newline) is content.

Policies for malformed output (the parser never raises on model output):

- Unclosed reasoning at :meth:`finish` stays reasoning.
- A ``<tool_call>`` inside reasoning ends the reasoning and starts a call (a known GLM
  failure mode is to open a call without closing ``</think>``).
- An unclosed ``<tool_call>`` at :meth:`finish` is emitted **as text**, verbatim
  (a truncated call's arguments are not trustworthy). So is a call without a name, and a
  call whose body exceeds ``max_tool_call_chars`` (fail safe: text, then normal parsing
  resumes after its ``</tool_call>``).
- Text after ``<|user|>``, ``<|observation|>``, ``<|endoftext|>`` or ``<|assistant|>`` is
  ignored (the turn has ended; engines normally stop there already).
- Tool calls are parsed only when ``tools`` is non-empty; otherwise the tags are text.
  Calls to names not in ``tools`` are still reported (the caller may validate them).

Memory: outside a tool call the parser holds back at most ``max(longest tag) - 1``
characters (``<tool_call>`` prefixes, ``</think>``...), or, for GLM-4-9B before the first
newline, ``longest tool name + 1``; a tool call being parsed adds at most
``max_tool_call_chars`` characters (GLM-4-9B: the one call is the rest of the output, with
the same cap). See :attr:`held_chars`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum, auto
from typing import Any

from openmaas.core.types import ReasoningDelta, TextDelta, Thinking, Tool, ToolCallDelta
from openmaas.glm.family import GlmFamily
from openmaas.glm.toolcalls import loads_strict, parse_xml_call

ParsedEvent = TextDelta | ReasoningDelta | ToolCallDelta

#: Default cap on one tool call's body, in characters.
MAX_TOOL_CALL_CHARS = 256 * 1024

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_CALL_OPEN = "<tool_call>"
_CALL_CLOSE = "</tool_call>"
_END_MARKERS = ("<|user|>", "<|observation|>", "<|endoftext|>", "<|assistant|>")


class _State(Enum):
    START = auto()  # before an optional "<think>" (GLM-4.5; GLM-4.7 with thinking on)
    REASONING = auto()
    CONTENT = auto()
    TOOL = auto()  # inside <tool_call>…</tool_call>
    OVERFLOW = auto()  # an over-long call, passed through as text until </tool_call>
    START9B = auto()  # GLM-4-9B: deciding whether the first line is a tool name
    TOOL9B = auto()  # GLM-4-9B: collecting the JSON arguments
    DONE = auto()


class _Out:
    """Collects events, merging adjacent text or reasoning pieces."""

    def __init__(self) -> None:
        self.events: list[ParsedEvent] = []

    def text(self, text: str) -> None:
        if not text:
            return
        last = self.events[-1] if self.events else None
        if isinstance(last, TextDelta):
            self.events[-1] = TextDelta(last.text + text, 0)
        else:
            self.events.append(TextDelta(text, 0))

    def reasoning(self, text: str) -> None:
        if not text:
            return
        last = self.events[-1] if self.events else None
        if isinstance(last, ReasoningDelta):
            self.events[-1] = ReasoningDelta(last.text + text, 0)
        else:
            self.events.append(ReasoningDelta(text, 0))


class GlmOutputParser:
    """Feed raw model output with :meth:`feed`, end with :meth:`finish`.

    ``thinking_enabled`` matters for GLM-4.7 only (output starts inside reasoning when
    True); GLM-4.5/4.6 output opens ``<think>`` itself and GLM-4-9B has no reasoning.
    ``tools`` gives the callable names and their JSON schemas (argument typing).
    Tool call ids are ``f"call_{id_prefix}_{index}"``. Events carry ``completion_tokens=0``.
    """

    def __init__(
        self,
        family: GlmFamily,
        thinking_enabled: bool,
        tools: Sequence[Tool] = (),
        *,
        id_prefix: str = "0",
        max_tool_call_chars: int = MAX_TOOL_CALL_CHARS,
    ) -> None:
        self.family = GlmFamily(family)
        self._id_prefix = id_prefix
        self._max_call = max_tool_call_chars
        self._properties: dict[str, dict[str, Any]] = {}
        for tool in tools:
            props = tool.parameters.get("properties") if tool.parameters else None
            self._properties[tool.name] = props if isinstance(props, dict) else {}
        self._name_bound = max((len(n) for n in self._properties), default=0) + 1
        self._buf = ""
        self._parts: list[str] = []  # body of the tool call being collected
        self._part_len = 0
        self._head = ""  # GLM-4-9B: the raw first line naming the tool
        self._calls = 0
        self._drop_nl = False
        self._finished = False
        call_tags: tuple[str, ...] = (_CALL_OPEN,) if tools else ()
        if self.family is GlmFamily.GLM45 and tools:
            call_tags = ("\n" + _CALL_OPEN, _CALL_OPEN)
        self._terms: dict[_State, tuple[str, ...]] = {
            _State.REASONING: (_THINK_CLOSE, *call_tags, *_END_MARKERS),
            _State.CONTENT: (*call_tags, *_END_MARKERS),
            _State.TOOL: (_CALL_CLOSE,),
            _State.OVERFLOW: (_CALL_CLOSE,),
            _State.TOOL9B: _END_MARKERS,
        }
        self._openers: tuple[str, ...] = ()
        self._after_start = _State.CONTENT
        if self.family is GlmFamily.GLM4_9B:
            self._terms[_State.CONTENT] = _END_MARKERS
            self._state = _State.START9B
        elif self.family is GlmFamily.GLM45:
            self._state = _State.START
            self._openers = ("\n" + _THINK_OPEN, _THINK_OPEN)
            self._after_start = _State.CONTENT
        else:
            # <think> is in the prompt; tolerate the model repeating it.
            self._state = _State.START if thinking_enabled else _State.CONTENT
            self._openers = (_THINK_OPEN,)
            self._after_start = _State.REASONING

    @classmethod
    def for_request(
        cls,
        family: GlmFamily,
        thinking: Thinking | None,
        tools: Sequence[Tool] = (),
        *,
        id_prefix: str = "0",
    ) -> GlmOutputParser:
        """A parser matching a prompt rendered by ``render_prompt(family, ..., thinking)``:
        thinking counts as enabled unless ``thinking.enabled is False``."""
        enabled = thinking is None or thinking.enabled is not False
        return cls(family, enabled, tools, id_prefix=id_prefix)

    # ------------------------------------------------------------------ public

    @property
    def held_chars(self) -> int:
        """Characters held back outside a tool call body (for bounded-memory checks)."""
        return len(self._buf)

    @property
    def tool_call_count(self) -> int:
        """How many tool calls have been emitted so far."""
        return self._calls

    def feed(self, text: str) -> list[ParsedEvent]:
        """Parse the next chunk of output; returns the events it completes."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        out = _Out()
        if self._state is _State.DONE:
            return out.events
        self._buf += text
        self._run(out, final=False)
        return out.events

    def finish(self) -> list[ParsedEvent]:
        """Flush everything held back; the parser accepts no more input afterwards."""
        if self._finished:
            return []
        out = _Out()
        self._run(out, final=True)
        if self._state is _State.TOOL:
            out.text(_CALL_OPEN + "".join(self._parts))
        elif self._state is _State.TOOL9B:
            self._close_9b(out)
        self._buf = ""
        self._parts = []
        self._state = _State.DONE
        self._finished = True
        return out.events

    # ------------------------------------------------------------------ machine

    def _run(self, out: _Out, final: bool) -> None:
        while True:
            state = self._state
            if state is _State.DONE:
                self._buf = ""
                return
            if state is _State.START:
                progressed = self._step_start(final)
            elif state is _State.START9B:
                progressed = self._step_start_9b(final)
            else:
                progressed = self._step_scan(out, final)
            if not progressed:
                return

    def _step_start(self, final: bool) -> bool:
        buf = self._buf
        for opener in self._openers:
            if buf.startswith(opener):
                self._buf = buf[len(opener) :]
                self._state = _State.REASONING
                return True
        if not final and any(o.startswith(buf) for o in self._openers):
            return False
        if self._after_start is _State.CONTENT and buf.startswith("\n"):
            self._buf = buf[1:]  # GLM-4.5's structural newline after <|assistant|>
        self._state = self._after_start
        return True

    def _step_start_9b(self, final: bool) -> bool:
        buf = self._buf
        if not buf:
            if final:
                self._state = _State.CONTENT
            return final
        if buf[0] == "\n":
            self._buf = buf[1:]
            self._state = _State.CONTENT
            return True
        newline = buf.find("\n", 0, self._name_bound + 1)
        if newline < 0:
            if final or len(buf) > self._name_bound or not self._properties:
                self._state = _State.CONTENT
                return True
            return False
        head = buf[:newline]
        if head.strip() in self._properties:
            self._head = head
            self._buf = buf[newline + 1 :]
            self._parts, self._part_len = [], 0
            self._state = _State.TOOL9B
        else:
            self._state = _State.CONTENT
        return True

    def _step_scan(self, out: _Out, final: bool) -> bool:
        state = self._state
        if state is _State.CONTENT and self._drop_nl:
            if not self._buf and not final:
                return False
            self._drop_nl = False
            if self._buf.startswith("\n"):
                self._buf = self._buf[1:]
        buf = self._buf
        terms = self._terms[state]
        best_at, best = -1, ""
        for tag in terms:
            at = buf.find(tag)
            if at >= 0 and (
                best_at < 0 or at < best_at or (at == best_at and len(tag) > len(best))
            ):
                best_at, best = at, tag
        if best_at >= 0:
            self._buf = buf[best_at + len(best) :]
            self._sink(buf[:best_at], out)
            self._on_tag(best, out)
            return True
        keep = 0 if final else self._held_suffix(buf, terms)
        self._buf = buf[len(buf) - keep :]
        self._sink(buf[: len(buf) - keep], out)
        return self._state is not state

    @staticmethod
    def _held_suffix(buf: str, terms: tuple[str, ...]) -> int:
        longest = max((len(t) for t in terms), default=1) - 1
        window = buf[-longest:] if longest else ""
        if "<" not in window and "\n" not in window:  # every tag starts with one of them
            return 0
        for size in range(min(len(buf), longest), 0, -1):
            tail = buf[-size:]
            if any(t.startswith(tail) for t in terms):
                return size
        return 0

    def _sink(self, text: str, out: _Out) -> None:
        state = self._state
        if state is _State.REASONING:
            out.reasoning(text)
        elif state in (_State.CONTENT, _State.OVERFLOW):
            out.text(text)
        elif text:  # TOOL or TOOL9B: collect the body, failing safe to text when too long
            self._parts.append(text)
            self._part_len += len(text)
            if self._part_len > self._max_call:
                head = _CALL_OPEN if state is _State.TOOL else self._head + "\n"
                out.text(head + "".join(self._parts))
                self._parts, self._part_len = [], 0
                self._state = _State.OVERFLOW if state is _State.TOOL else _State.CONTENT

    def _on_tag(self, tag: str, out: _Out) -> None:
        state = self._state
        if tag in _END_MARKERS:
            if state is _State.TOOL9B:
                self._close_9b(out)
            self._state = _State.DONE
        elif tag == _THINK_CLOSE:
            self._state = _State.CONTENT
            self._drop_nl = self.family is GlmFamily.GLM45
        elif tag == _CALL_CLOSE:
            if state is _State.TOOL:
                self._close_xml(out)
            else:
                out.text(_CALL_CLOSE)
            self._state = _State.CONTENT
        else:  # an opening <tool_call>
            self._parts, self._part_len = [], 0
            self._state = _State.TOOL

    # ------------------------------------------------------------------ calls

    def _emit_call(self, name: str, args: dict[str, Any], out: _Out) -> None:
        index = self._calls
        self._calls += 1
        out.events.append(
            ToolCallDelta(
                index=index,
                id=f"call_{self._id_prefix}_{index}",
                name=name,
                arguments=json.dumps(args, ensure_ascii=False),
                completion_tokens=0,
            )
        )

    def _close_xml(self, out: _Out) -> None:
        body = "".join(self._parts)
        self._parts, self._part_len = [], 0
        parsed = parse_xml_call(body, self._properties)
        if parsed is None:
            out.text(_CALL_OPEN + body + _CALL_CLOSE)
        else:
            self._emit_call(parsed[0], parsed[1], out)

    def _close_9b(self, out: _Out) -> None:
        body = "".join(self._parts)
        self._parts, self._part_len = [], 0
        try:
            args = loads_strict(body)
        except ValueError:
            args = None
        if isinstance(args, dict):
            self._emit_call(self._head.strip(), args, out)
        else:
            out.text(self._head + "\n" + body)
