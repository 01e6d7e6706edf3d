"""A rate-limit refusal in each protocol: 429, its own error shape, and the limit headers."""

from __future__ import annotations

import pytest

from openmaas.core.errors import BudgetExceeded, InsufficientBalance, RateLimited
from openmaas.protocols.anthropic.errors import to_anthropic_error
from openmaas.protocols.openai.errors import to_openai_error
from openmaas.protocols.zhipu.errors import to_zhipu_error

LIMITED = RateLimited(
    "Rate limit reached for tokens per minute.",
    limit="tokens",
    scope="key:om0123456789abcdef",
    retry_after_seconds=7,
    headers={"x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "0"},
)


@pytest.mark.parametrize(
    ("render", "code_of"),
    [
        (to_openai_error, lambda b: (b["error"]["type"], b["error"]["code"])),
        (to_anthropic_error, lambda b: (b["type"], b["error"]["type"])),
        (to_zhipu_error, lambda b: ("zhipu", b["error"]["code"])),
    ],
)
def test_rate_limited_is_429_with_headers(render, code_of) -> None:  # type: ignore[no-untyped-def]
    status, body, headers = render(LIMITED)
    assert status == 429
    assert code_of(body) in {
        ("rate_limit_error", "rate_limit_exceeded"),
        ("error", "rate_limit_error"),
        ("zhipu", "1302"),
    }
    assert headers["retry-after"] == "7"
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    "exc", [InsufficientBalance("org_1", 900, 12), BudgetExceeded("key:k", "day", 5)]
)
def test_quota_errors_are_final_in_every_protocol(exc) -> None:  # type: ignore[no-untyped-def]
    """Out of money is not a rate limit: each protocol's own code, and no SDK retries it."""
    status, body, headers = to_openai_error(exc)
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert headers["x-should-retry"] == "false"
    status, body, headers = to_zhipu_error(exc)
    code = "1113" if isinstance(exc, InsufficientBalance) else "1308"
    assert (status, body["error"]["code"], headers["x-should-retry"]) == (429, code, "false")
    status, body, headers = to_anthropic_error(exc)
    expected = (
        (402, "billing_error")
        if isinstance(exc, InsufficientBalance)
        else (400, "invalid_request_error")  # Anthropic's "spend limit reached"
    )
    assert (status, body["error"]["type"], headers["x-should-retry"]) == (*expected, "false")
    assert "retry-after" not in headers


def test_balance_refusal_says_whose_money_how_much_and_what_to_do_in_every_protocol() -> None:
    """The message a user reads, the same in all three protocols (types and codes kept)."""
    exc = InsufficientBalance("org_1", 81, 0, "CNY")
    for render in (to_openai_error, to_zhipu_error, to_anthropic_error):
        message = render(exc)[1]["error"]["message"]
        assert "org_1" in message and "0.000081 CNY" in message, render
        assert "openmaas billing topup org_1" in message and "micros" not in message
