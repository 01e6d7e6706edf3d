"""Whole answers as a json client sees them: the official openai SDK, a live server and a
priced model on a real OpenAI-compatible upstream. A client that does not stream gets its
answer from one ``stream: false`` upstream response, billed by the upstream's own counts; a
client that leaves before the answer is billed the prompt it sent (estimated), and a server
killed before the answer arrives bills nothing; the books balance either way."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from openmaas.core.prices import ModelPrice
from tests.e2e.live import LiveServer
from tests.e2e.test_crash_recovery import assert_balanced, read_books, seed
from tests.engines.upstream import Behaviour, Upstream
from tests.support.waiting import wait_until

MODEL = "whole-priced"
TEXT = "one two three four five six"  # 6 completion tokens at the upstream
PROMPT_TOKENS = 11  # what the upstream reports (Behaviour's default)
TOP_UP = 10_000_000
PRICE = ModelPrice(  # 100 micros per input token, 200 per output token
    MODEL,
    input_per_million=100_000_000,
    cached_input_per_million=50_000_000,
    output_per_million=200_000_000,
)
MESSAGES = [{"role": "user", "content": "count to six please"}]
Site = tuple[LiveServer, str, Upstream]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("whole")
    with Upstream(Behaviour(text=TEXT)) as upstream:
        catalog = f"""\
models:
  - name: {MODEL}
    deployments:
      - {{id: up, engine: openai, base_url: "{upstream.base_url}", upstream_model: m,
         data_class: local}}
"""
        live = LiveServer(
            root / "home", catalog=catalog, embedded_models="false", billing_refresh_seconds="0"
        ).start()
        try:
            org = asyncio.run(seed(live, [PRICE], TOP_UP))
            yield live, org, upstream
        finally:
            live.stop()


def client(live: LiveServer, timeout: float = 30.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{live.base_url}/v1", api_key=live.admin_key, max_retries=0, timeout=timeout
    )


def rows_ended(live: LiveServer, termination: str) -> list[dict[str, object]]:
    query = "SELECT * FROM usage_records WHERE model = ? AND termination = ?"
    return live.rows(query, MODEL, termination)


def test_a_json_client_gets_its_answer_from_one_upstream_response(site: Site) -> None:
    live, _org, upstream = site
    raw = client(live).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=40
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == TEXT
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (PROMPT_TOKENS, 6)
    sent = upstream.requests[-1].body
    assert sent["stream"] is False and "stream_options" not in sent
    row = live.usage_row(raw.headers["x-request-id"])
    assert row["termination"] == "finished"
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"]) == (11, 6, 0)
    assert row["cost_micros"] == PROMPT_TOKENS * 100 + 6 * 200


def test_a_streaming_client_is_still_streamed_from_the_upstream(site: Site) -> None:
    live, _org, upstream = site
    chunks = client(live).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert upstream.requests[-1].body["stream"] is True


def test_a_json_client_that_leaves_is_billed_the_prompt_it_sent(site: Site) -> None:
    live, _org, upstream = site
    upstream.script(Behaviour(text=TEXT, hang_after_tokens=0))  # never answers
    with pytest.raises(openai.APITimeoutError):
        client(live, timeout=1.0).chat.completions.create(model=MODEL, messages=MESSAGES)
    wait_until(lambda: upstream.requests[-1].disconnected, what="the upstream to see it go")
    [row] = wait_until(lambda: rows_ended(live, "client_disconnected"), what="its usage record")
    assert row["completion_tokens"] == 0 and row["estimated"] == 1
    assert int(row["prompt_tokens"]) > 0  # the prompt sent, estimated
    assert row["cost_micros"] == int(row["prompt_tokens"]) * 100


def test_a_server_killed_before_the_answer_bills_nothing_and_the_books_balance(
    site: Site,
) -> None:
    live, org, upstream = site
    upstream.script(Behaviour(text=TEXT, hang_after_tokens=0))
    asked = len(upstream.requests)

    def ask() -> None:
        body = {"model": MODEL, "messages": MESSAGES}
        headers = {"Authorization": f"Bearer {live.admin_key}"}
        try:
            httpx.post(f"{live.base_url}/v1/chat/completions", json=body, headers=headers)
        except httpx.HTTPError:
            pass  # the server is killed under it

    caller = threading.Thread(target=ask)
    caller.start()
    wait_until(lambda: len(upstream.requests) > asked, what="the request at the upstream")
    live.kill()
    caller.join(timeout=30)
    live.start()
    [row] = wait_until(lambda: rows_ended(live, "gateway_killed"), what="the recovered record")
    assert row["completion_tokens"] == 0 and row["cost_micros"] == 0
    live.stop()  # the books as the next start finds them
    books = asyncio.run(read_books(live, org))
    assert_balanced(books, TOP_UP)
    live.start()
