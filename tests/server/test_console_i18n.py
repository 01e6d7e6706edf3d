"""The console's languages (server/console/i18n.py): the choice, money and dates."""

from __future__ import annotations

import pytest

from openmaas.server.console.i18n import Translator, choose, load_catalogs

CATALOGS = load_catalogs()
EN = Translator("en", CATALOGS["en"])
ZH = Translator("zh-CN", CATALOGS["zh-CN"])
AT = 1_796_358_060_000  # 2026-12-04T04:21:00Z


@pytest.mark.parametrize(
    ("cookie", "accept", "chosen"),
    [
        (None, None, "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, "zh-TW", "zh-CN"),  # the Chinese we have
        (None, "fr-FR,en;q=0.5,zh;q=0.4", "en"),
        (None, "en;q=0.3,zh;q=0.9", "zh-CN"),  # by quality, not order
        (None, "de", "en"),
        ("zh-CN", "en-US", "zh-CN"),  # the switch wins
        ("klingon", "zh", "zh-CN"),  # a cookie naming no language is ignored
    ],
)
def test_the_language_is_the_switchs_else_the_browsers(
    cookie: str | None, accept: str | None, chosen: str
) -> None:
    assert choose(cookie, accept) == chosen


def test_money_as_each_language_writes_it() -> None:
    assert EN.money(1_234_500_000, "CNY") == "CN¥1,234.50"
    assert ZH.money(1_234_500_000, "CNY") == "¥1,234.50"
    assert EN.money(-2_500_000, "USD") == "-$2.50"
    assert ZH.money(2_500_000, "USD") == "US$2.50"
    assert EN.money(9_999_999, "CNY") == "CN¥10.00"  # rounded to the cent
    assert EN.money(125_000, "CNY", fine=True) == "CN¥0.125"  # prices keep their digits
    assert EN.money(2_000_000, "CNY", fine=True) == "CN¥2.00"


def test_dates_and_numbers_as_each_language_writes_them() -> None:
    assert EN.date(AT) == "Dec 4, 2026, 04:21 UTC"
    assert ZH.date(AT) == "2026年12月4日 04:21 UTC"
    assert EN.number(1_234_567) == ZH.number(1_234_567) == "1,234,567"
    assert ZH("key_revoked", when=ZH.date(AT)) == "已于 2026年12月4日 04:21 UTC 吊销"
