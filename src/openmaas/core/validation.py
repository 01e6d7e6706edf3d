"""Naming the field a request body got wrong, for every protocol's 400."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from typing import Any

from pydantic import ValidationError

from openmaas.core.errors import InvalidRequest

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``messages[0].role`` from pydantic's error location (``prefix`` leads it)."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_label(part):
            path += f".{part}" if path else part
    return path or "body"


def _is_union_label(part: str) -> bool:
    """pydantic names the branch of a union in error locations (``str``, ``list[str]``,
    ``literal['auto']``, a model's class name ...); those are not fields of the body."""
    return (
        part in {"str", "int", "float", "bool"}
        or "[" in part
        or part[:1].isupper()
        or part.startswith(("function-", "constrained-"))
    )


def blamed_field(exc: ValidationError, prefix: str = "") -> tuple[str, dict[str, Any]]:
    """The first bad field and its most telling error. Of a union's errors, one that is not
    a branch's mere type mismatch wins, even if it lies deeper: for a 5-item ``stop``,
    "at most 4 items" rather than "should be a string"; for an image part in ``content``,
    ``content[0].type`` rather than "``content`` should be a string"."""
    errors = exc.errors(include_url=False)
    first = field_path(errors[0]["loc"], prefix)
    for error in errors:
        field = field_path(error["loc"], prefix)
        within = field == first or field.startswith((first + ".", first + "["))
        if within and not str(error["type"]).endswith("_type"):
            return field, dict(error)
    return first, dict(errors[0])


def checked_day(value: str, param: str) -> str:
    """``value`` when it is a calendar day written ``YYYY-MM-DD``, the way usage records store
    their UTC day, else ``InvalidRequest`` naming ``param``. Python reads other ISO 8601
    forms as dates too (``20261201``, ``2026-W48-2``); compared with the stored days as text,
    they would select the wrong ones."""
    try:
        if _DAY.fullmatch(value):
            date.fromisoformat(value)  # a real day: not 2026-02-30
            return value
    except ValueError:
        pass
    raise InvalidRequest(f"'{param}' must be a date as YYYY-MM-DD, not {value!r}.", param)
