"""Prompt-cache scopes on the wire: vLLM's ``cache_salt`` carries a request's scope to the
upstreams that keep prefix caches apart by it (managed vLLM, the engine host), and only
to those (engines/upstream/openai_wire.py, enginehost/wire.py)."""

from __future__ import annotations

import orjson

from openmaas.core.types import GenerationRequest, Message, Role, RoutingHints
from openmaas.enginehost.wire import generation_request
from openmaas.engines.upstream.openai_wire import ThinkingStyle, chat_body, completion_body

SCOPED = GenerationRequest(
    "req",
    "m",
    messages=(Message(Role.USER, "hi"),),
    routing=RoutingHints(cache_scope="5f0c1d"),
)
STYLE = ThinkingStyle.CHAT_TEMPLATE_KWARGS


def test_the_scope_is_sent_as_cache_salt_only_when_asked_for() -> None:
    assert chat_body(SCOPED, "m", STYLE, cache_salt=True)["cache_salt"] == "5f0c1d"
    assert "cache_salt" not in chat_body(SCOPED, "m", STYLE)  # OpenAI, Zhipu ... refuse it
    prompt = GenerationRequest("r", "m", prompt="hi", routing=SCOPED.routing)
    assert completion_body(prompt, "m", cache_salt=True)["cache_salt"] == "5f0c1d"
    unscoped = GenerationRequest("r", "m", messages=SCOPED.messages)
    assert "cache_salt" not in chat_body(unscoped, "m", STYLE, cache_salt=True)


def test_the_engine_host_reads_the_scope_back() -> None:
    raw = orjson.dumps(chat_body(SCOPED, "m", STYLE, cache_salt=True))
    assert generation_request(raw, "req").routing.cache_scope == "5f0c1d"
    plain = orjson.dumps(chat_body(SCOPED, "m", STYLE))
    assert generation_request(plain, "req").routing.cache_scope is None
