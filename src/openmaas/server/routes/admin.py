"""The admin HTTP API (``/admin/v1/...``): billing and catalog administration for admin keys.

JSON in and out (the catalog document itself is YAML); money as decimal strings
(``"12.50"``), never JSON numbers. Every change is written to the audit log as
``key:<admin key id>``. Errors have OpenAI's shape: 401 without a key, 403 for a member key,
400 naming the field (an invalid catalog: every problem with its line and field), 404 for an
unknown organization, key, budget or credential, 409 for a catalog managed by a file.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from openmaas.core.errors import InvalidRequest, PermissionDenied
from openmaas.core.money import Money, format_micros
from openmaas.protocols.openai.errors import error_body
from openmaas.server.responses import json_response
from openmaas.server.routes.common import authenticate
from openmaas.server.state import AppState, app_state
from openmaas.billing.admin import (
    UNSET,
    BillingAdmin,
    iso_ms,
    org_json,
    parse_time,
    price_json,
    statement_csv,
    statement_json,
    tier_json,
)
from openmaas.catalog.admin import CatalogAdmin, CurrentCatalog, describe_model
from openmaas.catalog.document import CatalogRejected
from openmaas.catalog.reloader import CatalogFileManaged

router = APIRouter(prefix="/admin/v1", tags=["Admin"])


async def _actor(request: Request, state: AppState) -> str:
    """The caller must hold an admin key; changes are audited as ``key:<its id>``."""
    principal = await authenticate(request, state)
    if not principal.is_admin:
        raise PermissionDenied("The admin API needs an admin key.")
    return f"key:{principal.key_id}"


async def _admin(request: Request) -> BillingAdmin:
    state = app_state(request)
    actor = await _actor(request, state)
    billing = state.gateway.billing
    return BillingAdmin(
        state.database,
        billing.ledger,
        state.clock,
        actor,
        on_change=billing.invalidate,
    )


async def _catalog_admin(request: Request) -> CatalogAdmin:
    state = app_state(request)
    actor = await _actor(request, state)
    return CatalogAdmin(
        state.database,
        state.settings,
        state.master_key,
        actor,
        manager=state.catalog_manager,
        clock=state.clock,
    )


async def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The JSON object of the request; a field not in ``allowed`` is refused by name."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise InvalidRequest("The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    for name in body:
        if name not in allowed:
            raise InvalidRequest(f"Unknown field '{name}'.", name)
    return body


def _query_int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise InvalidRequest(f"'{name}' must be a positive integer.", name)
    return int(text)


# -- organizations ----------------------------------------------------------------------


@router.get("/orgs", summary="List organizations")
async def list_orgs(request: Request) -> Response:
    admin = await _admin(request)
    return json_response({"object": "list", "data": [org_json(o) for o in await admin.list_orgs()]})


@router.post("/orgs", summary="Create an organization", status_code=201)
async def create_org(request: Request) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"name", "currency", "tier", "credit_limit"})
    org = await admin.create_org(
        body.get("name"), body.get("currency", "CNY"), body.get("tier"), body.get("credit_limit")
    )
    return json_response(org_json(org), 201)


@router.patch(
    "/orgs/{org}", summary="Change an organization's tier, discount, credit limit or data policy"
)
async def update_org(request: Request, org: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"tier", "discount_bp", "credit_limit", "data_policy"})
    changed = await admin.set_org(
        org,
        tier=body["tier"] if "tier" in body else UNSET,
        discount_bp=body.get("discount_bp"),
        credit_limit=body.get("credit_limit"),
        data_policy=body.get("data_policy"),
    )
    balance = await admin.balance(changed.id)
    return json_response({**org_json(changed), "credit_limit": balance.as_json()["credit_limit"]})


@router.post("/orgs/{org}/topups", summary="Add prepaid money", status_code=201)
async def top_up(request: Request, org: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"amount", "id"})
    done = await admin.top_up(org, body.get("amount"), body.get("id"))
    return json_response(done.as_json(), 201 if done.applied else 200)


@router.post("/orgs/{org}/promotions", summary="Grant promotional credit", status_code=201)
async def grant_promo(request: Request, org: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"amount", "id"})
    done = await admin.grant_promo(org, body.get("amount"), body.get("id"))
    return json_response(done.as_json(), 201 if done.applied else 200)


@router.get("/orgs/{org}/balance", summary="Balances, resource packs and budgets")
async def balance(request: Request, org: str) -> Response:
    admin = await _admin(request)
    return json_response((await admin.balance(org)).as_json())


@router.get("/orgs/{org}/packs", summary="An organization's resource packs")
async def list_packs(request: Request, org: str) -> Response:
    admin = await _admin(request)
    return json_response({"object": "list", "data": [p.as_json() for p in await admin.packs(org)]})


@router.post("/orgs/{org}/packs", summary="Grant a resource pack", status_code=201)
async def grant_pack(request: Request, org: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"models", "tokens", "expires_at", "id"})
    granted = await admin.grant_pack(
        org, body.get("models"), body.get("tokens"), body.get("expires_at"), body.get("id")
    )
    return json_response(granted.as_json(), 201)


@router.get("/orgs/{org}/usage", summary="Usage per day and model, what it was charged and cost")
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


@router.get("/orgs/{org}/statement", summary="Ledger lines in [since, until); format=csv")
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


@router.put("/budgets/{scope}/{period}", summary="Set a budget (scope org:<id> or key:<id>)")
async def set_budget(request: Request, scope: str, period: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"limit"})
    budget = await admin.set_budget(scope, period, body.get("limit"))
    return json_response(budget.as_json())


@router.delete("/budgets/{scope}/{period}", summary="Remove a budget")
async def clear_budget(request: Request, scope: str, period: str) -> Response:
    admin = await _admin(request)
    await admin.clear_budget(scope, period)
    return Response(status_code=204)


@router.patch("/keys/{key_id}", summary="Give a key its own tier (null: the organization's)")
async def update_key(request: Request, key_id: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"tier"})
    if "tier" not in body:
        raise InvalidRequest("Give 'tier' (a tier name, or null).", "tier")
    tier = await admin.set_key_tier(key_id, body["tier"])
    return json_response({"id": key_id, "tier": tier})


# -- prices, tiers, audit ---------------------------------------------------------------


@router.get("/prices", summary="Every price, past and future")
async def list_prices(request: Request) -> Response:
    admin = await _admin(request)
    data = [price_json(p) for p in await admin.list_prices()]
    return json_response({"object": "list", "data": data})


@router.post("/prices", summary="Set a model's prices per 1M tokens", status_code=201)
async def set_price(request: Request) -> Response:
    admin = await _admin(request)
    fields = {"model", "input", "cached_input", "output", "reasoning", "currency"}
    body = await _body(request, fields | {"effective_from"})
    price = await admin.set_price(
        body.get("model"),  # type: ignore[arg-type]
        input=body.get("input"),
        cached_input=body.get("cached_input"),
        output=body.get("output"),
        reasoning=body.get("reasoning"),
        currency=body.get("currency", "CNY"),
        effective_from=body.get("effective_from"),
    )
    return json_response(price_json(price), 201)


@router.get("/tiers", summary="Every rate-limit tier")
async def list_tiers(request: Request) -> Response:
    admin = await _admin(request)
    data = [tier_json(t) for t in await admin.list_tiers()]
    return json_response({"object": "list", "data": data})


@router.put("/tiers/{name}", summary="Define or replace a tier (a cap left out is unlimited)")
async def set_tier(request: Request, name: str) -> Response:
    admin = await _admin(request)
    body = await _body(request, {"rpm", "tpm", "concurrency", "models"})
    models = body.get("models")
    if models is not None and not isinstance(models, dict):
        raise InvalidRequest(
            "'models' must be an object of {model: {rpm, tpm, concurrency}}.", "models"
        )
    tier = await admin.set_tier(
        name,
        rpm=body.get("rpm"),
        tpm=body.get("tpm"),
        concurrency=body.get("concurrency"),
        models=models,
    )
    return json_response(tier_json(tier))


@router.get("/audit", summary="The audit log, newest first")
async def audit(request: Request) -> Response:
    admin = await _admin(request)
    entries = await admin.audit_log(_query_int(request, "limit", 100))
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
)
async def put_catalog(request: Request) -> Response:
    admin = await _catalog_admin(request)
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The catalog must be UTF-8 YAML.") from None
    try:
        await admin.apply(text, "catalog")
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
    "/credentials/{name}", summary="Set an upstream credential (sealed at rest)", status_code=204
)
async def put_credential(request: Request, name: str) -> Response:
    admin = await _catalog_admin(request)
    body = await _body(request, {"value"})
    await admin.set_credential(name, body.get("value"))
    return Response(status_code=204)


@router.delete("/credentials/{name}", summary="Delete an upstream credential", status_code=204)
async def delete_credential(request: Request, name: str) -> Response:
    admin = await _catalog_admin(request)
    await admin.delete_credential(name)
    return Response(status_code=204)
