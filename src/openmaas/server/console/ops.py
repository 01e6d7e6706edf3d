"""The console's operator pages (``/console/operator/...``, operators only): organizations
(create, tier, data policy, credit limit, top up, resource packs, suspend and resume),
models and deployments as the platform reports them, the catalog editor, prices, and
users.

Every page passes ``console.enter`` (the route's row in ``access.CONSOLE_ROLES`` says
operators only) and calls the services the admin API calls, as the person
(``user:<id>`` in the audit log): ``billing_admin``, ``accounts_admin``, ``catalog_admin``
and ``accounts/people_roles.py``. A refused change shows the service's message on the page
(400), as the admin API answers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.people import actor_of
from openmaas.accounts.people_roles import PeopleRoles
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.admin_bodies import NewFunds, NewPack, NewPrice, TermsChange
from openmaas.catalog.admin import CatalogAdmin, EmptyCatalogRefused, describe_model
from openmaas.catalog.document import CatalogIssue, CatalogRejected
from openmaas.catalog.reloader import CatalogFileManaged
from openmaas.core.errors import InvalidRequest
from openmaas.core.money import Currency
from openmaas.core.types import DataPolicy
from openmaas.server.console.pages import PREFIX, SIGN_UP_ACTOR, Visit, enter, page
from openmaas.server.state import app_state

router = APIRouter(prefix=f"{PREFIX}/operator", include_in_schema=False)
OPS = f"{PREFIX}/operator"
MAX_ORGS_SHOWN = 500  # the list filters by name beyond that
MAX_CATALOG_CHARS = 200_000
DONE = (
    "created",
    "terms",
    "topup",
    "promo",
    "pack",
    "suspended",
    "resumed",
)  # what an organization's page confirms


def _billing(visit: Visit) -> BillingAdmin:
    assert visit.user is not None
    return visit.platform.billing_admin(actor_of(visit.user))


def _catalog(visit: Visit) -> CatalogAdmin:
    assert visit.user is not None
    return visit.platform.catalog_admin(actor_of(visit.user))


def roles(visit: Visit) -> PeopleRoles:
    """The people's roles service, as the visiting person (before sign-up: the sign-up's
    actor)."""
    actor = actor_of(visit.user) if visit.user else SIGN_UP_ACTOR
    return PeopleRoles(
        visit.platform.changes(actor),
        visit.platform.clock,
        invitation_hours=visit.console.settings.console_invitation_hours,
    )


# -- organizations ------------------------------------------------------------------------


@dataclass(frozen=True)
class OrgRow:
    id: str
    name: str
    currency: str
    tier: str | None
    data_policy: str
    available: int
    credit_limit: int


async def _orgs_page(visit: Visit, status: int = 200, **values: Any) -> Response:
    billing = _billing(visit)
    wanted = visit.request.query_params.get("q", "").strip()[:200]
    balances = await billing.balances()
    rows = [
        OrgRow(o.id, o.name, o.currency, o.tier, o.data_policy, *balances.get(o.id, (0, 0)))
        for o in await billing.list_orgs()
        if wanted.lower() in o.name.lower()
    ]
    tiers = [t.name for t in await billing.list_tiers()]
    assert visit.user is not None
    suspended = await visit.platform.suspensions(actor_of(visit.user)).suspended()
    return visit.render(
        "ops_orgs.html",
        status,
        page="ops_orgs",
        suspended=suspended,
        rows=rows[:MAX_ORGS_SHOWN],
        more=max(0, len(rows) - MAX_ORGS_SHOWN),
        q=wanted,
        tiers=tiers,
        currencies=[c.value for c in Currency],
        **values,
    )


@router.get("/orgs")
@page
async def orgs(request: Request) -> Response:
    visit = await enter(request)
    return await _orgs_page(visit)


@router.post("/orgs")
@page
async def create_org(request: Request) -> Response:
    visit = await enter(request)
    assert visit.user is not None
    form = visit.form
    body: dict[str, Any] = {"name": form.get("name", "").strip()}
    for name in ("currency", "tier", "credit_limit"):
        if form.get(name, "").strip():
            body[name] = form[name].strip()
    try:
        org = await visit.platform.accounts_admin(actor_of(visit.user)).create_org(
            NewOrganization.parse(body)
        )
    except InvalidRequest as exc:
        return await _orgs_page(visit, 400, error=exc.message, form=form)
    return visit.redirect(f"{OPS}/orgs/{org.id}?done=created")


async def _org_page(visit: Visit, org: str, status: int = 200, **values: Any) -> Response:
    assert visit.user is not None
    billing = _billing(visit)
    found = await billing.org(org)
    done = visit.request.query_params.get("done", "")
    suspended = await visit.platform.suspensions(actor_of(visit.user)).suspended()
    return visit.render(
        "ops_org.html",
        status,
        page="ops_orgs",
        target=found,
        suspended_at=suspended.get(found.id),
        balance=await billing.balance(found.id),
        tiers=[t.name for t in await billing.list_tiers()],
        policies=[p.value for p in DataPolicy],
        done=done if done in DONE else None,
        **values,
    )


@router.get("/orgs/{org}")
@page
async def org_detail(request: Request, org: str) -> Response:
    visit = await enter(request)
    return await _org_page(visit, org)


async def _change(visit: Visit, org: str, done: str, change: Any) -> Response:
    """Run ``change`` (a coroutine of the billing service): back to the organization's page
    saying so, or the page again with the refusal."""
    try:
        await change
    except InvalidRequest as exc:
        return await _org_page(visit, org, 400, error=exc.message)
    return visit.redirect(f"{OPS}/orgs/{quote(org, safe='')}?done={done}")


@router.post("/orgs/{org}/terms")
@page
async def org_terms(request: Request, org: str) -> Response:
    """Tier (``-``: none), data policy, credit limit and prompt logging (``on``, ``off``);
    a field left empty stays."""
    visit = await enter(request)
    form = visit.form
    body: dict[str, Any] = {}
    tier = form.get("tier", "").strip()
    if tier:
        body["tier"] = None if tier == "-" else tier
    if form.get("data_policy", "").strip():
        body["data_policy"] = form["data_policy"].strip()
    if form.get("credit_limit", "").strip():
        body["credit_limit"] = form["credit_limit"].strip()
    logging = form.get("prompt_logging", "").strip()
    if logging:
        body["prompt_logging"] = {"on": True, "off": False}.get(logging, logging)
    billing = _billing(visit)
    try:
        change = TermsChange.parse(body)
    except InvalidRequest as exc:
        return await _org_page(visit, org, 400, error=exc.message)
    return await _change(visit, org, "terms", billing.set_org(org, change))


@router.post("/orgs/{org}/topup")
@page
async def org_topup(request: Request, org: str) -> Response:
    """Money in: prepaid cash, or promotional credit (``kind=promo``)."""
    visit = await enter(request)
    billing = _billing(visit)
    try:
        funds = NewFunds.parse({"amount": visit.form.get("amount", "").strip()})
    except InvalidRequest as exc:
        return await _org_page(visit, org, 400, error=exc.message)
    if visit.form.get("kind") == "promo":
        return await _change(visit, org, "promo", billing.grant_promo(org, funds))
    return await _change(visit, org, "topup", billing.top_up(org, funds))


@router.post("/orgs/{org}/suspension")
@page
async def org_suspension(request: Request, org: str) -> Response:
    """``suspended=1`` suspends the organization (its member keys refused), ``0`` resumes
    it, as ``PUT`` / ``DELETE /admin/v1/orgs/{org}/suspension`` do."""
    visit = await enter(request)
    assert visit.user is not None
    flag = visit.form.get("suspended")
    if flag not in ("0", "1"):
        return await _org_page(visit, org, 400, error="'suspended' must be 0 or 1.")
    suspensions = visit.platform.suspensions(actor_of(visit.user))
    change = suspensions.suspend(org) if flag == "1" else suspensions.resume(org)
    return await _change(visit, org, "suspended" if flag == "1" else "resumed", change)


@router.post("/orgs/{org}/packs")
@page
async def org_pack(request: Request, org: str) -> Response:
    visit = await enter(request)
    form = visit.form
    tokens = form.get("tokens", "").strip().replace(",", "")
    body = {
        "models": [m.strip() for m in form.get("models", "").split(",") if m.strip()],
        "tokens": int(tokens) if tokens.isdigit() else tokens,
        "expires_at": form.get("expires_at", "").strip(),
    }
    billing = _billing(visit)
    try:
        grant = NewPack.parse(body)
    except InvalidRequest as exc:
        return await _org_page(visit, org, 400, error=exc.message)
    return await _change(visit, org, "pack", billing.grant_pack(org, grant))


# -- models, catalog, prices ----------------------------------------------------------------


@router.get("/models")
@page
async def models(request: Request) -> Response:
    """Every served model, its deployments' health, load, circuit and routing (as
    ``GET /admin/v1/models`` reports them)."""
    visit = await enter(request)
    state = app_state(request)
    catalog = state.catalog
    described = [describe_model(m, catalog.aliases) for m in catalog.list()]
    manager = state.catalog_manager
    return visit.render(
        "ops_models.html",
        page="ops_models",
        models=sorted(described, key=lambda m: str(m["id"])),
        version=manager.version if manager else None,
    )


@dataclass(frozen=True)
class Line:
    number: int
    text: str
    issues: list[str]


def _lines(text: str, issues: list[CatalogIssue]) -> tuple[list[Line], list[str]]:
    """The document's lines, each with its issues beside it; and the issues of no line."""
    by_line: dict[int, list[str]] = {}
    loose = []
    count = len(text.splitlines()) or 1
    for issue in issues:
        said = f"{issue.field}: {issue.message}" if issue.field else issue.message
        if issue.line is not None and 1 <= issue.line <= count:
            by_line.setdefault(issue.line, []).append(said)
        else:
            loose.append(said)
    lines = [
        Line(n, line, by_line.get(n, []))
        for n, line in enumerate(text.splitlines() or [""], start=1)
    ]
    return lines, loose


async def _catalog_page(visit: Visit, status: int = 200, **values: Any) -> Response:
    current = await _catalog(visit).current()
    values.setdefault("document", current.document or "")
    return visit.render(
        "ops_catalog.html",
        status,
        page="ops_catalog",
        current=current,
        file_managed=current.source == "file",
        **values,
    )


@router.get("/catalog")
@page
async def catalog(request: Request) -> Response:
    visit = await enter(request)
    saved = request.query_params.get("saved", "")
    return await _catalog_page(visit, saved=saved if saved.isalnum() else None)


@router.post("/catalog")
@page
async def save_catalog(request: Request) -> Response:
    """``check=1``: the platform's own checks, nothing saved; else the document applied
    as ``PUT /admin/v1/catalog`` applies it (an empty one only with ``allow_empty``)."""
    visit = await enter(request)
    text = visit.form.get("document", "").replace("\r\n", "\n")
    admin = _catalog(visit)
    if len(text) > MAX_CATALOG_CHARS:
        return await _catalog_page(visit, 400, document=text, error=visit.t("catalog_too_big"))
    try:
        if visit.form.get("check") == "1":
            document = await (admin.manager.check(text) if admin.manager else admin.check(text))
            count = len(document.models)
            return await _catalog_page(visit, document=text, checked=count)
        version = await admin.apply(text, allow_empty=visit.form.get("allow_empty") == "1")
    except CatalogRejected as exc:
        lines, loose = _lines(text, exc.issues)
        return await _catalog_page(
            visit, 400, document=text, lines=lines, loose=loose, issues=len(exc.issues)
        )
    except EmptyCatalogRefused:
        return await _catalog_page(visit, 400, document=text, error=visit.t("catalog_empty"))
    except CatalogFileManaged as exc:
        return await _catalog_page(visit, 409, document=text, error=exc.message)
    return visit.redirect(f"{OPS}/catalog?saved={version[:12]}")


async def _prices_page(visit: Visit, status: int = 200, **values: Any) -> Response:
    prices = await _billing(visit).list_prices()
    now = visit.platform.clock.now_ms()
    current: dict[tuple[str, str], int] = {}  # the price in force per model and currency
    for index, price in enumerate(prices):
        if price.effective_from_ms <= now:
            current[(price.model, price.currency.value)] = index
    return visit.render(
        "ops_prices.html",
        status,
        page="ops_prices",
        prices=list(enumerate(prices)),
        in_force=set(current.values()),
        now=now,
        currencies=[c.value for c in Currency],
        **values,
    )


@router.get("/prices")
@page
async def prices(request: Request) -> Response:
    visit = await enter(request)
    return await _prices_page(visit, done=request.query_params.get("done") == "1")


@router.post("/prices")
@page
async def set_price(request: Request) -> Response:
    visit = await enter(request)
    form = visit.form
    body: dict[str, Any] = {}
    for name in ("model", "currency", "input", "cached_input", "output", "reasoning",
                 "effective_from"):  # fmt: skip
        if form.get(name, "").strip():
            body[name] = form[name].strip()
    try:
        await _billing(visit).set_price(NewPrice.parse(body))
    except InvalidRequest as exc:
        return await _prices_page(visit, 400, error=exc.message, form=form)
    return visit.redirect(f"{OPS}/prices?done=1")


# -- users ----------------------------------------------------------------------------------


async def _users_page(visit: Visit, status: int = 200, **values: Any) -> Response:
    people = visit.people()
    memberships: dict[str, list[tuple[str, str]]] = {}
    for m in await people.users.memberships():
        memberships.setdefault(m.user_id, []).append((m.org_name, m.role))
    return visit.render(
        "ops_users.html",
        status,
        page="ops_users",
        users=await people.users.all(),
        memberships=memberships,
        **values,
    )


@router.get("/users")
@page
async def users(request: Request) -> Response:
    visit = await enter(request)
    return await _users_page(visit)


@router.post("/users/{user_id}/operator")
@page
async def user_operator(request: Request, user_id: str) -> Response:
    """``operator=1`` makes the user an operator, ``operator=0`` unmakes one."""
    visit = await enter(request)
    return await _user_flag(
        visit, "operator", lambda on: roles(visit).set_operator(visit.user, user_id, on)
    )


@router.post("/users/{user_id}/disabled")
@page
async def user_disabled(request: Request, user_id: str) -> Response:
    """``disabled=1`` disables the user (their sessions end), ``disabled=0`` enables."""
    visit = await enter(request)
    return await _user_flag(
        visit, "disabled", lambda on: roles(visit).set_disabled(visit.user, user_id, on)
    )


async def _user_flag(
    visit: Visit, field: str, change: Callable[[bool], Awaitable[object]]
) -> Response:
    """Set a user's flag from the form's ``field`` (``0`` or ``1``), then the users page."""
    assert visit.user is not None
    flag = visit.form.get(field)
    try:
        if flag not in ("0", "1"):
            raise InvalidRequest(f"'{field}' must be 0 or 1.", field)
        await change(flag == "1")
    except InvalidRequest as exc:
        return await _users_page(visit, 400, error=exc.message)
    return visit.redirect(f"{OPS}/users")
