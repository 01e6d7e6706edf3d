"""The tokenizer estimate of an upstream that reports no usage: the same counts however they
are made (remembered for short deltas, counted now for a short prompt), in bounded memory."""

from __future__ import annotations

import pytest

from openmaas.core.types import GenerationRequest, Message, Role
from openmaas.engines.upstream import token_estimate
from openmaas.engines.upstream.token_estimate import TokenEstimator

DELTAS = ["Hello", " there", ",", " how", " are", " you", "?", " 你好", " naïve", "\n\n", "```py"]


@pytest.fixture(scope="module")
def estimator() -> TokenEstimator:
    loaded = TokenEstimator.load()
    if loaded._tokenizer is None:
        pytest.fail("the embedded embedding model's tokenizer is not installed")
    return loaded


def tokens_of(estimator: TokenEstimator, text: str) -> int:
    tokenizer = estimator._tokenizer
    assert tokenizer is not None
    return len(tokenizer.encode(text, add_special_tokens=False))


MESSAGES = ["You are a helpful assistant.", "Say hello and ask how I am, in a few words. " * 20]


def test_a_text_counts_as_the_tokenizer_counts_it_every_time(estimator: TokenEstimator) -> None:
    texts = DELTAS + MESSAGES + ["x" * (token_estimate._INLINE_CHARS + 1)]
    for _ in range(3):  # counted, then remembered (the longest one never is)
        assert [estimator.count(t) for t in texts] == [tokens_of(estimator, t) for t in texts]


def test_remembered_counts_stay_bounded(estimator: TokenEstimator) -> None:
    fresh = TokenEstimator(estimator._tokenizer)
    for n in range(3 * token_estimate._REMEMBERED_TEXTS):
        fresh.count(f"w{n}")
        fresh.count(f"a message of more than sixteen characters, number {n}")
    assert len(fresh._short) <= token_estimate._REMEMBERED_TEXTS
    assert len(fresh._long) <= token_estimate._REMEMBERED_TEXTS
    assert fresh.count("w1") == tokens_of(estimator, "w1")


async def test_a_short_prompt_is_counted_now_as_it_would_be_later(
    estimator: TokenEstimator,
) -> None:
    short = GenerationRequest(
        "r", "m", messages=(Message(Role.SYSTEM, "Be brief."), Message(Role.USER, "Say hello"))
    )
    assert estimator.prompt_now(short) == await estimator.prompt(short)
    long = GenerationRequest("r", "m", messages=(Message(Role.USER, "word " * 2000),))
    assert estimator.prompt_now(long) is None
    assert await estimator.prompt(long) > 2000
