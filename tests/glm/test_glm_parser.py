"""GlmOutputParser: events per family, malformed output, chunking invariance, memory bound."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmaas.core.types import ReasoningDelta, TextDelta, Tool, ToolCallDelta
from openmaas.glm.family import GlmFamily
from openmaas.glm.parser import GlmOutputParser, ParsedEvent
from openmaas.glm.toolcalls import parse_xml_call

WEATHER = Tool(
    name="get_weather",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "code": {"type": ["string", "null"]},
            "opts": {"type": "object"},
        },
    },
)
PING = Tool(name="ping")
TOOLS = (WEATHER, PING)


def run(
    family: GlmFamily,
    thinking: bool,
    chunks: Sequence[str],
    tools: Sequence[Tool] = TOOLS,
    **kwargs: Any,
) -> list[ParsedEvent]:
    parser = GlmOutputParser(family, thinking, tools, id_prefix="req", **kwargs)
    events: list[ParsedEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    return events


def normalize(events: Sequence[ParsedEvent]) -> list[tuple[str, ...]]:
    """Merge adjacent text/reasoning pieces so chunkings can be compared."""
    merged: list[tuple[str, ...]] = []
    for event in events:
        if isinstance(event, ToolCallDelta):
            merged.append(("call", str(event.id), str(event.name), event.arguments))
            continue
        kind = "text" if isinstance(event, TextDelta) else "reasoning"
        assert event.text, "no empty deltas"
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + event.text)
        else:
            merged.append((kind, event.text))
    return merged


def parse(family: GlmFamily, thinking: bool, text: str, **kw: Any) -> list[tuple[str, ...]]:
    return normalize(run(family, thinking, [text], **kw))


# ------------------------------------------------------------------ GLM-4.7


def test_glm47_reasoning_content_and_call() -> None:
    out = (
        "Need the tool.</think>Let me check."
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"
    )
    assert parse(GlmFamily.GLM47, True, out) == [
        ("reasoning", "Need the tool."),
        ("text", "Let me check."),
        ("call", "call_req_0", "get_weather", '{"city": "Paris", "days": 2}'),
    ]


def test_glm47_thinking_disabled_starts_in_content() -> None:
    assert parse(GlmFamily.GLM47, False, "Hello") == [("text", "Hello")]


def test_glm47_zero_argument_and_multiple_calls() -> None:
    out = "</think><tool_call>ping</tool_call><tool_call>ping</tool_call>"
    assert parse(GlmFamily.GLM47, True, out) == [
        ("call", "call_req_0", "ping", "{}"),
        ("call", "call_req_1", "ping", "{}"),
    ]


def test_events_carry_zero_completion_tokens() -> None:
    events = run(GlmFamily.GLM47, True, ["r</think>t<tool_call>ping</tool_call>"])
    assert [type(e) for e in events] == [ReasoningDelta, TextDelta, ToolCallDelta]
    assert all(e.completion_tokens == 0 for e in events)


def test_values_typed_by_schema() -> None:
    out = (
        "</think><tool_call>get_weather"
        "<arg_key>city</arg_key><arg_value>123</arg_value>"
        "<arg_key>days</arg_key><arg_value>three</arg_value>"
        "<arg_key>code</arg_key><arg_value>null</arg_value>"
        '<arg_key>opts</arg_key><arg_value>{"a": [1, true]}</arg_value>'
        "<arg_key>extra</arg_key><arg_value>4.5</arg_value>"
        "<arg_key> other </arg_key><arg_value>北京</arg_value>"
        "</tool_call>"
    )
    [(_, _, _, arguments)] = parse(GlmFamily.GLM47, True, out)
    assert json.loads(arguments) == {
        "city": "123",
        "days": "three",
        "code": "null",
        "opts": {"a": [1, True]},
        "extra": 4.5,
        "other": "北京",
    }
    assert "北京" in arguments  # ensure_ascii=False


# ------------------------------------------------------------------ GLM-4.5 / 4.6


def test_glm45_structural_newlines_are_dropped() -> None:
    out = (
        "\n<think>Plan.</think>\nSure.\n<tool_call>get_weather\n"
        "<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n</tool_call>"
        "\n<tool_call>ping\n</tool_call>"
    )
    assert parse(GlmFamily.GLM45, True, out) == [
        ("reasoning", "Plan."),
        ("text", "Sure."),
        ("call", "call_req_0", "get_weather", '{"city": "Oslo"}'),
        ("call", "call_req_1", "ping", "{}"),
    ]


def test_glm45_without_think_is_content() -> None:
    assert parse(GlmFamily.GLM45, False, "\nJust text.\n") == [("text", "Just text.\n")]
    assert parse(GlmFamily.GLM45, True, "<think></think>\nok") == [("text", "ok")]
    assert parse(GlmFamily.GLM45, True, "No think <think>here") == [
        ("text", "No think <think>here")
    ]


def test_glm45_json_body_fallback() -> None:
    out = '<tool_call>get_weather\n{"city": "Rome"}\n</tool_call>'
    assert parse(GlmFamily.GLM45, False, out) == [
        ("call", "call_req_0", "get_weather", '{"city": "Rome"}')
    ]


# ------------------------------------------------------------------ GLM-4-9B


def test_glm4_9b_tool_call() -> None:
    assert parse(GlmFamily.GLM4_9B, False, 'get_weather\n{"city": "北京"}') == [
        ("call", "call_req_0", "get_weather", '{"city": "北京"}')
    ]


def test_glm4_9b_content_and_failures() -> None:
    assert parse(GlmFamily.GLM4_9B, False, "\n北京今天 22 度。") == [("text", "北京今天 22 度。")]
    assert parse(GlmFamily.GLM4_9B, False, "weather\n{}") == [("text", "weather\n{}")]
    assert parse(GlmFamily.GLM4_9B, False, "get_weather\nnot json") == [
        ("text", "get_weather\nnot json")
    ]
    assert parse(GlmFamily.GLM4_9B, False, "get_weather") == [("text", "get_weather")]
    assert parse(GlmFamily.GLM4_9B, False, "a" * 50 + "\nget_weather\n{}") == [
        ("text", "a" * 50 + "\nget_weather\n{}")
    ]
    assert parse(GlmFamily.GLM4_9B, False, "get_weather\n{}", tools=()) == [
        ("text", "get_weather\n{}")
    ]
    assert parse(GlmFamily.GLM4_9B, False, "") == []


def test_glm4_9b_oversized_call_is_text() -> None:
    body = '{"city": "' + "x" * 100 + '"}'
    assert parse(GlmFamily.GLM4_9B, False, "ping\n" + body, max_tool_call_chars=50) == [
        ("text", "ping\n" + body)
    ]


# ------------------------------------------------------------------ malformed output


def test_unclosed_reasoning_stays_reasoning() -> None:
    assert parse(GlmFamily.GLM47, True, "thinking... </thi") == [("reasoning", "thinking... </thi")]
    assert parse(GlmFamily.GLM45, True, "<think>half") == [("reasoning", "half")]


def test_unclosed_tool_call_is_flushed_as_text() -> None:
    out = "</think>ok<tool_call>get_weather<arg_key>city</arg_key><arg_value>Par"
    assert parse(GlmFamily.GLM47, True, out) == [
        ("text", "ok<tool_call>get_weather<arg_key>city</arg_key><arg_value>Par")
    ]


def test_nameless_call_is_text() -> None:
    out = "<tool_call><arg_key>a</arg_key><arg_value>1</arg_value></tool_call>after"
    assert parse(GlmFamily.GLM47, False, out) == [("text", out)]


def test_call_inside_reasoning_ends_reasoning() -> None:
    out = "I will call.<tool_call>ping</tool_call>"
    assert parse(GlmFamily.GLM47, True, out) == [
        ("reasoning", "I will call."),
        ("call", "call_req_0", "ping", "{}"),
    ]


def test_oversized_call_fails_safe_to_text_then_resumes() -> None:
    big = "<tool_call>ping<arg_key>a</arg_key><arg_value>" + "v" * 200 + "</arg_value></tool_call>"
    out = big + "after<tool_call>ping</tool_call>"
    for chunks in ([out], list(out)):
        assert normalize(run(GlmFamily.GLM47, False, chunks, max_tool_call_chars=64)) == [
            ("text", big + "after"),
            ("call", "call_req_0", "ping", "{}"),
        ]


def test_text_after_end_marker_is_ignored() -> None:
    assert parse(GlmFamily.GLM47, False, "done<|observation|>junk<tool_call>") == [("text", "done")]
    assert parse(GlmFamily.GLM4_9B, False, 'ping\n{"a": 1}<|user|>more') == [
        ("call", "call_req_0", "ping", '{"a": 1}')
    ]


def test_without_tools_tags_are_text() -> None:
    out = "<tool_call>ping</tool_call>"
    assert parse(GlmFamily.GLM47, False, out, tools=()) == [("text", out)]


def test_parse_xml_call_helper() -> None:
    assert parse_xml_call("f<arg_key>k</arg_key>\n<arg_value>1</arg_value>") == ("f", {"k": 1})
    assert parse_xml_call("  \n") is None


def test_feed_after_finish_is_a_programming_error() -> None:
    parser = GlmOutputParser(GlmFamily.GLM47, True, TOOLS)
    assert parser.finish() == []
    assert parser.finish() == []
    with pytest.raises(RuntimeError):
        parser.feed("x")


# ------------------------------------------------------------------ properties

FRAGMENTS = [
    "a",
    "b",
    " ",
    "\n",
    "é",
    "{",
    "}",
    '"',
    "<",
    ">",
    "/",
    "|",
    "1",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "ping",
    "get_weather",
    "city",
    "<|user|>",
    "<|observation|>",
    "<tool_",
    "</thi",
    "<|",
    "\n<tool_call>",
]
FAMILIES = st.sampled_from(list(GlmFamily))


@st.composite
def splits(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


@st.composite
def valid_output(draw: st.DrawFn, family: GlmFamily) -> tuple[str, list[tuple[str, ...]]]:
    """A well-formed model output and the events it must parse to."""
    words = st.text(alphabet="abc xyz.,北é", min_size=1, max_size=12)
    if family is GlmFamily.GLM4_9B:
        if draw(st.booleans()):
            args = {"city": draw(words), "days": draw(st.integers(0, 9))}
            text = "get_weather\n" + json.dumps(args, ensure_ascii=False)
            return text, [
                ("call", "call_req_0", "get_weather", json.dumps(args, ensure_ascii=False))
            ]
        content = draw(words).strip() or "ok"
        return "\n" + content, [("text", content)]
    nl = "\n" if family is GlmFamily.GLM45 else ""
    expected: list[tuple[str, ...]] = []
    reasoning = draw(words)
    text = ("\n<think>" if family is GlmFamily.GLM45 else "") + reasoning + "</think>"
    expected.append(("reasoning", reasoning))
    content = draw(st.text(alphabet="abc .é", max_size=10))
    if content:
        text += nl + content
        expected.append(("text", content))
    for index in range(draw(st.integers(0, 3))):
        city = draw(words)
        days = draw(st.integers(-5, 500))
        if draw(st.booleans()):
            text += f"{nl}<tool_call>ping{nl}</tool_call>"
            expected.append(("call", f"call_req_{index}", "ping", "{}"))
            continue
        text += (
            f"{nl}<tool_call>get_weather{nl}<arg_key>city</arg_key>{nl}<arg_value>{city}"
            f"</arg_value>{nl}<arg_key>days</arg_key>{nl}<arg_value>{days}</arg_value>{nl}"
            "</tool_call>"
        )
        args = json.dumps({"city": city, "days": days}, ensure_ascii=False)
        expected.append(("call", f"call_req_{index}", "get_weather", args))
    return text, expected


@settings(max_examples=300, deadline=None)
@given(st.data(), FAMILIES)
def test_valid_output_parses_the_same_under_any_split(
    data: st.DataObject, family: GlmFamily
) -> None:
    text, expected = data.draw(valid_output(family))
    assert normalize(run(family, True, [text])) == expected
    chunks = data.draw(splits(text))
    assert normalize(run(family, True, chunks)) == expected


@settings(max_examples=500, deadline=None)
@given(
    st.data(),
    FAMILIES,
    st.booleans(),
    st.booleans(),
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
)
def test_any_output_is_split_invariant_and_never_crashes(
    data: st.DataObject, family: GlmFamily, thinking: bool, with_tools: bool, text: str
) -> None:
    tools = TOOLS if with_tools else ()
    whole = normalize(run(family, thinking, [text], tools, max_tool_call_chars=40))
    chunks = data.draw(splits(text))
    assert normalize(run(family, thinking, chunks, tools, max_tool_call_chars=40)) == whole
    assert normalize(run(family, thinking, list(text), tools, max_tool_call_chars=40)) == whole


@settings(max_examples=200, deadline=None)
@given(FAMILIES, st.booleans(), st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
def test_memory_is_bounded(family: GlmFamily, thinking: bool, text: str) -> None:
    parser = GlmOutputParser(family, thinking, TOOLS, max_tool_call_chars=30)
    bound = max(len("<|observation|>") - 1, len("get_weather") + 2)
    for char in text:
        parser.feed(char)
        assert parser.held_chars <= bound
        assert parser._part_len <= 30  # the tool-call body cap
    parser.finish()


def test_long_stream_holds_nothing_extra() -> None:
    parser = GlmOutputParser(GlmFamily.GLM47, True, TOOLS)
    total = 0
    for _ in range(10_000):
        for event in parser.feed("thinking hard "):
            total += len(event.text)  # type: ignore[union-attr]
        assert parser.held_chars == 0
    assert total == 140_000


def test_glm47_tolerates_a_repeated_think_opener() -> None:
    assert parse(GlmFamily.GLM47, True, "<think>r</think>t") == [
        ("reasoning", "r"),
        ("text", "t"),
    ]
    assert parse(GlmFamily.GLM47, True, "<thi") == [("reasoning", "<thi")]
    assert parse(GlmFamily.GLM47, False, "<think>r") == [("text", "<think>r")]


def test_for_request_matches_the_rendered_prompt() -> None:
    from openmaas.core.types import Thinking

    out = "r</think>t"
    for thinking in (None, Thinking(), Thinking(enabled=True)):
        parser = GlmOutputParser.for_request(GlmFamily.GLM47, thinking, TOOLS, id_prefix="x")
        assert normalize(parser.feed(out) + parser.finish()) == [
            ("reasoning", "r"),
            ("text", "t"),
        ]
    parser = GlmOutputParser.for_request(GlmFamily.GLM47, Thinking(enabled=False))
    assert normalize(parser.feed("plain") + parser.finish()) == [("text", "plain")]


def test_arguments_are_always_valid_json() -> None:
    out = (
        "</think><tool_call>get_weather<arg_key>days</arg_key><arg_value>NaN</arg_value>"
        "<arg_key>opts</arg_key><arg_value>Infinity</arg_value></tool_call>"
    )
    [(_, _, _, arguments)] = parse(GlmFamily.GLM47, True, out)
    assert json.loads(arguments) == {"days": "NaN", "opts": "Infinity"}
    assert parse(GlmFamily.GLM4_9B, False, 'ping\n{"a": NaN}') == [("text", 'ping\n{"a": NaN}')]
