"""Prompt logging (``docs/metrics.md``, "Prompt logging"): an organization's generations,
logged in full only when an operator has turned it on for that organization
(``PATCH /admin/v1/orgs/{org}`` with ``prompt_logging``).

A ``Transcript`` is kept by a generation of such an organization: it sees the events the
client was sent (after moderation: text a filter cut is not in it) and, once the usage
record is written, logs one record on the ``openmaas.prompts`` logger (JSON, as every log
line: ``server/telemetry/logs.py``) with the request's messages or prompt, the tools it offered (by
name), each choice's answer, reasoning and tool calls, and the usage record's counts and
termination. Operators route that logger apart (a file of its own, a retention of its own).
Without the switch no transcript exists and nothing of this runs."""

from __future__ import annotations

import logging
from typing import Any

from openmaas.core.assembly import Choice
from openmaas.core.types import Finished, GenerationRequest, Message, StreamEvent
from openmaas.core.usage import UsageRecord

PROMPT_LOGGER = "openmaas.prompts"
log = logging.getLogger(PROMPT_LOGGER)


class Transcript:
    """What one generation was asked and what it answered, logged once at its end."""

    __slots__ = ("_request", "_choices")

    def __init__(self, request: GenerationRequest) -> None:
        self._request = request
        self._choices: dict[int, Choice] = {}  # folded as a json answer is (core/assembly)

    def saw(self, event: StreamEvent) -> None:
        """An event handed to the client."""
        if not isinstance(event, Finished):
            self._choices.setdefault(event.choice, Choice()).add(event)

    def log(self, record: UsageRecord) -> None:
        """The one prompt-log record of this generation (its usage record is written)."""
        request = self._request
        entry: dict[str, Any] = {
            "request_id": record.request_id,
            "org_id": record.org_id,
            "key_id": record.key_id,
            "model": record.model,
            "endpoint": record.endpoint,
            "termination": record.termination.value,
            "prompt_tokens": record.usage.prompt_tokens,
            "completion_tokens": record.usage.completion_tokens,
        }
        if request.messages is not None:
            entry["messages"] = [_message(m) for m in request.messages]
        else:
            entry["prompt"] = request.prompt
        if request.tools:
            entry["tools"] = [tool.name for tool in request.tools]
        entry["choices"] = [
            {
                "index": index,
                "text": choice.text,
                "reasoning": choice.reasoning or "",
                "tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments}
                    for c in choice.tool_calls
                ],
            }
            for index, choice in sorted(self._choices.items())
        ]
        log.info("prompt log", extra={"prompt_log": entry})


def _message(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role.value, "content": message.content}
    if message.reasoning is not None:
        entry["reasoning"] = message.reasoning
    if message.tool_calls:
        entry["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        entry["name"] = message.name
    return entry
