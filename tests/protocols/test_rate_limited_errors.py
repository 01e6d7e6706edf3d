"""A rate-limit refusal in each protocol: 429, its own error shape, and the limit headers."""

from __future__ import annotations

import pytest

from openmaas.core.errors import RateLimited
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
