"""GLM models served from a raw-completion engine: render, complete, parse."""

from __future__ import annotations

import json

from openmaas.core.assembly import Assembler
from openmaas.core.types import (
    FinishReason,
    GenerationRequest,
    Message,
    Role,
    SamplingParams,
    Thinking,
    Tool,
)
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.engines.glm_format import GlmFormatEngine
from openmaas.glm import GlmFamily

WEATHER = Tool(
    "get_weather",
    "Weather",
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
)
# What GLM-4.7 writes after a prompt ending in <think>: reasoning, then a call. The fake
# streams it word by word, so tags arrive split across chunks.
RAW_47 = (
    "The user wants weather. </think>Let me check."
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
    "<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"
)


async def _run(engine: GlmFormatEngine, request: GenerationRequest) -> Assembler:
    stream = engine.stream(request)
    answer = Assembler()
    async for event in stream:
        answer.add(event)
    await stream.aclose()
    return answer


async def test_glm47_reasoning_text_and_tool_call() -> None:
    inner = FakeEngine("raw", FakeScript(text=RAW_47))
    engine = GlmFormatEngine("glm-4.7", GlmFamily.GLM47, inner)
    await engine.start()
    request = GenerationRequest(
        "r1",
        "glm-4.7",
        messages=(Message(Role.USER, "Weather in Paris?"),),
        tools=(WEATHER,),
        sampling=SamplingParams(stop=("###",)),
    )
    answer = await _run(engine, request)
    assert answer.reasoning == "The user wants weather. "
    assert answer.text == "Let me check."
    (call,) = answer.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris", "days": 2}
    assert answer.finished is not None and answer.finished.reason is FinishReason.TOOL_CALLS
    assert answer.finished.usage.completion_tokens == len(RAW_47.split(" "))
    prompt = inner.stats.last_prompt or ""
    assert prompt.startswith("[gMASK]<sop><|system|>") and "get_weather" in prompt
    assert prompt.endswith("<|user|>Weather in Paris?<|assistant|><think>")


async def test_glm47_without_thinking_and_without_tools() -> None:
    inner = FakeEngine("raw", FakeScript(text="Just an answer."))
    engine = GlmFormatEngine("glm-4.7", GlmFamily.GLM47, inner)
    await engine.start()
    request = GenerationRequest(
        "r2", "glm-4.7", messages=(Message(Role.USER, "Hi"),), thinking=Thinking(enabled=False)
    )
    answer = await _run(engine, request)
    assert answer.reasoning is None and answer.text == "Just an answer."
    assert answer.finished is not None and answer.finished.reason is FinishReason.STOP
    assert (inner.stats.last_prompt or "").endswith("<|assistant|></think>")


async def test_stop_strings_of_the_family_are_added() -> None:
    engine = GlmFormatEngine("glm-4.6", GlmFamily.GLM45, FakeEngine("raw", FakeScript()))
    request = GenerationRequest(
        "r3",
        "glm-4.6",
        messages=(Message(Role.USER, "Hi"),),
        sampling=SamplingParams(stop=("END",)),
    )
    stops = engine.prompt_request(request).sampling.stop
    assert stops[0] == "END" and {"<|user|>", "<|observation|>", "<|endoftext|>"} <= set(stops)
