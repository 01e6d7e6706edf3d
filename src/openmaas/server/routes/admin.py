"""The admin HTTP API (``/admin/v1/...``): billing and catalog administration for admin keys.

JSON in and out (the catalog document itself is YAML); money as decimal strings
(``"12.50"``), never JSON numbers. Each body is a pydantic model (``AdminBody``: its schema
is in ``/openapi.json``) validated before the service sees it. Every change is written to
the audit log as ``key:<admin key id>``, by the unit of work the services are built on.
Errors have OpenAI's shape: 401 without a key, 403 for a member key, 400 naming the field
(an invalid catalog: every problem with its line and field), 404 for an unknown
organization, key, budget or credential, 409 for a catalog managed by a file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from openmaas.accounts.admin import AccountsAdmin, NewApiKey, NewOrganization, key_json, org_json
from openmaas.accounts.suspensions import NewSuspension
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.admin_bodies import (
    BudgetLimit,
    KeyTierChange,
    NewFunds,
    NewPack,
    NewPrice,
    TermsChange,
    TierLimits,
)
from openmaas.billing.reports import price_json, statement_csv, statement_json, tier_json
from openmaas.billing.rollups import Period, Totals, platform_report
from openmaas.catalog.admin import CatalogAdmin, CredentialValue, CurrentCatalog, describe_model
from openmaas.catalog.document import CatalogRejected
from openmaas.catalog.reloader import CatalogFileManaged
from openmaas.core.admin_fields import AdminBody, iso_ms, parse_time
from openmaas.core.errors import InvalidRequest, PermissionDenied
from openmaas.core.money import Money, format_micros
from openmaas.protocols.openai.errors import error_body
from openmaas.server.responses import json_response
from openmaas.server.routes.common import authenticate
from openmaas.server.routes.openapi import json_body
from openmaas.server.state import AppState, app_state

router = APIRouter(prefix="/admin/v1", tags=["Admin"])
BODY_MODELS: list[type[AdminBody]] = [
    NewOrganization,
    NewApiKey,
    NewSuspension,
    TermsChange,
    NewFunds,
    NewPack,
    BudgetLimit,
    KeyTierChange,
    NewPrice,
    TierLimits,
    CredentialValue,
]
B = TypeVar("B", bound=AdminBody)


async def _actor(request: Request, state: AppState) -> str:
    """The caller must hold an admin key; changes are audited as ``key:<its id>``."""
    principal = await authenticate(request, state)
    if not principal.is_admin:
        raise PermissionDenied("The admin API needs an admin key.")
    return f"key:{principal.key_id}"


async def _admin(request: Request) -> BillingAdmin:
    state = app_state(request)
    return state.platform.billing_admin(await _actor(request, state))


async def _accounts(request: Request) -> AccountsAdmin:
    state = app_state(request)
    return state.platform.accounts_admin(await _actor(request, state))


async def _catalog_admin(request: Request) -> CatalogAdmin:
    state = app_state(request)
    return state.platform.catalog_admin(await _actor(request, state))


async def _body(request: Request, model: type[B]) -> B:
    """The JSON object of the request as ``model``; errors name the field (400)."""
    try:
        body = json.loads(await request.body() or b"{}")
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # no lone surrogate (\\ud800)
    except (ValueError, UnicodeEncodeError):
        raise InvalidRequest("The body must be a JSON object of valid Unicode text.") from None
    return model.parse(body)


def _query_int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise InvalidRequest(f"'{name}' must be a positive integer.", name)
    return int(text)


def _query(*parameters: tuple[str, dict[str, Any], str]) -> dict[str, Any]:
    """``openapi_extra`` declaring query parameters a route reads itself (the route's own
    checks answer 400 naming the parameter)."""
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema, "description": what}
            for name, schema, what in parameters
        ]
    }


_DAY = {"type": "string", "format": "date"}
_MOMENT = {"type": "string", "examples": ["2026-12-01", "2026-12-01T08:00:00+08:00"]}


# -- organizations ----------------------------------------------------------------------


@router.get("/orgs", summary="List organizations")
async def list_orgs(request: Request) -> Response:
    admin = await _admin(request)
    return json_response({"object": "list", "data": [org_json(o) for o in await admin.list_orgs()]})


@router.post(
    "/orgs",
    summary="Create an organization",
    status_code=201,
    openapi_extra=json_body(NewOrganization),
)
async def create_org(request: Request) -> Response:
    admin = await _accounts(request)
    org = await admin.create_org(await _body(request, NewOrganization))
    return json_response(org_json(org), 201)


@router.patch(
    "/orgs/{org}",
    summary="Change an organization's tier, discount, credit limit or data policy",
    openapi_extra=json_body(TermsChange),
)
async def update_org(request: Request, org: str) -> Response:
    admin = await _admin(request)
    changed = await admin.set_org(org, await _body(request, TermsChange))
    balance = await admin.balance(changed.id)
    return json_response({**org_json(changed), "credit_limit": balance.as_json()["credit_limit"]})


@router.post(
    "/orgs/{org}/topups",
    summary="Add prepaid money",
    status_code=201,
    openapi_extra=json_body(NewFunds),
)
async def top_up(request: Request, org: str) -> Response:
    admin = await _admin(request)
    done = await admin.top_up(org, await _body(request, NewFunds))
    return json_response(done.as_json(), 201 if done.applied else 200)


@router.put(
    "/orgs/{org}/suspension",
    summary="Suspend an organization: its member keys are refused (403) until it is resumed",
    status_code=204,
    openapi_extra=json_body(NewSuspension),
)
async def suspend_org(request: Request, org: str) -> Response:
    state = app_state(request)
    suspensions = state.platform.suspensions(await _actor(request, state))
    await suspensions.suspend(org, (await _body(request, NewSuspension)).reason)
    return Response(status_code=204)


@router.delete("/orgs/{org}/suspension", summary="Resume a suspended organization", status_code=204)
async def resume_org(request: Request, org: str) -> Response:
    state = app_state(request)
    await state.platform.suspensions(await _actor(request, state)).resume(org)
    return Response(status_code=204)


@router.post(
    "/orgs/{org}/promotions",
    summary="Grant promotional credit",
    status_code=201,
    openapi_extra=json_body(NewFunds),
)
async def grant_promo(request: Request, org: str) -> Response:
    admin = await _admin(request)
    done = await admin.grant_promo(org, await _body(request, NewFunds))
    return json_response(done.as_json(), 201 if done.applied else 200)


@router.get("/orgs/{org}/balance", summary="Balances, resource packs and budgets")
async def balance(request: Request, org: str) -> Response:
    admin = await _admin(request)
    return json_response((await admin.balance(org)).as_json())


@router.get("/orgs/{org}/packs", summary="An organization's resource packs")
async def list_packs(request: Request, org: str) -> Response:
    admin = await _admin(request)
    return json_response({"object": "list", "data": [p.as_json() for p in await admin.packs(org)]})


@router.post(
    "/orgs/{org}/packs",
    summary="Grant a resource pack",
    status_code=201,
    openapi_extra=json_body(NewPack),
)
async def grant_pack(request: Request, org: str) -> Response:
    admin = await _admin(request)
    granted = await admin.grant_pack(org, await _body(request, NewPack))
    return json_response(granted.as_json(), 201)


@router.get(
    "/orgs/{org}/usage",
    summary="Usage per day and model, what it was charged and cost",
    openapi_extra=_query(
        ("since", _DAY, "First UTC day, YYYY-MM-DD"), ("until", _DAY, "Last UTC day, YYYY-MM-DD")
    ),
)
async def org_usage(request: Request, org: str) -> Response:
    """The operator's view: besides tokens and the charge, what external upstreams charged
    us for the same requests (the margin; reconcile it with the provider's invoice)."""
    admin = await _admin(request)
    params = request.query_params
    totals = await admin.usage(org, params.get("since"), params.get("until"))

    def money(amount: Money | None) -> dict[str, str] | None:
        if amount is None:
            return None
        return {"amount": format_micros(amount.micros), "currency": amount.currency.value}

    return json_response(
        {
            "object": "list",
            "data": [
                {
                    "date": t.day,
                    "model": t.model,
                    "requests": t.requests,
                    "prompt_tokens": t.prompt_tokens,
                    "cached_tokens": t.cached_tokens,
                    "completion_tokens": t.completion_tokens,
                    "charged": money(t.cost),
                    "upstream_cost": money(t.upstream_cost),
                }
                for t in totals
            ],
        }
    )


@router.get(
    "/orgs/{org}/statement",
    summary="Ledger lines in [since, until); format=csv",
    openapi_extra=_query(
        ("since", _MOMENT, "From this date or ISO 8601 time (default: the beginning)"),
        ("until", _MOMENT, "Before this date or ISO 8601 time (default: now)"),
        ("format", {"type": "string", "enum": ["json", "csv"]}, "json (default) or csv"),
    )
    | {
        "responses": {
            "200": {
                "description": "The lines, as JSON or as CSV",
                "content": {
                    "application/json": {"schema": {}},
                    "text/csv": {"schema": {"type": "string"}},
                },
            }
        }
    },
)
async def statement(request: Request, org: str) -> Response:
    admin = await _admin(request)
    params = request.query_params
    since = parse_time(params["since"], "since") if "since" in params else 0
    until = parse_time(params["until"], "until") if "until" in params else None
    output = params.get("format", "json")
    if output not in ("json", "csv"):
        raise InvalidRequest("'format' must be 'json' or 'csv'.", "format")
    lines = await admin.statement(org, since, until)
    if output == "csv":
        name = f"statement-{(await admin.org(org)).id}.csv"
        return Response(
            statement_csv(lines),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    return json_response({"object": "list", "data": [statement_json(ln) for ln in lines]})


# -- budgets, keys ----------------------------------------------------------------------


@router.put(
    "/budgets/{scope}/{period}",
    summary="Set a budget (scope org:<id> or key:<id>)",
    openapi_extra=json_body(BudgetLimit),
)
async def set_budget(request: Request, scope: str, period: str) -> Response:
    admin = await _admin(request)
    budget = await admin.set_budget(scope, period, await _body(request, BudgetLimit))
    return json_response(budget.as_json())


@router.delete("/budgets/{scope}/{period}", summary="Remove a budget", status_code=204)
async def clear_budget(request: Request, scope: str, period: str) -> Response:
    admin = await _admin(request)
    await admin.clear_budget(scope, period)
    return Response(status_code=204)


@router.get("/orgs/{org}/keys", summary="An organization's keys (never their secrets)")
async def list_keys(request: Request, org: str) -> Response:
    admin = await _accounts(request)
    organization = await admin.orgs.find(org)
    data = [key_json(k) for k in await admin.keys.list(organization.id)]
    return json_response({"object": "list", "data": data})


@router.post(
    "/orgs/{org}/keys",
    summary="Create a key, optionally restricted to models and with an expiry; its secret "
    "('key') is shown once",
    status_code=201,
    openapi_extra=json_body(NewApiKey),
)
async def create_key(request: Request, org: str) -> Response:
    admin = await _accounts(request)
    body = await _body(request, NewApiKey)
    issued = await admin.issue_key(
        org, body.name, body.role, models=body.models, expires_at_ms=body.expires_at
    )
    return json_response({**key_json(issued.key), "key": issued.token}, 201)


@router.patch(
    "/keys/{key_id}",
    summary="Give a key its own tier (null: the organization's)",
    openapi_extra=json_body(KeyTierChange),
)
async def update_key(request: Request, key_id: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, KeyTierChange)
    if "tier" not in body.model_fields_set:
        raise InvalidRequest("Give 'tier' (a tier name, or null).", "tier")
    tier = await admin.set_key_tier(key_id, body.tier)
    return json_response({"id": key_id, "tier": tier})


# -- prices, tiers, audit ---------------------------------------------------------------


@router.get("/prices", summary="Every price, past and future")
async def list_prices(request: Request) -> Response:
    admin = await _admin(request)
    data = [price_json(p) for p in await admin.list_prices()]
    return json_response({"object": "list", "data": data})


@router.post(
    "/prices",
    summary="Set a model's prices per 1M tokens",
    status_code=201,
    openapi_extra=json_body(NewPrice),
)
async def set_price(request: Request) -> Response:
    admin = await _admin(request)
    price = await admin.set_price(await _body(request, NewPrice))
    return json_response(price_json(price), 201)


@router.get("/tiers", summary="Every rate-limit tier")
async def list_tiers(request: Request) -> Response:
    admin = await _admin(request)
    data = [tier_json(t) for t in await admin.list_tiers()]
    return json_response({"object": "list", "data": data})


@router.put(
    "/tiers/{name}",
    summary="Define or replace a tier (a cap left out is unlimited)",
    openapi_extra=json_body(TierLimits),
)
async def set_tier(request: Request, name: str) -> Response:
    admin = await _admin(request)
    tier = await admin.set_tier(name, await _body(request, TierLimits))
    return json_response(tier_json(tier))


@router.get(
    "/audit",
    summary="The audit log, newest first",
    openapi_extra=_query(
        ("limit", {"type": "integer", "minimum": 0}, "How many entries (default 100)"),
        ("action", {"type": "string", "maxLength": 60}, "Only actions that start with this (key.)"),
        ("actor", {"type": "string", "maxLength": 80}, "Only actors that contain this"),
    ),
)
async def audit(request: Request) -> Response:
    admin = await _admin(request)
    q = request.query_params
    limit = _query_int(request, "limit", 100)
    entries = await admin.audit_log(limit, q.get("action", ""), q.get("actor", ""))
    data = [
        {
            "id": e.id,
            "time": iso_ms(e.at_ms),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "before": e.before,
            "after": e.after,
        }
        for e in entries
    ]
    return json_response({"object": "list", "data": data})


@router.get(
    "/usage",
    summary="The platform's usage: tokens and revenue per day, top organizations and models",
    openapi_extra=_query(
        ("since", _DAY, "First UTC day, YYYY-MM-DD (default: 29 days before until)"),
        ("until", _DAY, "Last UTC day, YYYY-MM-DD (default: today)"),
    ),
)
async def platform_usage(request: Request) -> Response:
    """What the console's platform overview shows, from the daily roll-ups alone (revenue
    per currency; upstream cost is not in the roll-ups: ``/orgs/{org}/usage`` has it)."""
    admin = await _admin(request)
    params = request.query_params
    today = datetime.fromtimestamp(admin.clock.now_ms() / 1000, UTC).date()
    period = Period.parse(
        params.get("since", "")[:10], params.get("until", "")[:10], Period.last(30, today)
    )
    report = await platform_report(admin.database, period)

    def sums(totals: Totals) -> dict[str, Any]:
        revenue = {c: format_micros(m) for c, m in sorted(totals.revenue.items())}
        return {"requests": totals.requests, "tokens": totals.tokens, "revenue": revenue}

    return json_response(
        {
            "object": "platform_usage",
            **period.as_query(),
            "total": sums(report.total),
            "days": [{"date": d, **sums(t)} for d, t in report.by_day.items()],
            "top_orgs": [{"org": o, **sums(t)} for o, t in report.top_orgs],
            "top_models": [{"model": m, **sums(t)} for m, t in report.top_models],
        }
    )


# -- catalog, models, credentials -------------------------------------------------------


def _catalog_json(current: CurrentCatalog) -> dict[str, Any]:
    return {
        "object": "catalog",
        "source": current.source,
        "path": current.path,
        "version": current.version,
        "applied_at": None if current.applied_at_ms is None else iso_ms(current.applied_at_ms),
        "document": current.document,
    }


@router.get("/catalog", summary="The catalog document in force and its version")
async def get_catalog(request: Request) -> Response:
    admin = await _catalog_admin(request)
    return json_response(_catalog_json(await admin.current()))


@router.put(
    "/catalog",
    summary="Replace the catalog document (YAML body); applied at once, without a restart",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/yaml": {"schema": {"type": "string"}}},
        }
    },
)
async def put_catalog(
    request: Request,
    allow_empty: bool = Query(
        False,
        description="Apply a document that declares no models (it removes every catalog "
        "model); without it such a document is a 400.",
    ),
) -> Response:
    admin = await _catalog_admin(request)
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The catalog must be UTF-8 YAML.") from None
    try:
        await admin.apply(text, "catalog", allow_empty=allow_empty)
    except CatalogFileManaged as exc:
        return json_response(error_body(exc.message, "invalid_request_error", "conflict"), 409)
    except CatalogRejected as exc:
        body = error_body(exc.message, "invalid_request_error", "invalid_catalog", "catalog")
        body["errors"] = [issue.as_json() for issue in exc.issues]
        return json_response(body, 400)
    return json_response(_catalog_json(await admin.current()))


@router.get("/models", summary="Every served model, its deployments and their health")
async def list_models(request: Request) -> Response:
    state = app_state(request)
    await _actor(request, state)
    catalog = state.catalog
    data = [describe_model(m, catalog.aliases) for m in catalog.list()]
    manager = state.catalog_manager
    return json_response(
        {
            "object": "list",
            "catalog_version": manager.version if manager else None,
            "data": data,
        }
    )


@router.get("/credentials", summary="Upstream credentials: names and dates, never values")
async def list_credentials(request: Request) -> Response:
    admin = await _catalog_admin(request)
    data = [
        {
            "name": c.name,
            "created_at": iso_ms(c.created_at_ms),
            "updated_at": iso_ms(c.updated_at_ms),
        }
        for c in await admin.list_credentials()
    ]
    return json_response({"object": "list", "data": data})


@router.put(
    "/credentials/{name}",
    summary="Set an upstream credential (sealed at rest)",
    status_code=204,
    openapi_extra=json_body(CredentialValue),
)
async def put_credential(request: Request, name: str) -> Response:
    admin = await _catalog_admin(request)
    await admin.set_credential(name, await _body(request, CredentialValue))
    return Response(status_code=204)


@router.delete("/credentials/{name}", summary="Delete an upstream credential", status_code=204)
async def delete_credential(request: Request, name: str) -> Response:
    admin = await _catalog_admin(request)
    await admin.delete_credential(name)
    return Response(status_code=204)
