"""core/validation.py: the field a bad body got wrong, named the way clients spell it."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from openmaas.core.validation import blamed_field, field_path


class Part(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["user", "assistant"]
    content: str | list[Part]


class Body(BaseModel):
    messages: list[Message]
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    choice: Literal["auto", "none"] | dict[str, str] | None = None


def _blame(data: dict, prefix: str = "") -> tuple[str, dict]:
    with pytest.raises(ValidationError) as info:
        Body.model_validate(data)
    return blamed_field(info.value, prefix)


def test_nested_fields_and_indexes() -> None:
    field, error = _blame(
        {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}
    )
    assert field == "messages[1].role" and error["type"] == "literal_error"


def test_union_branch_labels_are_not_fields() -> None:
    field, _ = _blame({"messages": [{"role": "user", "content": [{"type": "image", "text": "t"}]}]})
    assert field == "messages[0].content[0].type"
    assert _blame({"messages": [], "choice": "sometimes"})[0] == "choice"


def test_the_telling_error_of_a_union_wins() -> None:
    field, error = _blame({"messages": [], "stop": ["a", "b", "c", "d", "e"]})
    assert field == "stop" and "at most 4" in error["msg"]


def test_missing_fields_and_prefixes() -> None:
    field, error = _blame({}, prefix="body")
    assert field == "body.messages" and error["type"] == "missing"
    assert field_path((), "") == "body"
