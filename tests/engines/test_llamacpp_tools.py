"""Tool calls of the embedded llama.cpp model: compact constrained JSON, and a reply cut by
max_tokens that never reaches the client as the internal wrapper."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceKind,
)
from openmaas.engines import llamacpp
from openmaas.engines.base import ModelKind, UsageTracker
from openmaas.engines.embedded import chat_model_path
from openmaas.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

WEATHER = Tool(
    "get_weather",
    "Weather for a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
NAMED = ToolChoice(ToolChoiceKind.NAMED, "get_weather")


@pytest.fixture()
async def engine() -> AsyncIterator[LlamaCppEngine]:
    eng = LlamaCppEngine(
        "smol", LlamaCppConfig(chat_model_path(), ModelKind.CHAT, slots=1, queue=1, threads=2)
    )
    await eng.start()
    yield eng
    await eng.stop()


def _ask(max_tokens: int, choice: ToolChoice = NAMED) -> GenerationRequest:
    return GenerationRequest(
        "req",
        "smol",
        messages=(Message(Role.USER, "Weather in Paris?"),),
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0),
        tools=(WEATHER,),
        tool_choice=choice,
    )


async def _events(engine: LlamaCppEngine, request: GenerationRequest) -> list[StreamEvent]:
    stream = engine.stream(request)
    events = [event async for event in stream]
    await stream.aclose()
    return events


def test_tool_requests_send_a_compact_grammar() -> None:
    body = llamacpp._llama_body(_ask(50))
    assert "response_format" not in body
    grammar = body["grammar"]
    assert grammar.startswith("%llguidance") and '"whitespace_flexible":false' in grammar


def test_a_gbnf_grammar_gets_an_empty_whitespace_rule() -> None:
    """Builds of llama.cpp without llguidance turn a schema into GBNF, where all optional
    whitespace is the one ``space`` rule."""
    gbnf = (
        'root ::= "{" space "\\"a\\"" space ":" space string "}" space\n'
        'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}\n'
        'string ::= "\\"" [a-z]* "\\"" space\n'
    )
    compact = llamacpp._compact_grammar(gbnf)
    assert 'space ::= ""\n' in compact
    assert compact.replace('space ::= ""', 'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}') == gbnf


async def test_a_tool_call_is_generated_as_compact_json(engine: LlamaCppEngine) -> None:
    request = _ask(200)
    raw = [event async for event in engine._raw_stream(request, UsageTracker())]
    text = "".join(event.text for event in raw if isinstance(event, TextDelta))
    reply = json.loads(text)
    assert reply["tool_calls"][0]["name"] == "get_weather"
    assert "\n" not in text and text == json.dumps(reply, separators=(",", ":"))
    finished = raw[-1]
    assert isinstance(finished, Finished)
    # The billed tokens are fewer than the same reply pretty-printed would take.
    pretty = GenerationRequest("p", "smol", prompt=json.dumps(reply, indent=2))
    assert finished.usage.completion_tokens < await engine.count_prompt_tokens(pretty) - 1
    # And what reaches the client is the call, its arguments as the model wrote them.
    events = await _events(engine, request)
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls and calls[0].arguments == json.dumps(
        reply["tool_calls"][0]["arguments"], separators=(",", ":")
    )
    assert events[-1] == Finished(FinishReason.TOOL_CALLS, events[-1].usage)


@pytest.mark.parametrize("max_tokens", [4, 20])
async def test_a_call_cut_by_max_tokens_is_the_part_that_parsed(
    engine: LlamaCppEngine, max_tokens: int
) -> None:
    events = await _events(engine, _ask(max_tokens))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason is FinishReason.LENGTH
    assert finished.usage.completion_tokens == max_tokens
    assert not [e for e in events if isinstance(e, TextDelta)]  # no wrapper text, ever
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    if max_tokens == 4:  # the name is not whole yet: no call
        assert calls == []
    else:  # the name is whole: the call, with its arguments so far (not yet valid JSON)
        (call,) = calls
        assert call.name == "get_weather" and call.id == "call_req_0"
        assert call.arguments.startswith('{"city":')
        with pytest.raises(json.JSONDecodeError):
            json.loads(call.arguments)


async def test_keywords_the_grammar_does_not_know_are_not_enforced(engine: LlamaCppEngine) -> None:
    """A format or keyword llguidance does not implement leaves that part free (as
    llama.cpp's GBNF conversion does) instead of losing the whole grammar."""
    tool = Tool(
        "fetch",
        "Fetch a page",
        {"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}},
    )
    request = GenerationRequest(
        "req",
        "smol",
        messages=(Message(Role.USER, "Fetch example.com"),),
        sampling=SamplingParams(max_tokens=60, temperature=0),
        tools=(tool,),
        tool_choice=ToolChoice(ToolChoiceKind.NAMED, "fetch"),
    )
    events = await _events(engine, request)
    assert not [e for e in events if isinstance(e, TextDelta)]
    (call,) = [e for e in events if isinstance(e, ToolCallDelta)]
    assert call.name == "fetch" and call.arguments.startswith('{"url":"')


async def test_a_schema_without_a_grammar_is_refused_not_answered_freely(
    engine: LlamaCppEngine,
) -> None:
    tool = Tool("get_weather", "w", {"type": "object", "properties": {"city": {"type": "strin"}}})
    request = GenerationRequest(
        "req",
        "smol",
        messages=(Message(Role.USER, "Weather?"),),
        sampling=SamplingParams(max_tokens=20, temperature=0),
        tools=(tool,),
    )
    with pytest.raises(InvalidRequest) as info:
        await _events(engine, request)
    assert info.value.param == "tools"
    assert engine.capacity().in_flight == 0
