"""The console's languages: Simplified Chinese and English, one message catalog each
(``messages/<language>.json``, the same keys in both: a test checks it). The language is
the cookie's when the person chose one, else the browser's ``Accept-Language``, else
English. Money, numbers and dates are formatted for it (as ``Intl`` would in a browser)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LANGUAGES = ("en", "zh-CN")
DEFAULT = "en"
COOKIE = "openmaas_lang"
MESSAGES = Path(__file__).parent / "messages"

_SYMBOLS = {  # currency signs as each language writes them
    "en": {"CNY": "CN¥", "USD": "$"},
    "zh-CN": {"CNY": "¥", "USD": "US$"},
}


def load_catalogs() -> dict[str, dict[str, str]]:
    return {
        lang: json.loads((MESSAGES / f"{lang}.json").read_text(encoding="utf-8"))
        for lang in LANGUAGES
    }


def choose(cookie: str | None, accept_language: str | None) -> str:
    """The cookie's language if it names one we have, else the browser's first we have."""
    if cookie is not None and cookie in LANGUAGES:
        return cookie
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag.strip().lower()))
    for _q, _i, tag in sorted(ranked):
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return DEFAULT


@dataclass(frozen=True)
class Translator:
    """One language's messages and formats, handed to every template as ``t``."""

    lang: str
    messages: dict[str, str]

    def __call__(self, message: str, /, **values: Any) -> str:
        text = self.messages[message]
        return text.format(**values) if values else text

    def number(self, value: int) -> str:
        return f"{value:,}"

    def money(self, micros: int, currency: str, *, fine: bool = False) -> str:
        """``12345600`` CNY: ``CN¥12.35`` (en), ``¥12.35`` (zh-CN); ``fine``: up to six
        decimals, for prices per million tokens."""
        sign = "-" if micros < 0 else ""
        whole, frac = divmod(abs(micros), 1_000_000)
        if fine:
            digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
        else:
            cents = (frac + 5_000) // 10_000
            whole, cents = (whole + 1, 0) if cents == 100 else (whole, cents)
            digits = f"{cents:02d}"
        symbol = _SYMBOLS[self.lang].get(currency, currency + " ")
        return f"{sign}{symbol}{whole:,}.{digits}"

    def date(self, epoch_ms: int | None) -> str:
        """A moment in UTC: ``Dec 4, 2026, 04:21 UTC`` / ``2026年12月4日 04:21 UTC``."""
        if epoch_ms is None:
            return ""
        at = datetime.fromtimestamp(epoch_ms / 1000, UTC)
        if self.lang == "zh-CN":
            return f"{at.year}年{at.month}月{at.day}日 {at:%H:%M} UTC"
        return f"{at:%b} {at.day}, {at.year}, {at:%H:%M} UTC"
