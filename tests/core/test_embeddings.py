"""core/embeddings.py: what an embeddings request may hold, checked before any engine."""

from __future__ import annotations

import pytest

from openmaas.core.embeddings import check_token_ids, checked_inputs
from openmaas.core.errors import InvalidRequest, PromptTooLong


def test_texts_and_token_arrays_are_taken_in_every_shape_openai_defines() -> None:
    assert checked_inputs("a text", "m", None, 384) == ("a text",)
    assert checked_inputs(["one", "two"], "m", None, 384) == ("one", "two")
    assert checked_inputs([101, 7592, 102], "m", None, 384, token_ids=True) == ((101, 7592, 102),)
    assert checked_inputs([[101, 102], [101, 7, 102]], "m", None, 384, token_ids=True) == (
        (101, 102),
        (101, 7, 102),
    )


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ([], "must not be empty"),
        ([""], "empty strings"),
        ([[]], "'input[0]' must not be an empty token array"),
        ([[1, -5]], "'input[0]' holds a negative token id"),
        (["text", [1, 2]], "not a mix"),
        ([[1, 2], [True, 3]], "'input[1]' must hold token ids"),
    ],
)
def test_malformed_inputs_are_refused_by_name(raw: object, says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        checked_inputs(raw, "m", None, 384, token_ids=True)  # type: ignore[arg-type]
    assert says in refused.value.message
    assert refused.value.param == "input"


def test_ids_outside_the_vocabulary_are_refused_naming_the_input_and_the_id() -> None:
    check_token_ids(("text", (0, 30521)), "minilm", 30522, 512)  # the edges are inside
    with pytest.raises(InvalidRequest) as refused:
        check_token_ids(("text", (101, 30522, 102)), "minilm", 30522, 512)
    assert "'input[1]' holds the token id 30522" in refused.value.message
    assert "ids 0 to 30521" in refused.value.message
    assert not isinstance(refused.value, PromptTooLong)


def test_a_token_array_longer_than_the_context_is_a_context_length_error() -> None:
    with pytest.raises(PromptTooLong) as refused:
        check_token_ids(((1,) * 513,), "minilm", 30522, 512)
    assert (refused.value.prompt_tokens, refused.value.context_length) == (513, 512)
    check_token_ids(((1,) * 513,), "minilm", None, None)  # nothing known: nothing checked


def test_a_protocol_without_token_arrays_refuses_them() -> None:
    with pytest.raises(InvalidRequest) as refused:
        checked_inputs([[1, 2]], "m", None, 384)
    assert refused.value.param == "input"
