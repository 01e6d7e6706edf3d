"""GLM-native formats: chat-template rendering and incremental output parsing.

Home of the GLM-4 / GLM-4.5+ prompt renderers and the streaming parser for reasoning and
tool calls (the GLM protocols issue). Imports only ``openmaas.core``.

- :mod:`openmaas.glm.family`: :class:`GlmFamily`, :func:`stop_strings`.
- :mod:`openmaas.glm.templates`: :func:`render_prompt` (GLM-4-9B, GLM-4.5/4.6, GLM-4.7).
- :mod:`openmaas.glm.parser`: :class:`GlmOutputParser` (raw output → core stream events).
- :mod:`openmaas.glm.sandbox`: :func:`render_chat_template` for Jinja templates shipped
  with model files (imported on its own so that this package does not load Jinja2).
"""

from openmaas.glm.family import PROMPT_PREFIX, GlmFamily, stop_strings
from openmaas.glm.parser import MAX_TOOL_CALL_CHARS, GlmOutputParser, ParsedEvent
from openmaas.glm.templates import render_prompt

__all__ = [
    "MAX_TOOL_CALL_CHARS",
    "PROMPT_PREFIX",
    "GlmFamily",
    "GlmOutputParser",
    "ParsedEvent",
    "render_prompt",
    "stop_strings",
]
