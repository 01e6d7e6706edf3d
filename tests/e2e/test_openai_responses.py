"""The Responses API through the official ``openai`` SDK, exactly as its users call it:
``client.responses.create`` (plain, with tools, with ``previous_response_id``) and
``client.responses.stream``, on scripted models and the embedded one."""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.live import CHAT_MODEL, LiveServer

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def client(live: LiveServer, admin_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=admin_key, max_retries=0)


def test_create_plain_is_metered_and_billed_like_chat(
    client: openai.OpenAI, live: LiveServer
) -> None:
    raw = client.responses.with_raw_response.create(
        model="fake-echo", input="Count to five.", instructions="Be brief."
    )
    response = raw.parse()
    assert response.id == "resp_" + raw.headers["x-request-id"]
    assert response.status == "completed"
    assert response.output_text == "one two three four five"
    assert response.usage is not None and response.usage.output_tokens == 5
    row = live.usage_row(raw.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["model"] == "fake-echo"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_tools_then_the_tool_output_by_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="fake-agent", input="What is the weather in Paris?", tools=[WEATHER]
    )
    kinds = [item.type for item in first.output]
    assert kinds == ["reasoning", "function_call"]
    call = first.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "days": 2}
    second = client.responses.create(
        model="fake-agent",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "It is sunny."
    reasoning = second.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None and reasoning.content[0].text


def test_another_organizations_response_is_not_found(
    client: openai.OpenAI, live: LiveServer
) -> None:
    mine = client.responses.create(model="fake-echo", input="hello")
    live.cli("orgs", "create", "strangers")
    token = live.new_key("strangers")
    stranger = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as refused:
        stranger.responses.create(model="fake-echo", input="hi", previous_response_id=mine.id)
    assert refused.value.param == "previous_response_id"


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake-echo", input="hello", store=False)
    assert response.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_stream_with_reasoning_summary(client: openai.OpenAI, live: LiveServer) -> None:
    deltas: list[str] = []
    summary: list[str] = []
    with client.responses.stream(
        model="fake-agent", input="Weather?", reasoning={"summary": "auto"}
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.reasoning_summary_text.delta":
                summary.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "It is sunny."
    assert "".join(summary) == "The user wants the weather."
    assert final.usage is not None
    assert live.usage_row(final.id.removeprefix("resp_"))["endpoint"] == "responses"


def test_stream_of_a_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="fake-agent", input="Weather?", tools=[WEATHER], tool_choice="required"
    ) as stream:
        final = stream.get_final_response()
    call = final.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments)["city"] == "Paris"


def test_the_embedded_model_answers_and_streams(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=CHAT_MODEL,
        instructions="You are a helpful assistant.",
        input="Name a colour.",
        max_output_tokens=12,
        temperature=0,
    )
    assert response.output_text and response.usage is not None
    assert response.usage.output_tokens <= 12
    assert response.status in {"completed", "incomplete"}
    with client.responses.stream(
        model=CHAT_MODEL,
        previous_response_id=response.id,
        input="And another one?",
        max_output_tokens=12,
    ) as stream:
        events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    # cut at max_output_tokens, a stream ends with response.incomplete, as OpenAI's do
    last = events[-1]
    assert last.type in {"response.completed", "response.incomplete"}
    final = last.response
    assert text == final.output_text and text
    assert final.usage is not None and final.usage.input_tokens > response.usage.input_tokens
