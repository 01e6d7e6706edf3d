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


def fan_out(levels: int, width: int = 4) -> dict[str, Any]:
    """``levels`` definitions, each ``width`` references to the one before: under 2 KB,
    and 4^levels schemas once the references are followed (14 levels kept llama.cpp
    building its grammar for minutes)."""
    defs: dict[str, Any] = {"d0": {"type": "integer"}}
    for i in range(1, levels + 1):
        defs[f"d{i}"] = {"anyOf": [{"$ref": f"#/$defs/d{i - 1}"}] * width}
    return {"$defs": defs, "$ref": f"#/$defs/d{levels}"}


def test_references_that_fan_out_are_refused_by_what_they_expand_to() -> None:
    error = refused(BOUNDS, chat(fan_out(14)))
    assert error.param == "response_format.json_schema.schema"
    assert "50000 subschemas" in error.message and "'$ref'" in error.message
    error = refused(BOUNDS, chat(fan_out(1000, width=2)))  # 2^1000, counted without blowing up
    assert "subschemas" in error.message
    BOUNDS.check_generation(chat(fan_out(6)))  # 4^6: within


def test_subschemas_count_over_every_schema_of_the_request() -> None:
    bounds = RequestBounds(schema_max_subschemas=100)
    forty = {"anyOf": [{"type": "integer"}] * 39}  # 40 objects
    bounds.check_generation(chat(forty, (Tool("a", "", forty),)))
    error = refused(bounds, chat(forty, (Tool("a", "", forty), Tool("b", "", forty))))
    assert error.param == "tools[1].function.parameters"


def test_an_object_with_too_many_optional_properties_is_refused() -> None:
    props = {f"p{i}": {"type": "string"} for i in range(300)}
    error = refused(BOUNDS, chat({"type": "object", "properties": props}))
    assert "300 optional properties" in error.message and "at most 256" in error.message
    required = {"type": "object", "properties": props, "required": list(props)}
    BOUNDS.check_generation(chat(required))  # required ones cost nothing alike
    more = {f"q{i}": {"type": "string"} for i in range(100)}
    some = {"properties": {**props, **more}, "required": [*more, {}, 3]}  # junk is no name
    assert "300 optional properties" in refused(BOUNDS, chat(some)).message


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "minLength": 5000}, "'minLength' of 5000"),
        ({"type": "array", "minItems": 50000}, "'minItems' of 50000"),
        ({"type": "object", "minProperties": 2000}, "'minProperties' of 2000"),
        ({"type": "string", "pattern": "^a{100000}$"}, "a pattern's {100000}"),
        ({"type": "string", "pattern": "^(ab){3000,}$"}, "a pattern's {3000}"),
        ({"type": "string", "pattern": "a{" + "9" * 5000 + "}"}, "a pattern's {"),
    ],
    ids=["minLength", "minItems", "minProperties", "pattern-count", "pattern-at-least", "digits"],
)
def test_repetition_counts_are_capped(schema: dict[str, Any], named: str) -> None:
    tool = Tool("t", "", {"type": "object", "properties": {"a": schema}})
    error = refused(BOUNDS, chat(tools=(tool,)))
    assert error.param == "tools[0].function.parameters"
    assert named in error.message and "at most 1000" in error.message


def test_upper_counts_and_escaped_braces_are_not_repetitions() -> None:
    # Measured: llama.cpp builds the grammar of a large upper count lazily, at no cost.
    BOUNDS.check_generation(chat({"type": "string", "maxLength": 100_000}))
    BOUNDS.check_generation(chat({"type": "array", "maxItems": 50_000}))
    BOUNDS.check_generation(chat({"type": "string", "pattern": "^a{1,100000}$"}))
    BOUNDS.check_generation(chat({"type": "string", "pattern": r"^\\{5000}$"}))
    # A property named like a keyword is a property, not the keyword.
    named = {"properties": {"minLength": {"type": "integer"}, "pattern": {"type": "string"}}}
    BOUNDS.check_generation(chat(named))


def test_long_regular_expressions_are_refused() -> None:
    alternatives = "^(" + "|".join(f"w{i}" for i in range(500)) + ")$"
    error = refused(BOUNDS, chat({"type": "string", "pattern": alternatives}))
    assert f"a pattern of {len(alternatives)} characters" in error.message
    keyed = {"type": "object", "patternProperties": {alternatives: {"type": "string"}}}
    assert "at most 1000" in refused(BOUNDS, chat(keyed)).message
    BOUNDS.check_generation(chat({"type": "string", "pattern": "^[a-z]{3,8}-\\d{4}$"}))


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
