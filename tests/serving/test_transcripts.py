"""A prompt log's answer: each choice's text, reasoning and tool calls as the client got
them, a tool call's id and name from its first delta and its arguments from every one, in
the order of their indexes and of the choices."""

from __future__ import annotations

import logging

import pytest

from openmaas.core.termination import Termination
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    ReasoningDelta,
    Role,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from openmaas.core.usage import UsageRecord
from openmaas.serving.transcripts import PROMPT_LOGGER, Transcript


def test_a_transcript_logs_each_choice_as_it_was_sent(caplog: pytest.LogCaptureFixture) -> None:
    request = GenerationRequest("req-t", "m", messages=(Message(Role.USER, "weather?"),))
    transcript = Transcript(request)
    for event in (
        ReasoningDelta("look it ", 1),
        ReasoningDelta("up", 2),
        ToolCallDelta(1, "call_b", "get_time", '{"zone":', 3),
        ToolCallDelta(0, "call_a", "get_weather", '{"city":', 4),
        ToolCallDelta(0, None, None, ' "Beijing"}', 5),
        ToolCallDelta(1, None, None, ' "UTC"}', 6),
        TextDelta("second ", 1, choice=1),
        TextDelta("choice", 2, choice=1),
        Finished(FinishReason.TOOL_CALLS, Usage(3, 0, 8)),
    ):
        transcript.saw(event)
    record = UsageRecord(
        "req-t", "key-1", "org-1", "m", "chat", Usage(3, 0, 8), Termination.FINISHED, 0, 1, 2
    )
    with caplog.at_level(logging.INFO, logger=PROMPT_LOGGER):
        transcript.log(record)
    [logged] = [r.prompt_log for r in caplog.records if r.name == PROMPT_LOGGER]  # type: ignore[attr-defined]
    assert logged["messages"] == [{"role": "user", "content": "weather?"}]
    assert logged["choices"] == [
        {
            "index": 0,
            "text": "",
            "reasoning": "look it up",
            "tool_calls": [
                {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Beijing"}'},
                {"id": "call_b", "name": "get_time", "arguments": '{"zone": "UTC"}'},
            ],
        },
        {"index": 1, "text": "second choice", "reasoning": "", "tool_calls": []},
    ]
    assert (logged["termination"], logged["completion_tokens"]) == ("finished", 8)
