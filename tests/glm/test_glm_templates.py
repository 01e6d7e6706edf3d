"""Exact prompt strings for every GLM family and thinking mode (reference §10-§12)."""

from __future__ import annotations

import pytest

from openmaas.core.errors import InvalidRequest
from openmaas.core.types import Message, Role, Thinking, Tool, ToolCall
from openmaas.glm.family import GlmFamily, stop_strings
from openmaas.glm.templates import TOOLS_INTRO, render_prompt, split_reasoning

WEATHER = Tool(
    name="get_weather",
    description="Get the weather.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)

TOOL_LINE = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather.",'
    ' "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days":'
    ' {"type": "integer"}}, "required": ["city"]}}}'
)

CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris", "days": 2}')

# The worked example of reference §11.
EXAMPLE = (
    Message(Role.SYSTEM, "Be brief."),
    Message(Role.USER, "Weather in Paris?"),
    Message(Role.ASSISTANT, "", reasoning="Need the tool.", tool_calls=(CALL,)),
    Message(Role.TOOL, '{"c":18}', tool_call_id="call_1"),
    Message(Role.ASSISTANT, "18C.", reasoning="Got 18."),
    Message(Role.USER, "And Oslo?"),
)

GLM46_TOOLS = f"""<|system|>
# Tools

{TOOLS_INTRO}
<tools>
{TOOL_LINE}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{{function-name}}
<arg_key>{{arg-key-1}}</arg_key>
<arg_value>{{arg-value-1}}</arg_value>
<arg_key>{{arg-key-2}}</arg_key>
<arg_value>{{arg-value-2}}</arg_value>
...
</tool_call>"""

GLM47_TOOLS = f"""<|system|>
# Tools

{TOOLS_INTRO}
<tools>
{TOOL_LINE}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{{function-name}}<arg_key>{{arg-key-1}}</arg_key><arg_value>{{arg-value-1}}</arg_value><arg_key>{{arg-key-2}}</arg_key><arg_value>{{arg-value-2}}</arg_value>...</tool_call>"""  # noqa: E501


def test_tools_intro_is_our_own_short_instruction() -> None:
    assert TOOLS_INTRO.startswith("You may call")
    assert "<tools></tools>" in TOOLS_INTRO


def test_glm46_default() -> None:
    expected = (
        "[gMASK]<sop>"
        + GLM46_TOOLS
        + """<|system|>
Be brief.<|user|>
Weather in Paris?<|assistant|>
<think></think>
<tool_call>get_weather
<arg_key>city</arg_key>
<arg_value>Paris</arg_value>
<arg_key>days</arg_key>
<arg_value>2</arg_value>
</tool_call><|observation|>
<tool_response>
{"c":18}
</tool_response><|assistant|>
<think></think>
18C.<|user|>
And Oslo?<|assistant|>"""
    )
    assert render_prompt(GlmFamily.GLM45, EXAMPLE, [WEATHER]) == expected
    assert render_prompt(GlmFamily.GLM45, EXAMPLE, [WEATHER], Thinking(enabled=True)) == expected


def test_glm46_thinking_disabled() -> None:
    expected = (
        "[gMASK]<sop>"
        + GLM46_TOOLS
        + """<|system|>
Be brief.<|user|>
Weather in Paris?/nothink<|assistant|>
<think></think>
<tool_call>get_weather
<arg_key>city</arg_key>
<arg_value>Paris</arg_value>
<arg_key>days</arg_key>
<arg_value>2</arg_value>
</tool_call><|observation|>
<tool_response>
{"c":18}
</tool_response><|assistant|>
<think></think>
18C.<|user|>
And Oslo?/nothink<|assistant|>
<think></think>"""
    )
    got = render_prompt(GlmFamily.GLM45, EXAMPLE, [WEATHER], Thinking(enabled=False))
    assert got == expected


def test_glm46_interleaved_keeps_reasoning_after_last_user() -> None:
    history = EXAMPLE[1:4]
    expected = """[gMASK]<sop><|user|>
Weather in Paris?<|assistant|>
<think>Need the tool.</think>
<tool_call>get_weather
<arg_key>city</arg_key>
<arg_value>Paris</arg_value>
<arg_key>days</arg_key>
<arg_value>2</arg_value>
</tool_call><|observation|>
<tool_response>
{"c":18}
</tool_response><|assistant|>"""
    assert render_prompt(GlmFamily.GLM45, history) == expected
    # 4.5/4.6 have no preserved thinking: clear_thinking=False changes nothing.
    assert render_prompt(GlmFamily.GLM45, EXAMPLE, [WEATHER], Thinking(clear_thinking=False)) == (
        render_prompt(GlmFamily.GLM45, EXAMPLE, [WEATHER])
    )


def test_glm46_nothink_not_doubled() -> None:
    messages = [Message(Role.USER, "Hi/nothink")]
    got = render_prompt(GlmFamily.GLM45, messages, thinking=Thinking(enabled=False))
    assert got == "[gMASK]<sop><|user|>\nHi/nothink<|assistant|>\n<think></think>"


GLM47_HISTORY_TAIL = (
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value><arg_key>days"
    '</arg_key><arg_value>2</arg_value></tool_call><|observation|><tool_response>{"c":18}'
    "</tool_response>"
)


def test_glm47_default() -> None:
    expected = (
        "[gMASK]<sop>"
        + GLM47_TOOLS
        + "<|system|>Be brief.<|user|>Weather in Paris?<|assistant|></think>"
        + GLM47_HISTORY_TAIL
        + "<|assistant|></think>18C.<|user|>And Oslo?<|assistant|><think>"
    )
    assert render_prompt(GlmFamily.GLM47, EXAMPLE, [WEATHER]) == expected
    assert render_prompt(GlmFamily.GLM47, EXAMPLE, [WEATHER], Thinking(True, True)) == expected


def test_glm47_preserved_thinking() -> None:
    expected = (
        "[gMASK]<sop>"
        + GLM47_TOOLS
        + "<|system|>Be brief.<|user|>Weather in Paris?<|assistant|><think>Need the tool.</think>"
        + GLM47_HISTORY_TAIL
        + "<|assistant|><think>Got 18.</think>18C.<|user|>And Oslo?<|assistant|><think>"
    )
    got = render_prompt(GlmFamily.GLM47, EXAMPLE, [WEATHER], Thinking(clear_thinking=False))
    assert got == expected


def test_glm47_thinking_disabled() -> None:
    expected = (
        "[gMASK]<sop>"
        + GLM47_TOOLS
        + "<|system|>Be brief.<|user|>Weather in Paris?<|assistant|></think>"
        + GLM47_HISTORY_TAIL
        + "<|assistant|></think>18C.<|user|>And Oslo?<|assistant|></think>"
    )
    assert render_prompt(GlmFamily.GLM47, EXAMPLE, [WEATHER], Thinking(enabled=False)) == expected


def test_glm47_interleaved() -> None:
    expected = (
        "[gMASK]<sop><|user|>Weather in Paris?<|assistant|><think>Need the tool.</think>"
        + GLM47_HISTORY_TAIL
        + "<|assistant|><think>"
    )
    assert render_prompt(GlmFamily.GLM47, EXAMPLE[1:4]) == expected


def test_consecutive_tool_results_share_one_observation() -> None:
    second = ToolCall(id="call_2", name="get_weather", arguments='{"city": "Oslo"}')
    messages = [
        Message(Role.USER, "Both?"),
        Message(Role.ASSISTANT, "Checking.", tool_calls=(CALL, second)),
        Message(Role.TOOL, "A", tool_call_id="call_1"),
        Message(Role.TOOL, "B", tool_call_id="call_2"),
    ]
    assert render_prompt(GlmFamily.GLM47, messages, thinking=Thinking(enabled=False)) == (
        "[gMASK]<sop><|user|>Both?<|assistant|></think>Checking."
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>"
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>"
        "<|observation|><tool_response>A</tool_response><tool_response>B</tool_response>"
        "<|assistant|></think>"
    )
    assert render_prompt(GlmFamily.GLM45, messages, add_generation_prompt=False) == (
        "[gMASK]<sop><|user|>\nBoth?<|assistant|>\n<think></think>\nChecking."
        "\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"
        "\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n"
        "</tool_call><|observation|>\n<tool_response>\nA\n</tool_response>"
        "\n<tool_response>\nB\n</tool_response>"
    )


def test_argument_values_strings_raw_others_json() -> None:
    call = ToolCall(
        id="c",
        name="f",
        arguments=(
            '{"s": "北京 \\"q\\"", "n": 1.5, "b": true, "z": null, "l": [1, "é"], "o": {"k": 1}}'
        ),
    )
    messages = [Message(Role.USER, "x"), Message(Role.ASSISTANT, "", tool_calls=(call,))]
    got = render_prompt(GlmFamily.GLM47, messages, add_generation_prompt=False)
    assert got.endswith(
        '<tool_call>f<arg_key>s</arg_key><arg_value>北京 "q"</arg_value>'
        "<arg_key>n</arg_key><arg_value>1.5</arg_value>"
        "<arg_key>b</arg_key><arg_value>true</arg_value>"
        "<arg_key>z</arg_key><arg_value>null</arg_value>"
        '<arg_key>l</arg_key><arg_value>[1, "é"]</arg_value>'
        '<arg_key>o</arg_key><arg_value>{"k": 1}</arg_value></tool_call>'
    )


def test_zero_argument_call_and_empty_arguments_text() -> None:
    call = ToolCall(id="c", name="ping", arguments="")
    messages = [Message(Role.USER, "x"), Message(Role.ASSISTANT, "", tool_calls=(call,))]
    assert render_prompt(GlmFamily.GLM47, messages, add_generation_prompt=False).endswith(
        "<|assistant|></think><tool_call>ping</tool_call>"
    )
    assert render_prompt(GlmFamily.GLM45, messages, add_generation_prompt=False).endswith(
        "<|assistant|>\n<think></think>\n<tool_call>ping\n</tool_call>"
    )


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_bad_arguments_are_an_invalid_request(arguments: str) -> None:
    call = ToolCall(id="c", name="f", arguments=arguments)
    messages = [Message(Role.USER, "x"), Message(Role.ASSISTANT, "", tool_calls=(call,))]
    for family in GlmFamily:
        with pytest.raises(InvalidRequest) as info:
            render_prompt(family, messages)
        assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_reasoning_split_from_content_when_absent() -> None:
    message = Message(Role.ASSISTANT, "<think>\nPlan.\n</think>\n\nAnswer.")
    assert split_reasoning(message) == ("Plan.", "Answer.")
    assert split_reasoning(Message(Role.ASSISTANT, "No tags.")) == (None, "No tags.")
    explicit = Message(Role.ASSISTANT, "<think>x</think>y", reasoning="r")
    assert split_reasoning(explicit) == ("r", "<think>x</think>y")
    history = [Message(Role.USER, "Q"), message]
    assert render_prompt(GlmFamily.GLM47, history, add_generation_prompt=False) == (
        "[gMASK]<sop><|user|>Q<|assistant|><think>Plan.</think>Answer."
    )
    assert render_prompt(GlmFamily.GLM45, [*history, Message(Role.USER, "Q2")]) == (
        "[gMASK]<sop><|user|>\nQ<|assistant|>\n<think></think>\nAnswer.<|user|>\nQ2<|assistant|>"
    )


def test_tools_json_keeps_non_ascii_and_omits_empty_description() -> None:
    tool = Tool(name="查询", parameters={"type": "object", "properties": {}})
    got = render_prompt(GlmFamily.GLM47, [Message(Role.USER, "x")], [tool])
    assert (
        '<tools>\n{"type": "function", "function": {"name": "查询", "parameters": '
        '{"type": "object", "properties": {}}}}\n</tools>' in got
    )
    two = render_prompt(GlmFamily.GLM47, [Message(Role.USER, "x")], [tool, WEATHER])
    assert "}}}\n" + TOOL_LINE + "\n</tools>" in two


BEIJING = Tool(
    name="get_weather",
    description="查询天气",
    parameters={"type": "object", "properties": {"location": {"type": "string"}}},
)

GLM4_CONVERSATION = (
    Message(Role.USER, "北京天气？"),
    Message(
        Role.ASSISTANT,
        "",
        tool_calls=(ToolCall(id="c1", name="get_weather", arguments='{"location":"北京"}'),),
    ),
    Message(Role.TOOL, '{"temperature": 22}', tool_call_id="c1"),
    Message(Role.ASSISTANT, "北京今天 22 度。"),
)

GLM4_TOOL_SECTION = """# 可用工具

## get_weather

{
    "name": "get_weather",
    "description": "查询天气",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {
                "type": "string"
            }
        }
    }
}
在调用上述函数时，请使用 Json 格式表示调用的参数。"""


def test_glm4_9b_chat_with_tool_call_and_observation() -> None:
    expected = (
        "[gMASK]<sop><|system|>\n你是一个名为 GLM-4 的人工智能助手。\n\n"
        + GLM4_TOOL_SECTION
        + """<|user|>
北京天气？<|assistant|>get_weather
{"location": "北京"}<|observation|>
{"temperature": 22}<|assistant|>
北京今天 22 度。"""
    )
    got = render_prompt(
        GlmFamily.GLM4_9B,
        GLM4_CONVERSATION,
        [BEIJING],
        add_generation_prompt=False,
        glm4_identity="你是一个名为 GLM-4 的人工智能助手。",
    )
    assert got == expected


def test_glm4_0414_style_with_system_and_generation_prompt() -> None:
    messages = (Message(Role.SYSTEM, "简洁。"), *GLM4_CONVERSATION[:3])
    expected = (
        "[gMASK]<sop><|system|>\n"
        + GLM4_TOOL_SECTION
        + """<|system|>
简洁。<|user|>
北京天气？<|assistant|>get_weather
{"location": "北京"}<|observation|>
{"temperature": 22}<|assistant|>"""
    )
    got = render_prompt(GlmFamily.GLM4_9B, messages, [BEIJING], Thinking(enabled=False))
    assert got == expected


def test_glm4_9b_plain_chat_drops_reasoning() -> None:
    messages = [
        Message(Role.USER, "Hi"),
        Message(Role.ASSISTANT, "<think>r</think>Hello", reasoning=None),
        Message(Role.USER, "Bye"),
    ]
    assert render_prompt(GlmFamily.GLM4_9B, messages) == (
        "[gMASK]<sop><|user|>\nHi<|assistant|>\nHello<|user|>\nBye<|assistant|>"
    )


def test_stop_strings() -> None:
    for family in GlmFamily:
        assert set(stop_strings(family)) == {"<|user|>", "<|observation|>", "<|endoftext|>"}
    with pytest.raises(ValueError):
        stop_strings("glm-9")  # type: ignore[arg-type]
