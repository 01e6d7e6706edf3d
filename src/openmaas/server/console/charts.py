"""Charts as inline SVG, drawn on the server: no script, no third-party code. Each chart is an
``<svg role="img">`` with a title and a description, a ``<title>`` on every bar and point
(what a pointer or a screen reader finds), and the page keeps a table of the same numbers
beside it. Colours are SVG attributes (the console's CSP allows no inline style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 12, 196  # the plot area
PALETTE = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#6b7280")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int | None]  # one per day; None: nothing that day (a gap in a line)


def day_label(lang: str, day: str, *, year: bool = False) -> str:
    """``Dec 4`` / ``12月4日`` (with the year: ``Dec 4, 2026`` / ``2026年12月4日``)."""
    d = date.fromisoformat(day)
    if lang == "zh-CN":
        return f"{d.year}年{d.month}月{d.day}日" if year else f"{d.month}月{d.day}日"
    return f"{d:%b} {d.day}, {d.year}" if year else f"{d:%b} {d.day}"


def compact(lang: str, value: int) -> str:
    """An axis label: ``1.2M`` / ``120万``."""
    steps = (
        ((100_000_000, "亿"), (10_000, "万"))
        if lang == "zh-CN"
        else ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K"))
    )
    for size, suffix in steps:
        if abs(value) >= size:
            text = f"{value / size:.1f}".removesuffix(".0")
            return text + suffix
    return f"{value:,}"


def _nice_step(value: int) -> int:
    """A gridline step: 1, 2 or 5 times a power of ten, so that four steps reach ``value``."""
    wanted = max(-(-value // 4), 1)
    magnitude = 1
    while magnitude * 10 <= wanted:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= wanted:
            return step * magnitude
    return 10 * magnitude  # unreachable


def _frame(
    title: str,
    desc: str,
    days: Sequence[str],
    top: int,
    fmt: Callable[[int], str],
    lang: str,
    ident: str,
) -> list[str]:
    parts = [
        f"<figcaption>{escape(title)}</figcaption>",
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>',
    ]
    for i in range(5):  # gridlines and labels at 0, 1/4 ... of the top
        value = top // 4 * i
        y = BOTTOM - (BOTTOM - TOP) * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#d1d5db" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#4b5563">{escape(fmt(value))}</text>'
        )
    if days:
        shown = sorted({0, len(days) // 2, len(days) - 1})
        for index in shown:
            x = _x(index, len(days))
            anchor = "start" if index == 0 and len(days) > 1 else "middle"
            anchor = "end" if index == len(days) - 1 and len(days) > 1 else anchor
            parts.append(
                f'<text x="{x:.1f}" y="{BOTTOM + 20}" text-anchor="{anchor}" font-size="11" '
                f'fill="#4b5563">{escape(day_label(lang, days[index]))}</text>'
            )
    return parts


def _x(index: int, count: int) -> float:
    """The centre of day ``index`` of ``count``."""
    slot = (WIDTH - RIGHT - LEFT) / max(count, 1)
    return LEFT + slot * (index + 0.5)


def _y(value: int, top: int) -> float:
    return BOTTOM - (BOTTOM - TOP) * value / top


def bar_chart(
    ident: str,
    title: str,
    desc: str,
    days: Sequence[str],
    series: Sequence[Series],
    fmt: Callable[[int], str],
    lang: str,
    *,
    stacked: bool = True,
) -> Markup:
    """Bars per day: the series stacked (or side by side)."""
    tops = [
        sum(s.values[i] or 0 for s in series)
        if stacked
        else max((s.values[i] or 0 for s in series), default=0)
        for i in range(len(days))
    ]
    top = 4 * _nice_step(max(tops, default=0))
    parts = _frame(title, desc, days, top, fmt, lang, ident)
    slot = (WIDTH - RIGHT - LEFT) / max(len(days), 1)
    width = max(slot * 0.7, 1.0)
    for i, day in enumerate(days):
        base = 0
        for n, s in enumerate(series):
            value = s.values[i] or 0
            if value <= 0:
                continue
            if stacked:
                x, w, low, high = _x(i, len(days)) - width / 2, width, base, base + value
                base += value
            else:
                w = width / len(series)
                x, low, high = _x(i, len(days)) - width / 2 + n * w, 0, value
            y = _y(high, top)
            h = max(_y(low, top) - y, 0.5)
            label = f"{day_label(lang, day, year=True)} · {s.name}: {fmt(value)}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[n % len(PALETTE)]}"><title>{escape(label)}</title></rect>'
            )
    parts.append("</svg>")
    return Markup("".join(parts)) + legend(series)


def line_chart(
    ident: str,
    title: str,
    desc: str,
    days: Sequence[str],
    series: Sequence[Series],
    fmt: Callable[[int], str],
    lang: str,
) -> Markup:
    """A line per series over the days, broken where a day has no value."""
    top = 4 * _nice_step(max((v or 0 for s in series for v in s.values), default=0))
    parts = _frame(title, desc, days, top, fmt, lang, ident)
    for n, s in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        run: list[str] = []
        for i, value in enumerate([*s.values, None]):
            if value is not None:
                run.append(f"{_x(i, len(days)):.1f},{_y(value, top):.1f}")
                label = f"{day_label(lang, days[i], year=True)} · {s.name}: {fmt(value)}"
                parts.append(
                    f'<circle cx="{_x(i, len(days)):.1f}" cy="{_y(value, top):.1f}" r="3" '
                    f'fill="{colour}"><title>{escape(label)}</title></circle>'
                )
            elif run:
                if len(run) > 1:
                    parts.append(
                        f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" '
                        'stroke-width="2"/>'
                    )
                run = []
    parts.append("</svg>")
    return Markup("".join(parts)) + legend(series)


def legend(series: Sequence[Series]) -> Markup:
    items = "".join(
        f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
        f'fill="{PALETTE[n % len(PALETTE)]}"/></svg> {escape(s.name)}</li>'
        for n, s in enumerate(series)
    )
    return Markup(f'<ul class="legend">{items}</ul>')
