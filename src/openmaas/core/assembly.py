"""Folding a stream of events into one complete answer (for non-streamed responses)."""

from __future__ import annotations

from dataclasses import dataclass, field

from openmaas.core.types import (
    Finished,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class Choice:
    """One choice's answer: its text, reasoning and tool calls."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _PartialCall] = {}

    def add(self, event: TextDelta | ReasoningDelta | ToolCallDelta) -> None:
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        else:
            call = self._calls.setdefault(event.index, _PartialCall())
            call.id = event.id or call.id
            call.name = event.name or call.name
            call.arguments.append(event.arguments)

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def reasoning(self) -> str | None:
        return "".join(self._reasoning) if self._reasoning else None

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(call.id, call.name, "".join(call.arguments))
            for _, call in sorted(self._calls.items())
        )


class Assembler:
    """Feed it every event of a generation; read the answer once ``finished`` is set. Its
    ``text``, ``reasoning`` and ``tool_calls`` are choice 0's; ``choices`` has them all."""

    def __init__(self) -> None:
        self._choices: dict[int, Choice] = {}
        self.finished: Finished | None = None

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, Finished):
            self.finished = event
        else:
            self._choice(event.choice).add(event)

    def _choice(self, index: int) -> Choice:
        return self._choices.setdefault(index, Choice())

    @property
    def choices(self) -> list[tuple[Choice, FinishReason]]:
        """Every choice with its finish reason, in order (at least one)."""
        assert self.finished is not None
        reasons = self.finished.choices or (self.finished.reason,)
        return [(self._choice(i), reason) for i, reason in enumerate(reasons)]

    @property
    def text(self) -> str:
        return self._choice(0).text

    @property
    def reasoning(self) -> str | None:
        return self._choice(0).reasoning

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self._choice(0).tool_calls
