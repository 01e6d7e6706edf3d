"""What one request may ask of an engine (serving/bounds.py): each bound refuses with an
``InvalidRequest`` naming the field, quickly, and a request within every bound passes."""

from __future__ import annotations

from typing import Any

import pytest

from openmaas.core.errors import InvalidRequest
from openmaas.core.types import (
    EmbeddingRequest,
    GenerationRequest,
    Message,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    Tool,
)
from openmaas.serving.bounds import RequestBounds
from openmaas.settings import Settings

BOUNDS = RequestBounds()
HELLO = (Message(Role.USER, "hello"),)


def chat(
    schema: dict[str, Any] | None = None,
    tools: tuple[Tool, ...] = (),
    messages: tuple[Message, ...] = HELLO,
) -> GenerationRequest:
    fmt = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, schema) if schema else ResponseFormat()
    return GenerationRequest("req", "m", messages=messages, response_format=fmt, tools=tools)


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def refused(bounds: RequestBounds, request: GenerationRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        bounds.check_generation(request)
    return caught.value


def test_the_defaults_are_the_settings_defaults() -> None:
    assert RequestBounds.from_settings(Settings()) == RequestBounds()


def test_an_ordinary_request_passes() -> None:
    weather = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "array", "items": {"$ref": "#/$defs/day"}},
        },
        "$defs": {"day": {"type": "integer", "minimum": 0}},
    }
    BOUNDS.check_generation(chat(weather, (Tool("weather", "", weather),)))


def test_an_enum_of_thousands_of_strings_is_refused_at_once() -> None:
    schema = {"type": "string", "enum": [f"name-{i}" for i in range(5000)]}
    error = refused(BOUNDS, chat(schema))
    assert error.param == "response_format.json_schema.schema"
    assert "1000 enum values" in error.message


def test_enum_entries_count_over_every_schema_of_the_request() -> None:
    small = {"enum": list(range(600))}
    error = refused(BOUNDS, chat(small, (Tool("t", "", small),)))
    assert error.param == "tools[0].function.parameters"


def test_a_schema_nested_too_deep_is_refused_without_recursion() -> None:
    assert refused(BOUNDS, chat(tools=(Tool("t", "", nested(200)),))).param == (
        "tools[0].function.parameters"
    )
    deep: Any = {}
    for _ in range(50_000):  # deeper than Python's recursion limit
        deep = {"a": deep}
    assert "nested deeper than 64" in refused(BOUNDS, chat(deep)).message
    BOUNDS.check_generation(chat(nested(30)))  # 61 levels of objects: within


def test_schemas_larger_than_the_byte_limit_are_refused() -> None:
    big = {"description": "x" * 2000}
    bounds = RequestBounds(schema_max_bytes=5000)
    bounds.check_generation(chat(big, (Tool("a", "", big),)))
    error = refused(bounds, chat(big, (Tool("a", "", big), Tool("b", "", big))))
    assert error.param == "tools[1].function.parameters" and "5000 bytes" in error.message


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"type": "object", "properties": {"a": {"$ref": "#"}}},
        {"properties": {"a": {"$ref": "#/properties"}}},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {"$defs": {"a": {"items": {"$ref": "#/$defs/a"}}}},
    ],
    ids=["root", "root-in-property", "ancestor", "two-step-cycle", "self"],
)
def test_a_reference_cycle_is_refused(schema: dict[str, Any]) -> None:
    error = refused(BOUNDS, chat(schema))
    assert error.param == "response_format.json_schema.schema" and "$ref" in error.message


@pytest.mark.parametrize("ref", ["https://example.com/s.json", "#/$defs/missing", "other#/a"])
def test_a_reference_outside_the_schema_or_to_nothing_is_refused(ref: str) -> None:
    error = refused(BOUNDS, chat({"$defs": {"x": {}}, "$ref": ref}))
    assert ref in error.message


def test_a_shared_definition_referenced_twice_is_no_cycle() -> None:
    schema = {
        "$defs": {"leaf": {"type": "string"}, "pair": {"items": [{"$ref": "#/$defs/leaf"}] * 2}},
        "properties": {"x": {"$ref": "#/$defs/pair"}, "y": {"$ref": "#/$defs/pair"}},
    }
    BOUNDS.check_generation(chat(schema))


def test_messages_and_tools_per_request_are_bounded() -> None:
    bounds = RequestBounds(max_messages=3, max_tools=2)
    bounds.check_generation(chat(messages=HELLO * 3))
    assert refused(bounds, chat(messages=HELLO * 4)).param == "messages"
    tool = Tool("t", "", {"type": "object"})
    assert refused(bounds, chat(tools=(tool,) * 3)).param == "tools"


def test_embedding_inputs_are_bounded_in_count_and_tokens() -> None:
    bounds = RequestBounds(embedding_max_inputs=3, embedding_max_tokens=100)
    bounds.check_embedding(EmbeddingRequest("r", "e", ("a", "b", "c")), context=None)
    with pytest.raises(InvalidRequest) as count:
        bounds.check_embedding(EmbeddingRequest("r", "e", ("a",) * 4), context=None)
    assert count.value.param == "input" and "4 inputs" in count.value.message
    long = EmbeddingRequest("r", "e", ("x" * 200,))
    with pytest.raises(InvalidRequest) as tokens:
        bounds.check_embedding(long, context=None)
    assert tokens.value.param == "input"
    bounds.check_embedding(long, context=64)  # cut at the model's context: 64 tokens
