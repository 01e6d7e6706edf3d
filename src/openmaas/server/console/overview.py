"""The operator's platform overview (``/console/operator``, operators only): every
organization's tokens, revenue and upstream cost per day, and the top organizations and
models of a period, read from the daily roll-ups alone (``billing/rollups.py``'s
``platform_report``, summed by the database), never the usage records; drawn as SVG on the
server by the usage page's charts (``console/charts.py``).

Revenue is what organizations were charged, per currency (each pays in its own); upstream
cost is what external providers charged us, per currency (each charges in its own). One
chart per currency shows both side by side; the margin is shown only where revenue and
upstream cost are in the same currency: amounts in two currencies are never added or
subtracted.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from openmaas.billing.rollups import Period, PlatformReport, platform_report
from openmaas.core.errors import InvalidRequest
from openmaas.server.console import pages as console
from openmaas.server.console.charts import Series, bar_chart, compact, day_label
from openmaas.server.console.usage import DEFAULT_DAYS, PERIODS, utc_today
from openmaas.store.repositories import OrganizationRepository

router = APIRouter(prefix=console.PREFIX, include_in_schema=False)
TOP = 10  # organizations and models in each table


def _charts(visit: console.Visit, report: PlatformReport) -> list[object]:
    t, lang = visit.t, visit.t.lang
    days = list(report.by_day)
    daily = list(report.by_day.values())
    charts: list[object] = [
        bar_chart("ops-tokens", t("overview_chart_tokens"), t("overview_chart_tokens_desc"),
                  days, [Series(t("overview_tokens"), [d.tokens for d in daily])],
                  lambda v: compact(lang, v), lang),
    ]  # fmt: skip
    total = report.total
    for currency in report.currencies:
        series = []
        if currency in total.revenue:
            name = t("overview_revenue", currency=currency)
            series.append(Series(name, [d.revenue.get(currency, 0) for d in daily]))
        if currency in total.upstream:
            name = t("overview_upstream_in", currency=currency)
            series.append(Series(name, [d.upstream.get(currency, 0) for d in daily]))
        # both side by side, or the one this currency has
        both, only = len(series) == 2, "revenue" if currency in total.revenue else "upstream"
        title = "overview_chart_money" if both else f"overview_chart_{only}"
        charts.append(
            bar_chart(
                f"ops-money-{currency}",
                t(title, currency=currency),
                t(f"{title}_desc", currency=currency),
                days,
                series,
                lambda v, c=currency: t.money(v, c, fine=True),  # type: ignore[misc]
                lang,
                stacked=False,
            )
        )
    return charts


@router.get("/operator")
@console.page
async def overview(request: Request) -> Response:
    visit = await console.enter(request)
    query = visit.request.query_params
    now = utc_today(visit)
    status, error = 200, None
    try:
        period = Period.parse(
            query.get("since", "")[:10], query.get("until", "")[:10], Period.last(DEFAULT_DAYS, now)
        )
    except InvalidRequest as exc:
        status, error, period = 400, exc.message, Period.last(DEFAULT_DAYS, now)
    report = await platform_report(visit.platform.database, period, top=TOP)
    names = {o.id: o.name for o in await OrganizationRepository(visit.platform.database).list()}
    presets = [(days, "?" + urlencode(Period.last(days, now).as_query())) for days in PERIODS]
    return visit.render(
        "ops_overview.html",
        status,
        page="ops_overview",
        error=error,
        report=report,
        filters=period.as_query(),
        names=names,
        presets=presets,
        charts=_charts(visit, report),
        day=lambda d: day_label(visit.t.lang, d, year=True),
    )
