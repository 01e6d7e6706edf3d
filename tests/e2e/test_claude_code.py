"""Claude Code itself, headless, against the live server: ``claude -p "Say hello"
--output-format json`` with ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_AUTH_TOKEN`` (an OpenMaaS
key), at the version ``scripts/claude-code/`` pins (tests/e2e/claude_code.py installs and
runs it offline).

Its prompt is a system prompt, a dozen tools and a system turn: far more than the embedded
model's 2,048-token context. On the scripted ``fake-coder`` (no context limit) it answers;
on the embedded model it shows the context error, in Anthropic's words. What it sends is
recorded and compared with ``tests/protocols/fixtures/claude_code_request.json``, the sample
the parser's unit tests read, so that a new version's new fields are noticed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from openmaas.protocols.anthropic.adapter import messages_request, parse_body
from openmaas.protocols.anthropic.schemas import AnthropicMessagesRequest
from tests.e2e import claude_code
from tests.e2e.live import CHAT_MODEL, FAKE_MODELS, LiveServer
from tests.support.waiting import wait_until

MODEL = "fake-coder"
FIXTURE = Path(__file__).parents[1] / "protocols" / "fixtures" / "claude_code_request.json"
SAMPLE: dict[str, Any] = json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def claude() -> Path:
    return claude_code.executable()


@pytest.fixture()
def key(live: LiveServer) -> str:
    """A key of this test's own: the server's access log tells its requests apart."""
    return live.new_key(name="claude-code")


def _statuses(live: LiveServer, key: str) -> list[int]:
    """The status of every request made with ``key``, from the server's access log."""
    key_id = key.split(".")[0]
    statuses = []
    for line in live.stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "openmaas.access" and entry.get("key_id") == key_id:
            statuses.append(int(entry["status"]))
    return statuses


def _answered(live: LiveServer, key: str, status: int) -> list[int]:
    """The statuses of ``key``'s requests once one with ``status`` is logged (a request is
    logged as it ends, the one Claude Code read last after those before it)."""

    def logged() -> list[int]:
        found = _statuses(live, key)
        return found if status in found else []

    return wait_until(logged, what=f"a request answered {status} in the access log")


def _result(done: Any) -> dict[str, Any]:
    """Claude Code's JSON result (its one line of stdout)."""
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        raise AssertionError(
            f"claude exited {done.returncode} without a JSON result:\n"
            f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
        ) from None


# -- the wire, as Claude Code sends it ---------------------------------------------------
def test_head_of_the_base_url_answers_200(live: LiveServer) -> None:
    """Claude Code checks ``HEAD /`` of its base URL; no key needed, no body."""
    response = httpx.head(f"{live.base_url}/")
    assert response.status_code == 200 and response.content == b""


@pytest.fixture()
def recorded(live: LiveServer, key: str) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    """A client sending the recorded request's headers with a real key, and its body
    addressed to the scripted model."""
    headers = SAMPLE["headers"] | {"authorization": f"Bearer {key}"}
    body = copy.deepcopy(SAMPLE["body"]) | {"model": MODEL}
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=60) as client:
        yield client, body


def test_the_recorded_request_is_answered_as_claude_code_reads_it(
    recorded: tuple[httpx.Client, dict[str, Any]], live: LiveServer
) -> None:
    client, body = recorded
    with client.stream("POST", SAMPLE["path"], content=orjson.dumps(body)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [json.loads(line[6:]) for line in response.iter_lines() if line[:6] == "data: "]
    blocks = [f["content_block"]["type"] for f in frames if f["type"] == "content_block_start"]
    assert blocks == ["thinking", "text"]
    deltas = [f["delta"] for f in frames if f["type"] == "content_block_delta"]
    assert not [d for d in deltas if d["type"] == "thinking_delta"]  # display: "omitted"
    text = "".join(d["text"] for d in deltas if d["type"] == "text_delta")
    assert text == FAKE_MODELS[MODEL]["text"]
    assert frames[-1] == {"type": "message_stop"}
    row = live.usage_row(frames[0]["message"]["id"])
    assert row["model"] == MODEL and row["endpoint"] == "messages"


def test_the_recorded_request_is_counted(recorded: tuple[httpx.Client, dict[str, Any]]) -> None:
    client, body = recorded
    for sampling in ("max_tokens", "stream", "metadata"):
        del body[sampling]
    response = client.post("/v1/messages/count_tokens?beta=true", content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    assert response.json()["input_tokens"] > 0


# -- Claude Code itself -----------------------------------------------------------------
def test_claude_code_answers_on_a_model_with_the_context_for_it(
    claude: Path, live: LiveServer, key: str, tmp_path: Path
) -> None:
    done = claude_code.run(claude, live.base_url, key, MODEL, tmp_path / "home")
    result = _result(done)
    assert done.returncode == 0, result
    assert result["is_error"] is False and result["subtype"] == "success"
    assert result["result"] == FAKE_MODELS[MODEL]["text"]
    assert result["usage"]["output_tokens"] > 0
    # Every request was taken as sent: Claude Code resends a refused one in another form.
    assert set(_answered(live, key, 200)) == {200}


def test_claude_code_shows_the_context_error_of_a_small_model(
    claude: Path, live: LiveServer, key: str, tmp_path: Path
) -> None:
    """The embedded model's 2,048 tokens cannot hold Claude Code's prompt: Claude Code
    reads Anthropic's "prompt is too long: N tokens > M maximum" and shows it with the
    counts ("Prompt is too long · the request is ~12393 tokens (limit 2048) ...")."""
    done = claude_code.run(claude, live.base_url, key, CHAT_MODEL, tmp_path / "home")
    result = _result(done)
    assert done.returncode != 0 and result["is_error"] is True
    assert result["result"].startswith("Prompt is too long"), result
    assert "(limit 2048)" in result["result"], result
    assert set(_answered(live, key, 400)) == {400}


# -- what it sends ----------------------------------------------------------------------
def _shape(body: dict[str, Any]) -> dict[str, set[str]]:
    """What a parser must take, by name: top-level fields, roles, block types and fields."""
    messages = body.get("messages", [])
    blocks = [b for m in messages if isinstance(m["content"], list) for b in m["content"]]
    blocks += body.get("system", []) if isinstance(body.get("system"), list) else []
    edits = (body.get("context_management") or {}).get("edits", [])
    return {
        "top-level fields": set(body),
        "message roles": {m["role"] for m in messages},
        "message fields": {k for m in messages for k in m},
        "block types": {b["type"] for b in blocks},
        "block fields": {k for b in blocks for k in b},
        "tool fields": {k for t in body.get("tools", []) for k in t},
        "thinking fields": set(body.get("thinking") or {}),
        "output_config fields": set(body.get("output_config") or {}),
        "context edits": {e["type"] for e in edits},
    }


def test_what_claude_code_sends_is_accepted_and_known(claude: Path, tmp_path: Path) -> None:
    """Every request Claude Code sends parses; anything the fixture lacks (a new version's
    new field, role or block) fails here, with a fresh anonymized sample to review: check
    what /v1/messages should do with it, then replace the fixture with the sample."""
    home = tmp_path / "home"
    with claude_code.recorder() as (url, seen):  # asking for the model the fixture names
        done = claude_code.run(claude, url, "sk-not-a-key", SAMPLE["body"]["model"], home)
    assert done.returncode == 0 and _result(done)["result"] == claude_code.ANSWER
    posts = [r for r in seen if r.method == "POST"]
    assert posts and {r.path for r in posts} <= {"/v1/messages?beta=true"}, [r.path for r in seen]
    sample = {"claude_code": claude_code.pinned_version(), **claude_code.anonymized(posts[0], home)}
    sample_path = tmp_path / "claude_code_request.json"
    sample_path.write_text(json.dumps(sample, indent=1, ensure_ascii=False) + "\n")
    for request in posts:
        messages_request(parse_body(request.body, AnthropicMessagesRequest), "r", MODEL)
    known = _shape(SAMPLE["body"])
    new = {
        what: sorted(names - known[what])
        for request in posts
        for what, names in _shape(request.json()).items()
        if names - known[what]
    }
    betas = {b for r in posts for b in r.headers.get("anthropic-beta", "").split(",")}
    new_betas = sorted(betas - set(SAMPLE["headers"]["anthropic-beta"].split(",")))
    assert not new and not new_betas, (
        f"Claude Code {claude_code.pinned_version()} sends what the fixture does not show: "
        f"{new or ''} {new_betas or ''}; review {sample_path} and copy it to {FIXTURE}"
    )
