"""Run Zhipu SDK calls against a live OpenMaaS and print what the SDK saw, as one JSON object.

Runs inside an SDK's own virtualenv (``zhipuai`` and ``zai-sdk`` need different PyJWT
versions), so it imports nothing from OpenMaaS or the test suite:

    python scenarios.py <zhipuai|zai> <base_url> <api_key> \
        <tool_model> <chat_model> <embedding_model>
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

SDK, BASE_URL, KEY, TOOL_MODEL, CHAT_MODEL, EMBEDDING_MODEL = sys.argv[1:7]
USER = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

if SDK == "zhipuai":
    import zhipuai as sdk
    from zhipuai import ZhipuAI as Client
else:
    import zai as sdk  # noqa: F401
    from zai import ZhipuAiClient as Client
    from zai.core import _errors as sdk_errors

    sdk.APIRequestFailedError = sdk_errors.APIRequestFailedError  # type: ignore[attr-defined]
    sdk.APIAuthenticationError = sdk_errors.APIAuthenticationError  # type: ignore[attr-defined]
    sdk.APIResponseError = sdk_errors.APIResponseError  # type: ignore[attr-defined]


def client(jwt: bool = False, key: str = KEY) -> Any:
    # disable_token_cache=False makes both SDKs sign a short-lived HS256 JWT with the key.
    return Client(api_key=key, base_url=BASE_URL, disable_token_cache=not jwt, max_retries=0)


def dump(obj: Any) -> Any:
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


def error_info(exc: Exception) -> dict[str, Any]:
    info: dict[str, Any] = {"class": type(exc).__name__}
    response = getattr(exc, "response", None)
    if response is not None:
        info["status"] = response.status_code
        info["should_retry"] = response.headers.get("x-should-retry")
        try:
            info["body"] = response.json()
        except Exception:  # noqa: BLE001
            info["body"] = None
    info["message"] = str(exc)[:500]
    return info


def chat(jwt: bool = False, **extra: Any) -> Any:
    return dump(
        client(jwt).chat.completions.create(model=CHAT_MODEL, messages=USER, max_tokens=8, **extra)
    )


def stream(model: str, **extra: Any) -> dict[str, Any]:
    chunks = list(
        client().chat.completions.create(model=model, messages=USER, stream=True, **extra)
    )
    out: dict[str, Any] = {"chunks": len(chunks), "content": "", "reasoning": "", "calls": {}}
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            out["content"] += delta.content or ""
            out["reasoning"] += getattr(delta, "reasoning_content", None) or ""
            for call in delta.tool_calls or []:
                slot = out["calls"].setdefault(str(call.index), {"name": "", "arguments": ""})
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                out["finish_reason"] = choice.finish_reason
        if chunk.usage is not None:
            out["usage"] = dump(chunk.usage)
    out["id"] = chunks[-1].id if chunks else None
    return out


def tools_request(model: str) -> Any:
    return dump(
        client().chat.completions.create(
            model=model, messages=USER, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=16
        )
    )


def async_job() -> dict[str, Any]:
    c = client()
    created = c.chat.asyncCompletions.create(model=CHAT_MODEL, messages=USER, max_tokens=8)
    polls = 0
    result: Any = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        polls += 1
        result = c.chat.asyncCompletions.retrieve_completion_result(id=created.id)
        if result.task_status != "PROCESSING":
            break
        time.sleep(0.2)  # the client's polling interval, as an SDK user polls a job
    return {"created": dump(created), "result": dump(result), "polls": polls}


def expect_error(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001
        return error_info(exc)
    return {"class": None, "value": repr(value)[:300]}


def mid_stream_error() -> dict[str, Any]:
    def run() -> Any:
        return list(
            client().chat.completions.create(model="fake-fail-mid", messages=USER, stream=True)
        )

    return expect_error(run)


def bad_jwt() -> dict[str, Any]:
    key_id = KEY.split(".")[0]
    forged = f"{key_id}.{'A' * 43}"  # right id, wrong secret: the JWT's signature fails
    return expect_error(
        lambda: client(jwt=True, key=forged).chat.completions.create(
            model=CHAT_MODEL, messages=USER, max_tokens=4
        )
    )


SCENARIOS: dict[str, Callable[[], Any]] = {
    "chat_raw": lambda: chat(request_id="client-req-1", user_id="user-123456"),
    "chat_jwt": lambda: chat(jwt=True, do_sample=False),
    "stream": lambda: stream(CHAT_MODEL, max_tokens=8),
    "stream_tools": lambda: stream(TOOL_MODEL, tools=[WEATHER_TOOL]),
    "tools_embedded": lambda: tools_request(CHAT_MODEL),
    "tools_fake": lambda: tools_request(TOOL_MODEL),
    "thinking_disabled": lambda: dump(
        client().chat.completions.create(
            model=TOOL_MODEL, messages=USER, thinking={"type": "disabled"}
        )
    ),
    "async": async_job,
    "embeddings": lambda: dump(client().embeddings.create(model=EMBEDDING_MODEL, input="hello")),
    "unknown_model": lambda: expect_error(
        lambda: client().chat.completions.create(model="glm-nope", messages=USER)
    ),
    "bad_key": lambda: expect_error(
        lambda: client(key="om0000000000000000." + "A" * 43).chat.completions.create(
            model=CHAT_MODEL, messages=USER
        )
    ),
    "bad_jwt": bad_jwt,
    "mid_stream_error": mid_stream_error,
}


def main() -> None:
    results: dict[str, Any] = {"sdk_version": getattr(sdk, "__version__", None)}
    for name, scenario in SCENARIOS.items():
        try:
            results[name] = scenario()
        except Exception as exc:  # noqa: BLE001 - reported, the test asserts on it
            results[name] = {"unexpected": error_info(exc), "trace": traceback.format_exc()[-2000:]}
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
