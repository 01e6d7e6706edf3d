"""Tool-call bodies of GLM-4.5+ output: ``name<arg_key>k</arg_key><arg_value>v</arg_value>``.

Argument values are typed by the tool's JSON schema (design reference §11): a property whose
``type`` is (or includes) ``"string"`` stays raw text; anything else is ``json.loads``-ed,
falling back to the raw text when it is not JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` (so re-dumped arguments stay JSON)."""
    return json.loads(text, parse_constant=_reject_constant)


def _string_typed(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _typed_value(raw: str, schema: Any) -> Any:
    if _string_typed(schema):
        return raw
    try:
        return loads_strict(raw)
    except ValueError:
        return raw


def parse_xml_call(
    body: str, properties: dict[str, dict[str, Any]] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """``(name, arguments)`` of one GLM-4.5+ ``<tool_call>`` body, or None without a name.

    ``properties`` maps a tool name to its schema's ``properties`` object. Values are typed
    by that schema: a ``"string"`` property
    stays raw text, anything else is ``json.loads``-ed, falling back to the raw text. A body
    with no ``<arg_key>`` pairs but a JSON object after the name line uses that object.
    """
    cut = body.find("<arg_key>")
    head = body if cut < 0 else body[:cut]
    name_line, _, extra = head.strip().partition("\n")
    name = name_line.strip()
    if not name:
        return None
    schema = (properties or {}).get(name, {})
    args: dict[str, Any] = {}
    if cut >= 0:
        for key, raw in _PAIR.findall(body, cut):
            key = key.strip()
            args[key] = _typed_value(raw, schema.get(key))
    elif extra.strip().startswith("{"):
        try:
            value = loads_strict(extra)
        except ValueError:
            value = None
        if isinstance(value, dict):
            args = value
    return name, args
