"""Content safety as clients see it (docs/moderation.md): a live server with a word list,
scripted fake models, and the official openai, anthropic and zhipuai SDKs. A stream that
reaches a listed word is cut with each protocol's own signal and never shows the word, even
when the word arrives split across two chunks; a request holding one is refused in each
protocol's shape; the usage record and the charge follow the documented rule (as counted
at the cut)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.live import LiveServer
from tests.e2e.sdk_venvs import build_sdk_venv

# The fake streams a token per word: "secret " and "plan " are two chunks.
ENGLISH = "the plan is a secret plan for today"
SENT_ENGLISH = "the plan is a "  # what a client may see: the text before the word
TOKENS_AT_CUT_ENGLISH = 6  # "the plan is a secret plan": generated when the cut is made
CHINESE = "这是 机密文件 内容"  # "机密" inside the second chunk (split: tests/moderation)
SENT_CHINESE = "这是 "
TOKENS_AT_CUT_CHINESE = 2
INPUT_PRICE, OUTPUT_PRICE = 2, 8  # per million tokens: 2 and 8 micros per token


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("moderation")
    words = root / "words.txt"
    words.write_text("# the operator's list\nSecret Plan\n机密\n", encoding="utf-8")
    catalog = f"""\
models:
  - name: en-chat
    deployments:
      - {{id: en, engine: fake, script: {{text: "{ENGLISH}"}}}}
  - name: zh-chat
    deployments:
      - {{id: zh, engine: fake, script: {{text: "{CHINESE}"}}}}
"""
    live = LiveServer(
        root / "home", catalog=catalog, embedded_models="false", moderation_lists=str(words)
    )
    live.start()
    for model in ("en-chat", "zh-chat"):
        live.cli(
            "prices",
            "set",
            model,
            "--input",
            str(INPUT_PRICE),
            "--cached-input",
            "1",
            "--output",
            str(OUTPUT_PRICE),
        )
    live.cli("billing", "topup", "default", "100.00")
    yield live
    live.stop()


def check_cut(live: LiveServer, request_id: str, completion_tokens: int) -> None:
    row = live.usage_row(request_id)
    assert row["termination"] == "content_filtered"
    assert row["completion_tokens"] == completion_tokens  # generated up to the cut
    assert row["prompt_tokens"] > 0
    charge = row["prompt_tokens"] * INPUT_PRICE + completion_tokens * OUTPUT_PRICE
    assert row["cost_micros"] == charge


# -- OpenAI -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.admin_key, max_retries=0)


@pytest.mark.parametrize(
    ("model", "sent", "tokens"),
    [
        ("en-chat", SENT_ENGLISH, TOKENS_AT_CUT_ENGLISH),
        ("zh-chat", SENT_CHINESE, TOKENS_AT_CUT_CHINESE),
    ],
)
def test_openai_stream_is_cut_with_content_filter(
    oai: openai.OpenAI, server: LiveServer, model: str, sent: str, tokens: int
) -> None:
    stream = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "tell me"}], stream=True
    )
    text, reasons, request_id = "", [], ""
    for chunk in stream:
        request_id = chunk.id
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert text == sent
    assert reasons == ["content_filter"]
    check_cut(server, request_id, tokens)


def test_openai_answer_is_cut_with_content_filter(oai: openai.OpenAI, server: LiveServer) -> None:
    answer = oai.chat.completions.create(
        model="en-chat", messages=[{"role": "user", "content": "tell me"}]
    )
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == SENT_ENGLISH
    assert answer.usage is not None
    assert answer.usage.completion_tokens == TOKENS_AT_CUT_ENGLISH
    check_cut(server, answer.id, TOKENS_AT_CUT_ENGLISH)


def test_openai_responses_end_incomplete_with_content_filter(
    oai: openai.OpenAI, server: LiveServer
) -> None:
    response = oai.responses.create(model="en-chat", input="tell me")
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "content_filter"
    assert response.output_text == SENT_ENGLISH


def test_openai_input_with_a_listed_word_is_refused_free(
    oai: openai.OpenAI, server: LiveServer
) -> None:
    before = server.usage_count()
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model="en-chat", messages=[{"role": "user", "content": "the ＳＥＣＲＥＴ　ＰＬＡＮ"}]
        )
    assert caught.value.status_code == 400 and caught.value.code == "content_filter"
    assert server.usage_count() == before  # no record: nothing is charged


# -- Anthropic ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def claude(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=server.admin_key, max_retries=0)


def test_anthropic_stream_stops_with_refusal(
    claude: anthropic.Anthropic, server: LiveServer
) -> None:
    with claude.messages.stream(
        model="en-chat", max_tokens=64, messages=[{"role": "user", "content": "tell me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == SENT_ENGLISH
    assert message.stop_reason == "refusal"
    assert message.usage.output_tokens == TOKENS_AT_CUT_ENGLISH
    check_cut(server, message.id, TOKENS_AT_CUT_ENGLISH)


def test_anthropic_answer_stops_with_refusal(
    claude: anthropic.Anthropic, server: LiveServer
) -> None:
    message = claude.messages.create(
        model="zh-chat", max_tokens=64, messages=[{"role": "user", "content": "tell me"}]
    )
    assert message.stop_reason == "refusal"
    assert "".join(b.text for b in message.content if b.type == "text") == SENT_CHINESE
    check_cut(server, message.id, TOKENS_AT_CUT_CHINESE)


def test_anthropic_input_with_a_listed_word_is_refused(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="en-chat", max_tokens=64, messages=[{"role": "user", "content": "机密?"}]
        )
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["error"]["type"] == "invalid_request_error"


# -- Zhipu (the zhipuai SDK in its own virtualenv, as tests/e2e/test_zhipu_sdks.py) -------
ZHIPU_SCRIPT = """
import json, sys
from zhipuai import ZhipuAI
client = ZhipuAI(api_key=sys.argv[2], base_url=sys.argv[1], max_retries=0)
out = {"content": "", "reasons": []}
for chunk in client.chat.completions.create(
    model="zh-chat", messages=[{"role": "user", "content": "tell me"}], stream=True
):
    out["id"] = chunk.id
    for choice in chunk.choices:
        out["content"] += choice.delta.content or ""
        if choice.finish_reason:
            out["reasons"].append(choice.finish_reason)
answer = client.chat.completions.create(
    model="en-chat", messages=[{"role": "user", "content": "tell me"}]
)
out["answer"] = {"id": answer.id, "reason": answer.choices[0].finish_reason,
                 "content": answer.choices[0].message.content}
try:
    client.chat.completions.create(
        model="en-chat", messages=[{"role": "user", "content": "secret plan"}]
    )
except Exception as exc:
    response = exc.response
    out["refused"] = {"status": response.status_code, "body": response.json()}
print(json.dumps(out))
"""


def test_zhipuai_stream_is_cut_with_sensitive(server: LiveServer) -> None:
    try:
        zhipuai = build_sdk_venv("zhipuai")  # as tests/e2e/test_zhipu_sdks.py does
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot install the zhipuai SDK here: {exc}")
    done = subprocess.run(
        [str(zhipuai), "-c", ZHIPU_SCRIPT, f"{server.base_url}/api/paas/v4/", server.admin_key],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["content"] == SENT_CHINESE and out["reasons"] == ["sensitive"]
    check_cut(server, out["id"], TOKENS_AT_CUT_CHINESE)
    assert out["answer"]["reason"] == "sensitive" and out["answer"]["content"] == SENT_ENGLISH
    check_cut(server, out["answer"]["id"], TOKENS_AT_CUT_ENGLISH)
    assert out["refused"]["status"] == 400 and out["refused"]["body"]["error"]["code"] == "1301"
