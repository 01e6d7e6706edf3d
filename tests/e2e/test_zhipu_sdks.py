"""The Zhipu ``paas/v4`` API end to end: the official ``zhipuai`` and ``zai-sdk`` SDKs, exactly
as their users call them, against a live server; plus the wire details no SDK exposes.

The two SDKs need different PyJWT versions (zhipuai 2.1.5 pins <2.9, zai-sdk needs >=2.9), so
each gets its own virtualenv under ``<repo>/.venv-sdk/`` (built once, reused afterwards) and
runs ``zhipu_clients/scenarios.py`` there as a subprocess that prints JSON for us to check.
Without a package index the SDK tests are skipped, never failed.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from openmaas.core.keys import build_jwt
from tests.e2e.live import CHAT_MODEL, EMBEDDING_MODEL, LiveServer
from tests.e2e.sdk_venvs import PIP_TIMEOUT, SDK_PACKAGES, SDK_VENVS, build_sdk_venv
from tests.support.waiting import wait_until

SCENARIOS = Path(__file__).parent / "zhipu_clients" / "scenarios.py"
TOOL_MODEL = "fake-glm"
USER = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="session")
def sdk_venvs() -> dict[str, Future[Path]]:
    """Both SDK environments, built in parallel (once; later sessions reuse them)."""
    SDK_VENVS.mkdir(exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=2)
    return {name: pool.submit(build_sdk_venv, name) for name in SDK_PACKAGES}


@pytest.fixture(scope="session", params=["zhipuai", "zai"])
def sdk_results(
    request: pytest.FixtureRequest, sdk_venvs: dict[str, Future[Path]], live: LiveServer
) -> dict[str, Any]:
    """What one SDK saw in every scenario (one subprocess run per SDK)."""
    name: str = request.param
    try:
        python = sdk_venvs[name].result(timeout=PIP_TIMEOUT + 180)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot install the {name} SDK here: {exc} {detail[-500:]!r}")
    out = subprocess.run(
        [
            str(python),
            str(SCENARIOS),
            name,
            f"{live.base_url}/api/paas/v4/",
            live.admin_key,
            TOOL_MODEL,
            CHAT_MODEL,
            EMBEDDING_MODEL,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.stdout)
    unexpected = {k: v for k, v in results.items() if isinstance(v, dict) and "unexpected" in v}
    assert unexpected == {}, json.dumps(unexpected, indent=1)[:4000]
    return results


# -- the SDKs ----------------------------------------------------------------------------------
def test_sdk_chat_with_the_raw_key(sdk_results: dict[str, Any], live: LiveServer) -> None:
    body = sdk_results["chat_raw"]
    assert body["request_id"] == "client-req-1"  # the client's id is echoed ...
    assert body["id"] != "client-req-1"  # ... ours stays the response id
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]
    row = live.usage_row(body["id"])
    assert row["completion_tokens"] == usage["completion_tokens"]


def test_sdk_chat_with_a_jwt(sdk_results: dict[str, Any]) -> None:
    body = sdk_results["chat_jwt"]
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0


def test_sdk_stream_ends_with_usage(sdk_results: dict[str, Any], live: LiveServer) -> None:
    out = sdk_results["stream"]
    assert out["content"] and out["finish_reason"] in {"stop", "length"}
    assert out["usage"]["completion_tokens"] == live.usage_row(out["id"])["completion_tokens"]
    assert "cached_tokens" in out["usage"]["prompt_tokens_details"]


def test_sdk_sees_tool_calls_and_reasoning(sdk_results: dict[str, Any]) -> None:
    message = sdk_results["tools_fake"]["choices"][0]["message"]
    assert sdk_results["tools_fake"]["choices"][0]["finish_reason"] == "tool_calls"
    assert message["reasoning_content"] == "I should look up the weather."
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    streamed = sdk_results["stream_tools"]
    assert streamed["finish_reason"] == "tool_calls"
    assert streamed["reasoning"] == "I should look up the weather."
    assert streamed["calls"]["0"]["name"] == "get_weather"
    assert json.loads(streamed["calls"]["0"]["arguments"]) == {"city": "Paris"}


def test_sdk_tool_request_to_the_embedded_model_is_accepted(sdk_results: dict[str, Any]) -> None:
    body = sdk_results["tools_embedded"]
    assert body["choices"][0]["finish_reason"] in {"stop", "length", "tool_calls"}
    assert body["usage"]["prompt_tokens"] > 0


def test_sdk_thinking_disabled_sends_no_reasoning(sdk_results: dict[str, Any]) -> None:
    message = sdk_results["thinking_disabled"]["choices"][0]["message"]
    assert message["content"] == "It is sunny in Paris." and not message["reasoning_content"]


def test_sdk_async_job_is_polled_to_success(sdk_results: dict[str, Any], live: LiveServer) -> None:
    out = sdk_results["async"]
    assert out["created"]["task_status"] == "PROCESSING"
    result = out["result"]
    assert result["task_status"] == "SUCCESS" and result["id"] == out["created"]["id"]
    assert result["choices"][0]["message"]["content"]
    row = live.usage_row(result["id"])  # billed like any other request
    assert row["completion_tokens"] == result["usage"]["completion_tokens"]


def test_sdk_embeddings(sdk_results: dict[str, Any]) -> None:
    body = sdk_results["embeddings"]
    assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 384


def test_sdk_errors_are_the_sdk_exceptions_with_zhipu_codes(sdk_results: dict[str, Any]) -> None:
    unknown = sdk_results["unknown_model"]
    assert unknown["class"] == "APIRequestFailedError" and unknown["status"] == 400
    assert unknown["body"]["error"]["code"] == "1211" and unknown["should_retry"] == "false"
    for name, code in (("bad_key", "1002"), ("bad_jwt", "1004")):
        error = sdk_results[name]
        assert error["class"] == "APIAuthenticationError", error
        assert error["body"]["error"]["code"] == code and error["should_retry"] == "false"
    assert sdk_results["mid_stream_error"]["class"] == "APIResponseError"


# -- the wire, directly ----------------------------------------------------------------------
@pytest.fixture()
def zhipu(live: LiveServer, admin_key: str) -> Any:
    with httpx.Client(
        base_url=f"{live.base_url}/api/paas/v4", headers={"Authorization": admin_key}, timeout=60
    ) as client:
        yield client


def _sse(text: str) -> list[Any]:
    frames = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    return [f if f == "[DONE]" else orjson.loads(f) for f in frames]


def test_credential_carriers(live: LiveServer, admin_key: str) -> None:
    url = f"{live.base_url}/api/paas/v4/models"
    key_id, secret = admin_key.split(".")
    jwt = build_jwt(key_id, secret, int(time.time() * 1000))
    for headers in (
        {"Authorization": admin_key},
        {"Authorization": f"Bearer {admin_key}"},
        {"x-api-key": admin_key},
        {"Authorization": jwt},
        {"Authorization": f"Bearer {jwt}"},
    ):
        assert httpx.get(url, headers=headers).status_code == 200, headers
    expired = build_jwt(key_id, secret, int(time.time() * 1000) - 3_600_000)
    for headers, code in (
        ({}, "1001"),
        ({"Authorization": "Bearer nonsense"}, "1002"),
        ({"Authorization": f"Bearer {expired}"}, "1003"),
    ):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401
        assert response.json() == {
            "error": {"code": code, "message": response.json()["error"]["message"]}
        }
        assert response.headers["x-should-retry"] == "false"


def test_stream_with_tool_stream_sends_fragments_by_index(zhipu: httpx.Client) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    body = {
        "model": TOOL_MODEL,
        "messages": USER,
        "stream": True,
        "tools": [tool],
        "tool_stream": True,
    }
    frames = _sse(zhipu.post("/chat/completions", json=body).text)
    assert frames[-1] == "[DONE]"
    last = frames[-2]
    assert last["choices"][0]["finish_reason"] == "tool_calls" and "usage" in last
    parts = [p for f in frames[:-1] for p in f["choices"][0]["delta"].get("tool_calls", [])]
    assert parts and all(p["index"] == 0 for p in parts)


def test_mid_stream_error_frame(zhipu: httpx.Client) -> None:
    body = {"model": "fake-fail-mid", "messages": USER, "stream": True}
    frames = _sse(zhipu.post("/chat/completions", json=body).text)
    assert frames[-1] == "[DONE]"
    assert frames[-2] == {"error": {"code": "500", "message": frames[-2]["error"]["message"]}}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": USER}, 400, "1213"),
        ({"model": CHAT_MODEL, "messages": USER, "temperature": 5}, 400, "1214"),
        ({"model": "glm-nope", "messages": USER}, 400, "1211"),
        (
            {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello " * 5000}]},
            400,
            "1261",
        ),
        ({"model": "fake-loading", "messages": USER}, 429, "1305"),
    ],
)
def test_error_codes_on_the_wire(
    zhipu: httpx.Client, body: dict[str, Any], status: int, code: str
) -> None:
    response = zhipu.post("/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["x-should-retry"] == ("true" if status == 429 else "false")


def test_malformed_json_is_1210(zhipu: httpx.Client) -> None:
    response = zhipu.post(
        "/chat/completions", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "1210"


def _wait_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/async-result/{job_id}").json()
        return body if body.get("task_status") != "PROCESSING" else None

    return wait_until(finished, timeout=60, what=f"job {job_id} to finish", interval=0.1)


def test_async_job_belongs_to_its_organization(zhipu: httpx.Client, live: LiveServer) -> None:
    created = zhipu.post(
        "/async/chat/completions",
        json={"model": "fake-slow", "messages": USER, "request_id": "mine-1"},
    ).json()
    assert created["task_status"] == "PROCESSING" and created["request_id"] == "mine-1"
    live.cli("orgs", "create", "other-org")
    stranger = live.new_key(org="other-org", name="stranger")
    response = httpx.get(
        f"{live.base_url}/api/paas/v4/async-result/{created['id']}",
        headers={"Authorization": f"Bearer {stranger}"},
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "1222"
    done = _wait_job(zhipu, created["id"])  # the job ran on although nobody was waiting
    assert done["task_status"] == "SUCCESS" and done["request_id"] == "mine-1"
    assert live.usage_row(created["id"])["completion_tokens"] == 400


def test_failed_async_job_is_fail(zhipu: httpx.Client) -> None:
    created = zhipu.post(
        "/async/chat/completions", json={"model": "fake-fail-first", "messages": USER}
    )
    done = _wait_job(zhipu, created.json()["id"])
    assert done["task_status"] == "FAIL" and done["error"]["code"] == "500"


def test_async_job_for_an_unknown_model_is_refused_at_once(zhipu: httpx.Client) -> None:
    response = zhipu.post("/async/chat/completions", json={"model": "glm-nope", "messages": USER})
    assert response.status_code == 400 and response.json()["error"]["code"] == "1211"


def test_models_and_embeddings(zhipu: httpx.Client) -> None:
    ids = {m["id"] for m in zhipu.get("/models").json()["data"]}
    assert {CHAT_MODEL, EMBEDDING_MODEL, TOOL_MODEL} <= ids
    body = zhipu.post("/embeddings", json={"model": EMBEDDING_MODEL, "input": ["a", "b"]}).json()
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] > 0
