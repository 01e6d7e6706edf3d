"""Model-file chat templates render in a sandbox; escapes and runaways are refused."""

from __future__ import annotations

from datetime import datetime

import pytest
from jinja2.exceptions import SecurityError

from openmaas.core.errors import ConfigurationError, InvalidRequest
from openmaas.glm.sandbox import render_chat_template

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in 北京?"},
]

# A small template in the style HF chat templates are written in.
TEMPLATE = """[gMASK]<sop>
{%- if tools -%}
<|system|>
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role not in ['system', 'user', 'assistant'] -%}
{{ raise_exception('Unknown role: ' + m.role) }}
{%- endif -%}
<|{{ m.role }}|>{{ m.content }}
{%- if m.reasoning_content is defined %}{{ m.reasoning_content }}{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant|>{{ '</think>' if enable_thinking is defined and not enable_thinking else '<think>' }}{%- endif -%}
{%- if date is defined %} {{ strftime_now('%Y-%m-%d') }}{% endif -%}
"""  # noqa: E501


def test_normal_template_renders() -> None:
    got = render_chat_template(
        TEMPLATE,
        {
            "messages": MESSAGES,
            "tools": [{"type": "function", "function": {"name": "天气"}}],
            "add_generation_prompt": True,
            "enable_thinking": False,
        },
    )
    assert got == (
        '[gMASK]<sop><|system|>\n{"type": "function", "function": {"name": "天气"}}\n'
        "<|system|>Be brief.<|user|>Weather in 北京?<|assistant|></think>"
    )


def test_strftime_now_uses_injected_clock() -> None:
    got = render_chat_template(
        TEMPLATE,
        {"messages": [], "add_generation_prompt": False, "date": True},
        now=lambda: datetime(2026, 1, 2, 3, 4, 5),
    )
    assert got == "[gMASK]<sop> 2026-01-02"


def test_raise_exception_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="Unknown role: tool"):
        render_chat_template(TEMPLATE, {"messages": [{"role": "tool", "content": "x"}]})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ strftime_now.__globals__['__builtins__'] }}",
        "{{ messages.__class__.__base__ }}",
        "{{ messages.append({'role': 'system'}) }}",
        "{% set x = messages.pop() %}",
        "{{ (messages|first).update({'content': 'x'}) }}",
        "{{ '{0.__class__.__mro__}'.format(1) }}",
        "{{ '{0.__init__.__globals__}'.format(cycler) }}",
        "{{ lipsum.__globals__ }}",
    ],
)
def test_escape_attempts_are_security_errors(source: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        render_chat_template(source, {"messages": MESSAGES})
    assert isinstance(info.value.__cause__, SecurityError)


def test_no_filesystem_access() -> None:
    for source in ("{% include '/etc/passwd' %}", "{% import 'x.j2' as x %}"):
        with pytest.raises(ConfigurationError):
            render_chat_template(source, {})


def test_broken_templates_are_configuration_errors() -> None:
    for source in (
        "{% for %}",
        "{{ 1 / 0 }}",
        "{{ undefined_thing.attr }}",
        "{{ [] | first() + 1 }}",
    ):
        with pytest.raises(ConfigurationError):
            render_chat_template(source, {})


def test_output_size_guard() -> None:
    bomb = (
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}"
    )
    with pytest.raises(ConfigurationError, match="exceeds"):
        render_chat_template(bomb, {}, max_output_chars=1_000_000)


def test_time_guard_with_injected_clock() -> None:
    ticks = iter(range(1_000_000))
    source = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(ConfigurationError, match="longer than"):
        render_chat_template(
            source, {"messages": MESSAGES * 10}, max_seconds=5, clock=lambda: float(next(ticks))
        )


def test_oversized_template_source() -> None:
    with pytest.raises(ConfigurationError, match="limit"):
        render_chat_template("x" * (512 * 1024 + 1), {})


def test_context_is_not_mutated() -> None:
    messages = [dict(m) for m in MESSAGES]
    render_chat_template(
        "{% for m in messages %}{{ m.content }}{% endfor %}", {"messages": messages}
    )
    assert messages == MESSAGES
