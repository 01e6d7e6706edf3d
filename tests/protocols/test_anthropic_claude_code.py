"""What Claude Code really sends, parsed: ``fixtures/claude_code_request.json`` is its first
request of ``claude -p "Say hello"`` (recorded by tests/e2e/test_claude_code.py, anonymized
and trimmed): three system blocks with ``cache_control`` (the first Claude Code's billing
attribution), a ``system`` turn at ``messages[1]`` with a per-turn ``output_config``,
twelve tools (one with ``defer_loading``), adaptive thinking with ``display: "omitted"``,
``context_management`` and ``output_config.effort``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from openmaas.core.types import Role
from openmaas.protocols.anthropic.adapter import (
    BILLING_HEADER_PREFIX,
    count_request,
    messages_request,
    omits_thinking,
    parse_body,
)
from openmaas.protocols.anthropic.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
)

SAMPLE = json.loads((Path(__file__).parent / "fixtures" / "claude_code_request.json").read_text())
RID = "01J0000000000000000000000A"


def _body() -> dict[str, Any]:
    return copy.deepcopy(SAMPLE["body"])


def _parse(body: dict[str, Any]) -> AnthropicMessagesRequest:
    return parse_body(orjson.dumps(body), AnthropicMessagesRequest)


def test_the_sample_is_what_the_issue_describes() -> None:
    body = SAMPLE["body"]
    assert SAMPLE["path"] == "/v1/messages?beta=true"
    assert "context-management-2025-06-27" in SAMPLE["headers"]["anthropic-beta"]
    assert [m["role"] for m in body["messages"]] == ["user", "system"]
    assert all("cache_control" in block for block in body["system"][1:])
    assert body["thinking"]["type"] == "adaptive" and body["stream"] is True
    assert {"context_management", "output_config", "metadata"} <= body.keys()


def test_every_field_claude_code_sends_is_accepted() -> None:
    request = messages_request(_parse(_body()), RID, "served")
    assert request.model == "served" and request.sampling.max_tokens == SAMPLE["body"]["max_tokens"]
    assert [tool.name for tool in request.tools] == [t["name"] for t in SAMPLE["body"]["tools"]]
    assert request.thinking.enabled is None  # adaptive: the model's default
    assert request.user == SAMPLE["body"]["metadata"]["user_id"]


def test_the_system_turn_is_folded_into_the_system_prompt_without_the_billing_block() -> None:
    body = _body()
    messages = messages_request(_parse(body), RID, "served").messages
    assert messages is not None
    assert [m.role for m in messages] == [Role.SYSTEM, Role.USER]
    system = messages[0].content
    top = [block["text"] for block in body["system"]]
    turn = body["messages"][1]["content"][0]["text"]
    assert top[0].startswith(BILLING_HEADER_PREFIX) and BILLING_HEADER_PREFIX not in system
    assert system == "\n".join(top[1:]) + "\n\n" + turn
    user = body["messages"][0]["content"]
    assert messages[1].content == "\n".join(block["text"] for block in user)


def test_the_billing_block_differs_per_conversation_and_the_prompt_does_not() -> None:
    """Claude Code derives the block from the first prompt: kept, it would make every
    conversation's prompt differ from its first tokens (no prompt cache reuse)."""
    other = _body()
    other["system"][0]["text"] = other["system"][0]["text"].replace("cc_version=", "cc_version=9")
    one = messages_request(_parse(_body()), RID, "served").messages
    two = messages_request(_parse(other), RID, "served").messages
    assert one is not None and two is not None and one[0] == two[0]


def test_count_tokens_takes_the_same_body() -> None:
    body = _body()
    for sampling in ("max_tokens", "stream", "metadata"):
        del body[sampling]
    counted = count_request(parse_body(orjson.dumps(body), AnthropicCountTokensRequest), RID, "m")
    sent = messages_request(_parse(_body()), RID, "m")
    assert counted.messages == sent.messages and counted.tools == sent.tools


def test_thinking_display_omitted_is_honoured() -> None:
    assert omits_thinking(_parse(_body()))
    summarized = _body()
    summarized["thinking"]["display"] = "summarized"
    assert not omits_thinking(_parse(summarized))


@pytest.mark.parametrize(
    "field",
    [
        ("speed", "fast"),
        ("inference_geo", "us"),
        ("container", {"id": "c1"}),
        ("mcp_servers", []),
        ("service_tier", "auto"),
    ],
)
def test_top_level_fields_a_later_version_may_add_are_ignored(field: tuple[str, Any]) -> None:
    body = _body() | dict([field])
    assert messages_request(_parse(body), RID, "m") == messages_request(_parse(_body()), RID, "m")
