"""The console at ``/console``: server-rendered pages for people, on the platform's own
services (``accounts/people.py``, the billing and catalog services the admin API uses).

Every request passes ``_enter``, which looks its route up in ``access.CONSOLE_ROLES`` (the
one table of console routes × roles), reads the session cookie, checks the CSRF token of
every unsafe method (the session's; before sign-in a double-submit cookie) and the
``Origin`` when the browser sends one, and finds the person's role in the path's
organization: another organization's pages answer 404, as pages that do not exist; a role
too low answers 403. Pages carry a strict Content-Security-Policy (scripts and styles from
this server only, no inline code) and are never cached.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.people import Access as OrgAccess
from openmaas.accounts.people import OrgRole, PeopleAdmin, actor_of
from openmaas.accounts.people_sessions import LockedOut, Session, SignIn, SignInPolicy
from openmaas.billing.admin_bodies import BudgetLimit
from openmaas.core.errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from openmaas.core.ledger_events import BudgetPeriod
from openmaas.core.money import Currency
from openmaas.core.prices import ModelPrice
from openmaas.platform import Platform
from openmaas.server.console import i18n
from openmaas.server.routes.access import CONSOLE_ROLES, ConsoleAccess
from openmaas.server.state import app_state
from openmaas.settings import Settings
from openmaas.store.people.users import User

PREFIX = "/console"
FILES = Path(__file__).resolve().parent  # templates, static files, messages
SESSION_COOKIE = "openmaas_session"
CSRF_COOKIE = "openmaas_csrf"  # before sign-in: the form's token, double-submitted
SIGN_UP_ACTOR = "system:sign-up"
MAX_FORM_BYTES = 16_384
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_ROLE_OF = {
    ConsoleAccess.VIEWER: OrgRole.VIEWER,
    ConsoleAccess.MEMBER: OrgRole.MEMBER,
    ConsoleAccess.ADMIN: OrgRole.ADMIN,
    ConsoleAccess.OWNER: OrgRole.OWNER,
}

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class Console:
    """What the console builds once per application: its templates and message catalogs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.templates = Environment(
            loader=FileSystemLoader(FILES / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            auto_reload=False,
        )
        self.catalogs = i18n.load_catalogs()
        self.policy = SignInPolicy(
            max_failures=settings.console_lockout_failures,
            idle_ms=round(settings.console_session_hours * 3_600_000),
        )


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the console on ``app``: its pages and its static files."""
    app.state.console = Console(settings)
    # before the pages: their last route answers every other /console path
    app.mount(f"{PREFIX}/static", StaticFiles(directory=FILES / "static"), name="console-static")
    # the other page modules use this module's machinery
    from openmaas.server.console import ops, overview, people, play, usage

    app.include_router(usage.router)  # before this router's catch-all
    app.include_router(overview.router)
    app.include_router(play.router)
    app.include_router(ops.router)
    app.include_router(people.router)
    app.include_router(router)


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


@dataclass
class Visit:
    """One request to the console: who (if anyone), in which organization, in which
    language, and the form it sent."""

    request: Request
    console: Console
    platform: Platform
    t: i18n.Translator
    session: Session | None
    form: dict[str, str] = field(default_factory=dict)
    org: OrgAccess | None = None
    new_csrf: str | None = None  # a pre-session CSRF token to set as a cookie

    @property
    def user(self) -> User | None:
        return None if self.session is None else self.session.user

    @property
    def csrf(self) -> str:
        if self.session is not None:
            return self.session.csrf_token
        return self.new_csrf or self.request.cookies.get(CSRF_COOKIE, "")

    def people(self) -> PeopleAdmin:
        actor = actor_of(self.user) if self.user else SIGN_UP_ACTOR
        platform = self.platform
        return PeopleAdmin(platform.changes(actor), platform.clock, platform.master_key)

    def sign_in(self) -> SignIn:
        return SignIn(self.platform.database, self.platform.clock, self.console.policy)

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        page = self.console.templates.get_template(template).render(
            t=self.t,
            base=PREFIX,
            here=self.request.url.path,
            csrf=self.csrf,
            user=self.user,
            org=self.org,
            languages=[(code, self.console.catalogs[code]["lang_name"]) for code in i18n.LANGUAGES],
            **values,
        )
        response = HTMLResponse(page, status, headers=HEADERS)
        self.cookies(response)
        return response

    def redirect(self, url: str) -> Response:
        response = RedirectResponse(url, 303, headers=HEADERS)
        self.cookies(response)
        return response

    def cookies(self, response: Response) -> None:
        if self.new_csrf is not None:
            set_cookie(self.request, response, CSRF_COOKIE, self.new_csrf)


def set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    """HttpOnly, SameSite=Lax, for /console only; Secure when the request came over HTTPS
    (uvicorn takes the scheme from ``X-Forwarded-Proto`` of trusted proxies only)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def _route_rule(request: Request) -> ConsoleAccess:
    route = request.scope["route"]
    return CONSOLE_ROLES[f"{request.method} {route.path}"]


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidRequest("The form is too large.")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent (older browsers, some same-origin POSTs): CSRF token decides
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


async def _enter(request: Request, org: str | None = None) -> Visit:
    """Check the request against the route's rule; raises what the page answers."""
    console: Console = request.app.state.console
    platform = app_state(request).platform
    catalogs = console.catalogs
    lang = i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))
    t = i18n.Translator(lang, catalogs[lang])
    signing = SignIn(platform.database, platform.clock, console.policy)
    session = await signing.session(request.cookies.get(SESSION_COOKIE))
    visit = Visit(request, console, platform, t, session)
    rule = _route_rule(request)
    if request.method not in ("GET", "HEAD"):
        visit.form = await _form(request)
        expected = visit.csrf
        given = visit.form.get("csrf", "")
        if (
            not _same_origin(request)
            or not expected
            or not hmac.compare_digest(given.encode(), expected.encode())
        ):
            raise PermissionDenied("CSRF token missing or wrong.")
    elif session is None and not request.cookies.get(CSRF_COOKIE):
        visit.new_csrf = secrets.token_urlsafe(32)
    if rule is ConsoleAccess.PUBLIC:
        return visit
    if session is None:
        if request.method == "GET":
            raise _Redirect(f"{PREFIX}/sign-in?next={quote(request.url.path)}")
        raise PermissionDenied("Sign in first.")
    if rule is ConsoleAccess.OPERATOR and not session.user.operator:
        raise PermissionDenied("Only operators may open the platform's pages.")
    needed = _ROLE_OF.get(rule)
    if needed is not None:
        assert org is not None, "a route with a role names its {org}"
        visit.org = await visit.people().access(session.user, org)
        if visit.org.role < needed:
            raise PermissionDenied(f"This needs the {needed.label} role.")
    return visit


enter = _enter  # for the console's other page modules (console_usage.py, console_play.py)

Handler = Callable[..., Awaitable[Response]]


def page(handler: Handler) -> Handler:
    """A console page: a refusal becomes a page (403, 404) or a redirect to sign in."""

    @functools.wraps(handler)
    async def wrapped(request: Request, **params: Any) -> Response:
        try:
            return await handler(request, **params)
        except _Redirect as redirect:
            return RedirectResponse(redirect.url, 303, headers=HEADERS)
        except (PermissionDenied, AuthenticationFailed):
            return await _problem(request, 403, "forbidden", "forbidden_text")
        except NotFound:
            return await _problem(request, 404, "not_found", "not_found_text")

    return wrapped


async def _problem(request: Request, status: int, title: str, text: str) -> Response:
    console: Console = request.app.state.console
    lang = i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))
    visit = Visit(
        request,
        console,
        app_state(request).platform,
        i18n.Translator(lang, console.catalogs[lang]),
        None,
    )
    return visit.render("problem.html", status, title=title, text=text)


def _next(url: str | None) -> str:
    """Where to go after signing in or switching language: a console page, nowhere else."""
    if url and url.startswith(PREFIX) and not url.startswith("//") and "\\" not in url:
        return url
    return PREFIX


# -- signing in and out -----------------------------------------------------------------


@router.get("")
@page
async def home(request: Request) -> Response:
    visit = await _enter(request)
    if visit.user is None:
        return visit.redirect(f"{PREFIX}/sign-in")
    orgs = await visit.people().organizations(visit.user)
    if len(orgs) == 1:
        return visit.redirect(f"{PREFIX}/orgs/{orgs[0].org_id}/keys")
    return visit.render("orgs.html", orgs=orgs, page="orgs")


@router.get("/orgs")
@page
async def open_org(request: Request) -> Response:
    visit = await _enter(request)
    org = request.query_params.get("org", "")
    return visit.redirect(f"{PREFIX}/orgs/{quote(org, safe='')}/keys" if org else PREFIX)


@router.get("/sign-in")
@page
async def sign_in_page(request: Request) -> Response:
    visit = await _enter(request)
    if visit.user is not None:
        return visit.redirect(_next(request.query_params.get("next")))
    notice = visit.t("password_changed") if request.query_params.get("changed") else None
    return visit.render(
        "sign_in.html",
        signup=visit.console.settings.console_signup,
        notice=notice,
        next=_next(request.query_params.get("next")),
    )


@router.post("/sign-in")
@page
async def sign_in(request: Request) -> Response:
    visit = await _enter(request)
    email = visit.form.get("email", "")
    address = request.client.host if request.client else "unknown"
    signing = visit.sign_in()
    try:
        session = await signing.sign_in(email, visit.form.get("password", ""), address)
    except LockedOut as exc:
        error = visit.t("locked_out", minutes=exc.minutes)
    except AuthenticationFailed:
        error = visit.t("bad_sign_in")
    else:
        old = request.cookies.get(SESSION_COOKIE)
        if old:  # whatever the browser brought is ended, never reused (no fixation)
            await signing.sign_out(old)
        response = visit.redirect(_next(request.query_params.get("next")))
        set_cookie(request, response, SESSION_COOKIE, session.token)
        response.delete_cookie(CSRF_COOKIE, path=PREFIX)
        return response
    signup = visit.console.settings.console_signup
    return visit.render(
        "sign_in.html",
        401,
        error=error,
        email=email,
        signup=signup,
        next=_next(request.query_params.get("next")),
    )


@router.post("/sign-out")
@page
async def sign_out(request: Request) -> Response:
    visit = await _enter(request)
    assert visit.session is not None
    await visit.sign_in().sign_out(visit.session.token)
    # the playground's keys of this session (console_play.py) end with it
    await visit.people().revoke_playground_keys(visit.session.user, visit.session.token)
    response = visit.redirect(f"{PREFIX}/sign-in")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


@router.get("/sign-up")
@page
async def sign_up_page(request: Request) -> Response:
    visit = await _enter(request)
    if not visit.console.settings.console_signup:
        raise NotFound("Sign-up is off.")
    return visit.render("sign_up.html")


@router.post("/sign-up")
@page
async def sign_up(request: Request) -> Response:
    visit = await _enter(request)
    if not visit.console.settings.console_signup:
        raise NotFound("Sign-up is off.")
    email, password = visit.form.get("email", ""), visit.form.get("password", "")
    if password != visit.form.get("password2"):
        return visit.render("sign_up.html", 400, error=visit.t("passwords_differ"), email=email)
    people = visit.people()
    try:
        user = await people.create_user(email, password)
        org = await visit.platform.accounts_admin(actor_of(user)).create_org(
            NewOrganization(name=user.email)
        )
        await PeopleAdmin(visit.platform.changes(actor_of(user)), visit.platform.clock).add_member(
            user.id, org.id, OrgRole.OWNER
        )
    except InvalidRequest as exc:
        return visit.render("sign_up.html", 400, error=exc.message, email=email)
    address = request.client.host if request.client else "unknown"
    session = await visit.sign_in().sign_in(email, password, address)
    response = visit.redirect(f"{PREFIX}/orgs/{org.id}/keys")
    set_cookie(request, response, SESSION_COOKIE, session.token)
    return response


@router.post("/language")
@page
async def language(request: Request) -> Response:
    visit = await _enter(request)
    lang = visit.form.get("lang", "")
    response = visit.redirect(_next(visit.form.get("next")))
    if lang in i18n.LANGUAGES:
        set_cookie(request, response, i18n.COOKIE, lang, max_age=365 * 86_400)
    return response


@router.get("/password")
@page
async def password_page(request: Request) -> Response:
    visit = await _enter(request)
    return visit.render("password.html", page="password")


@router.post("/password")
@page
async def change_password(request: Request) -> Response:
    visit = await _enter(request)
    assert visit.user is not None
    current, new = visit.form.get("current", ""), visit.form.get("new", "")
    if new != visit.form.get("new2"):
        error = visit.t("passwords_differ")
    else:
        try:
            await visit.people().change_password(visit.user, current, new)
        except InvalidRequest as exc:
            error = visit.t("password_wrong" if exc.param == "current" else "password_short")
        else:  # every session ended, this one too
            response = visit.redirect(f"{PREFIX}/sign-in?changed=1")
            response.delete_cookie(SESSION_COOKIE, path=PREFIX)
            return response
    return visit.render("password.html", 400, error=error, page="password")


# -- an organization's pages --------------------------------------------------------------


async def _keys_page(visit: Visit, status: int = 200, **values: Any) -> Response:
    assert visit.org is not None and visit.user is not None
    people = visit.people()
    report = await visit.platform.billing_admin(actor_of(visit.user)).balance(visit.org.org_id)
    budgets = {  # this month's budget of each key that has one
        b.scope.removeprefix("key:"): b
        for b in report.budgets
        if b.scope.startswith("key:") and b.period is BudgetPeriod.MONTH
    }
    return visit.render(
        "keys.html",
        status,
        page="keys",
        keys=await people.org_keys(visit.org),
        budgets=budgets,
        currency=report.currency.value,
        orgs=await people.organizations(visit.user),
        can_change=visit.org.role >= OrgRole.MEMBER,
        models=sorted(m.name for m in app_state(visit.request).catalog.list()),
        expiries=KEY_EXPIRIES,
        now_ms=visit.platform.clock.now_ms(),
        **values,
    )


KEY_EXPIRIES = {"1h": 3_600_000, "1d": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}
KEY_EXPIRIES |= {"90d": 90 * 86_400_000, "365d": 365 * 86_400_000}
"""The key form's expiries (its ``expires`` field: one of these, or none: never)."""
MODEL_FIELD = "model."  # the key form's checkbox of model M is ``model.M``


def _key_restriction(visit: Visit) -> tuple[list[str] | None, int | None]:
    """The models (None: every one) and the expiry (None: never) the key form asks for."""
    served = {m.name for m in app_state(visit.request).catalog.list()}
    models = [name[len(MODEL_FIELD) :] for name in visit.form if name.startswith(MODEL_FIELD)]
    for model in models:
        if model not in served:
            raise InvalidRequest(visit.t("key_model_unknown", model=model), "models")
    expires = visit.form.get("expires", "")
    if expires and expires not in KEY_EXPIRIES:
        raise InvalidRequest("'expires' is not one of the choices.", "expires")
    now = visit.platform.clock.now_ms()
    return models or None, now + KEY_EXPIRIES[expires] if expires else None


@router.get("/orgs/{org}/keys")
@page
async def keys(request: Request, org: str) -> Response:
    visit = await _enter(request, org)
    revoked = request.query_params.get("revoked", "")
    return await _keys_page(visit, revoked=revoked if revoked.isalnum() else None)


@router.post("/orgs/{org}/keys")
@page
async def create_key(request: Request, org: str) -> Response:
    visit = await _enter(request, org)
    assert visit.org is not None and visit.user is not None
    budget_text = visit.form.get("budget", "").strip()
    try:  # the budget is checked before the key exists
        budget = BudgetLimit.parse({"limit": budget_text}) if budget_text else None
        models, expires_at_ms = _key_restriction(visit)
        issued = await visit.people().issue_key(
            visit.org, visit.form.get("name", ""), models=models, expires_at_ms=expires_at_ms
        )
    except InvalidRequest as exc:
        message = visit.t("budget_invalid") if exc.param == "limit" else exc.message
        return await _keys_page(visit, 400, error=message)
    if budget is not None:  # a monthly budget on the new key, as the admin API sets one
        billing = visit.platform.billing_admin(actor_of(visit.user))
        await billing.set_budget(f"key:{issued.key.id}", BudgetPeriod.MONTH.value, budget)
    return await _keys_page(visit, 201, new_token=issued.token)


@router.post("/orgs/{org}/keys/{key_id}/revoke")
@page
async def revoke_key(request: Request, org: str, key_id: str) -> Response:
    visit = await _enter(request, org)
    assert visit.org is not None
    await visit.people().revoke_key(visit.org, key_id)
    return visit.redirect(f"{PREFIX}/orgs/{visit.org.org_id}/keys?revoked={key_id}")


@dataclass(frozen=True)
class ModelRow:
    name: str
    kind: str
    context_length: int | None
    price: ModelPrice | None


@router.get("/orgs/{org}/models")
@page
async def models(request: Request, org: str) -> Response:
    visit = await _enter(request, org)
    assert visit.org is not None and visit.user is not None
    billing = visit.platform.billing_admin(actor_of(visit.user))
    currency = Currency((await visit.people().orgs.find(visit.org.org_id)).currency)
    now = visit.platform.clock.now_ms()
    current: dict[str, ModelPrice] = {}
    for price in await billing.list_prices():  # sorted by model, then effective_from
        if price.currency is currency and price.effective_from_ms <= now:
            current[price.model] = price
    catalog = app_state(request).catalog
    rows = [
        ModelRow(m.name, m.kind.value, m.context_length, current.get(m.name))
        for m in sorted(catalog.list(), key=lambda m: m.name)
    ]
    orgs = await visit.people().organizations(visit.user)
    return visit.render("models.html", page="models", models=rows, orgs=orgs)


@router.get("/orgs/{org}/balance")
@page
async def balance(request: Request, org: str) -> Response:
    visit = await _enter(request, org)
    assert visit.org is not None and visit.user is not None
    report = await visit.platform.billing_admin(actor_of(visit.user)).balance(visit.org.org_id)
    orgs = await visit.people().organizations(visit.user)
    return visit.render("balance.html", page="balance", balance=report, orgs=orgs)


# -- the platform's pages (operators) ------------------------------------------------------

AUDIT_SHOWN = 200  # the newest matching entries the audit page lists


@router.get("/audit")
@page
async def audit(request: Request) -> Response:
    """The audit log, newest first, filtered by action (a prefix: ``key.``) and actor."""
    visit = await _enter(request)
    assert visit.user is not None
    action = request.query_params.get("action", "").strip()[:60]
    actor = request.query_params.get("actor", "").strip()[:80]
    admin = visit.platform.billing_admin(actor_of(visit.user))
    shown = await admin.audit_log(AUDIT_SHOWN, action, actor)
    emails = {u.id: u.email for u in await visit.people().users.all()}
    rows = [
        (e, emails.get(e.actor.removeprefix("user:")) if e.actor.startswith("user:") else None)
        for e in shown
    ]
    return visit.render("audit.html", page="audit", rows=rows, action=action, actor=actor)


@router.get("/{rest:path}")
@page
async def nowhere(request: Request, rest: str) -> Response:
    """Any other console path: the console's own 404 page (registered last)."""
    await _enter(request)
    raise NotFound(f"No console page '{rest}'.")
