"""The console's usage and billing pages of an organization (viewer and above).

Usage (``/console/orgs/{org}/usage``, and the same rows as CSV at ``usage.csv``) reads the
daily roll-ups only (``billing/rollups.py``), never the usage records: tokens and cost per
day and per model, requests and errors, latency and time to first token (p50, p95), for a
period of days, a key and a model. Billing (``/console/orgs/{org}/billing``) shows the
balance, the resource packs and the statement of ledger lines, a month at a time, paged.
The routes go through ``console.py``'s ``_enter`` like every console page, by their rows in
``access.CONSOLE_ROLES``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from openmaas.accounts.people import actor_of
from openmaas.billing.rollups import Period, UsageReport, usage_report
from openmaas.core.errors import InvalidRequest
from openmaas.core.ledger_events import TOKENS
from openmaas.core.money import format_micros
from openmaas.core.rollups import Rollup
from openmaas.server.console import pages as console
from openmaas.server.console.charts import Series, bar_chart, compact, day_label, line_chart
from openmaas.store.repositories import ApiKeyRepository

router = APIRouter(prefix=console.PREFIX, include_in_schema=False)

DEFAULT_DAYS = 30
PERIODS = (7, 30, 90)
CHART_MODELS = 7  # models drawn apart in a chart; the rest together as "other"
STATEMENT_PAGE = 50
CSV_COLUMNS = (
    "day", "model", "key_id", "requests", "errors", "input_tokens", "cached_tokens",
    "output_tokens", "reasoning_tokens", "cost", "currency", "latency_p50_ms",
    "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms",
)  # fmt: skip


def utc_today(visit: console.Visit) -> date:
    """Today's UTC date by the platform's clock."""
    return datetime.fromtimestamp(visit.platform.clock.now_ms() / 1000, UTC).date()


@dataclass(frozen=True)
class _Asked:
    report: UsageReport
    filters: dict[str, str]  # the query, checked: since, until, key, model
    keys: dict[str, str]  # the organization's keys: id -> name
    models: list[str]  # the models used in the period (by the key asked for)


async def _report(visit: console.Visit) -> _Asked:
    """The report the query asks for, its filters, the keys and models to choose from."""
    assert visit.org is not None
    query = visit.request.query_params
    default = Period.last(DEFAULT_DAYS, utc_today(visit))
    period = Period.parse(query.get("since", "")[:10], query.get("until", "")[:10], default)
    keys = {k.id: k.name for k in await ApiKeyRepository(visit.platform.database).list(
        visit.org.org_id
    )}  # fmt: skip
    key = query.get("key", "")
    model = query.get("model", "")[:200]
    report = await usage_report(
        visit.platform.database, visit.org.org_id, period, key_id=key if key in keys else None
    )
    models = report.models
    filters = {"since": period.since.isoformat(), "until": period.until.isoformat()}
    if key in keys:
        filters["key"] = key
    if model:
        filters["model"] = model
        report = report.only_model(model)
    return _Asked(report, filters, keys, models)


def _chart_models(report: UsageReport) -> list[str]:
    ranked = sorted(report.models, key=lambda m: (-report.by_model[m].total_tokens, m))
    return ranked[:CHART_MODELS]


def _by_model_series(
    report: UsageReport, value: Callable[[Rollup], int], other: str
) -> list[Series]:
    days = list(report.by_day)
    shown = _chart_models(report)
    series = [
        Series(m, [value(report.by_day_model.get((d, m), Rollup())) for d in days]) for m in shown
    ]
    rest = [m for m in report.models if m not in shown]
    if rest:
        series.append(
            Series(
                other,
                [sum(value(report.by_day_model.get((d, m), Rollup())) for m in rest) for d in days],
            )
        )
    return series


def _charts(visit: console.Visit, report: UsageReport, currency: str) -> list[Any]:
    t, lang = visit.t, visit.t.lang
    days = list(report.by_day)
    other = t("usage_other_models")
    number = lambda v: compact(lang, v)  # noqa: E731
    money = lambda v: t.money(v, currency, fine=True)  # noqa: E731
    ms = lambda v: t("usage_ms", ms=t.number(v))  # noqa: E731
    daily = list(report.by_day.values())
    return [
        bar_chart("tokens", t("usage_chart_tokens"), t("usage_chart_tokens_desc"), days,
                  _by_model_series(report, lambda r: r.total_tokens, other), number, lang),
        bar_chart("cost", t("usage_chart_cost"), t("usage_chart_cost_desc"), days,
                  _by_model_series(report, lambda r: r.cost_micros, other), money, lang),
        bar_chart("requests", t("usage_chart_requests"), t("usage_chart_requests_desc"), days,
                  [Series(t("usage_requests"), [r.requests for r in daily]),
                   Series(t("usage_errors"), [r.errors for r in daily])],
                  number, lang, stacked=False),
        line_chart("latency", t("usage_chart_latency"), t("usage_chart_latency_desc"), days,
                   [Series("p50", [r.latency_ms(0.5) for r in daily]),
                    Series("p95", [r.latency_ms(0.95) for r in daily])], ms, lang),
        line_chart("ttft", t("usage_chart_ttft"), t("usage_chart_ttft_desc"), days,
                   [Series("p50", [r.ttft_ms(0.5) for r in daily]),
                    Series("p95", [r.ttft_ms(0.95) for r in daily])], ms, lang),
    ]  # fmt: skip


@router.get("/orgs/{org}/usage")
@console.page
async def usage(request: Request, org: str) -> Response:
    visit = await console.enter(request, org)
    assert visit.org is not None and visit.user is not None
    currency = (await visit.people().orgs.find(visit.org.org_id)).currency
    orgs = await visit.people().organizations(visit.user)
    try:
        asked = await _report(visit)
    except InvalidRequest as exc:
        today = utc_today(visit)
        report = await usage_report(
            visit.platform.database, visit.org.org_id, Period.last(DEFAULT_DAYS, today)
        )
        return visit.render(
            "usage.html", 400, page="usage", orgs=orgs, error=exc.message, report=report,
            filters={}, keys={}, models=[], currency=currency, charts=[], presets=[],
            csv_url="", day=lambda d: day_label(visit.t.lang, d, year=True),
            rollup_seconds=_rollup_seconds(visit),
        )  # fmt: skip
    today = utc_today(visit)
    report, filters = asked.report, asked.filters
    presets = [
        (days, "?" + urlencode({**filters, **Period.last(days, today).as_query()}))
        for days in PERIODS
    ]
    base = f"{console.PREFIX}/orgs/{visit.org.org_id}"
    return visit.render(
        "usage.html",
        page="usage",
        orgs=orgs,
        report=report,
        filters=filters,
        keys=asked.keys,
        models=asked.models,
        currency=currency,
        charts=_charts(visit, report, currency),
        presets=presets,
        csv_url=f"{base}/usage.csv?{urlencode(filters)}",
        rollup_seconds=_rollup_seconds(visit),
        day=lambda d: day_label(visit.t.lang, d, year=True),
    )


def _rollup_seconds(visit: console.Visit) -> int:
    return max(1, round(visit.console.settings.rollup_seconds))


@router.get("/orgs/{org}/usage.csv")
@console.page
async def usage_csv(request: Request, org: str) -> Response:
    """The report's rows (day × model × key) as CSV; cost as a decimal in the currency."""
    visit = await console.enter(request, org)
    assert visit.org is not None
    try:
        asked = await _report(visit)
    except InvalidRequest as exc:
        return Response(exc.message + "\n", 400, media_type="text/plain", headers=console.HEADERS)
    report, filters = asked.report, asked.filters
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in sorted(report.rows, key=lambda r: (r.day, r.model, r.key_id)):
        s = row.sums
        writer.writerow(
            (
                row.day, row.model, row.key_id, s.requests, s.errors, s.input_tokens,
                s.cached_tokens, s.output_tokens, s.reasoning_tokens,
                format_micros(s.cost_micros), s.currency or "",
                _blank(s.latency_ms(0.5)), _blank(s.latency_ms(0.95)),
                _blank(s.ttft_ms(0.5)), _blank(s.ttft_ms(0.95)),
            )
        )  # fmt: skip
    name = f"usage-{visit.org.org_id}-{filters['since']}-{filters['until']}.csv"
    headers = {**console.HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)


# -- billing ----------------------------------------------------------------------------


def _month(text: str, today: date) -> date:
    try:
        year, month = (int(part) for part in text.split("-", 1))
        return date(year, month, 1)
    except ValueError:
        return today.replace(day=1)


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@router.get("/orgs/{org}/billing")
@console.page
async def billing(request: Request, org: str) -> Response:
    """Balance, resource packs, and the month's ledger lines, newest first, paged."""
    visit = await console.enter(request, org)
    assert visit.org is not None and visit.user is not None
    billing = visit.platform.billing_admin(actor_of(visit.user))
    report = await billing.balance(visit.org.org_id)
    today = utc_today(visit)
    month = _month(request.query_params.get("month", "")[:7], today)
    try:
        number = max(1, int(request.query_params.get("page", "1")[:6]))
    except ValueError:
        number = 1
    since, until = _ms(month), _ms(_next_month(month))
    shown, total = await billing.statement_page(
        visit.org.org_id, since, until, (number - 1) * STATEMENT_PAGE, STATEMENT_PAGE
    )
    pages = max(1, -(-total // STATEMENT_PAGE))
    if number > pages:  # past the end: the last page
        number = pages
        shown, total = await billing.statement_page(
            visit.org.org_id, since, until, (number - 1) * STATEMENT_PAGE, STATEMENT_PAGE
        )
    prefix = f"org:{visit.org.org_id}:"
    previous = date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)
    later = _next_month(month)
    return visit.render(
        "billing.html",
        page="billing",
        orgs=await visit.people().organizations(visit.user),
        balance=report,
        lines=[
            (
                line,
                line.account.removeprefix(prefix),
                line.counterparty.removeprefix(prefix),
                line.unit == TOKENS,
            )
            for line in shown
        ],
        month=month,
        month_label=_month_label(visit.t.lang, month),
        previous=previous.strftime("%Y-%m"),
        later=later.strftime("%Y-%m") if later <= today else None,
        page_number=number,
        pages=pages,
        line_count=total,
    )


def _month_label(lang: str, month: date) -> str:
    return f"{month.year}年{month.month}月" if lang == "zh-CN" else f"{month:%B} {month.year}"
