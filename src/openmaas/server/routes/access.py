"""The one access policy: for every route the application serves, who may call it.

Routes authenticate the caller themselves (``common.authenticate``; the admin routes also
require an admin key); this table states the same thing in one place, so that it can be
read, documented (each operation's 401/403 in ``/openapi.json``) and checked: the
route × role × tenant matrix in ``tests/security`` calls every served route with every kind
of key and fails on a route that is missing here or answers otherwise.

Every key belongs to one organization and sees only that organization's data (its usage,
stored responses, async jobs): a resource of another organization answers 404, as one that
does not exist.

The console's routes (``/console``) take no key: a person's session. They are in ``POLICY``
as ``CONSOLE``, and ``CONSOLE_ROLES`` says who may call each: anyone, anyone signed in, or
at least a role in the organization its ``{org}`` names (an operator: every organization,
as owner). ``server/console/pages.py`` checks each request against this table, and a test
fails when a served console route is missing from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount


class Access(Enum):
    PUBLIC = "public"  # no key needed; nothing of an organization is shown
    KEY = "key"  # any valid key (member or admin); it sees its own organization only
    ADMIN = "admin"  # an admin key (a member key: 403)
    CONSOLE = "console"  # a person's console session, by CONSOLE_ROLES (keys are not read)
    METRICS = "metrics"  # the metrics token (OPENMAAS_METRICS_TOKEN; keys are not read)


class ConsoleAccess(Enum):
    """Who may call a console route; the roles in an organization from least to most."""

    PUBLIC = "public"  # anyone (signing in, the language, static files)
    SIGNED_IN = "signed-in"  # anyone with a session (their own password, their organizations)
    VIEWER = "viewer"  # at least viewer in the path's {org}: reads
    MEMBER = "member"  # at least member there: creates and revokes keys
    ADMIN = "admin"
    OWNER = "owner"
    OPERATOR = "operator"  # an operator only: the platform's pages


_PUBLIC = Access.PUBLIC
_KEY = Access.KEY
_ADMIN = Access.ADMIN

CONSOLE_ROLES: dict[str, ConsoleAccess] = {
    "GET /console": ConsoleAccess.PUBLIC,  # the organization list, or the sign-in page
    "GET /console/sign-in": ConsoleAccess.PUBLIC,
    "POST /console/sign-in": ConsoleAccess.PUBLIC,
    "GET /console/sign-up": ConsoleAccess.PUBLIC,  # 404 unless OPENMAAS_CONSOLE_SIGNUP
    "POST /console/sign-up": ConsoleAccess.PUBLIC,
    "POST /console/language": ConsoleAccess.PUBLIC,
    "GET /console/static/{path:path}": ConsoleAccess.PUBLIC,
    "HEAD /console/static/{path:path}": ConsoleAccess.PUBLIC,
    "POST /console/sign-out": ConsoleAccess.SIGNED_IN,
    "GET /console/password": ConsoleAccess.SIGNED_IN,
    "POST /console/password": ConsoleAccess.SIGNED_IN,
    "GET /console/orgs": ConsoleAccess.SIGNED_IN,
    "GET /console/orgs/{org}/keys": ConsoleAccess.VIEWER,
    "POST /console/orgs/{org}/keys": ConsoleAccess.MEMBER,
    "POST /console/orgs/{org}/keys/{key_id}/revoke": ConsoleAccess.MEMBER,
    "GET /console/orgs/{org}/models": ConsoleAccess.VIEWER,
    "GET /console/orgs/{org}/balance": ConsoleAccess.VIEWER,
    # usage and billing (console/usage.py)
    "GET /console/orgs/{org}/usage": ConsoleAccess.VIEWER,
    "GET /console/orgs/{org}/usage.csv": ConsoleAccess.VIEWER,
    "GET /console/orgs/{org}/billing": ConsoleAccess.VIEWER,
    "GET /console/audit": ConsoleAccess.OPERATOR,
    # the playground and the SDK page (console/play.py); the playground spends: members
    "GET /console/orgs/{org}/playground": ConsoleAccess.MEMBER,
    "POST /console/orgs/{org}/playground/key": ConsoleAccess.MEMBER,
    "GET /console/orgs/{org}/sdk": ConsoleAccess.VIEWER,
    # members and invitations (console/people.py)
    "GET /console/orgs/{org}/members": ConsoleAccess.ADMIN,
    "POST /console/orgs/{org}/members/invite": ConsoleAccess.ADMIN,
    "POST /console/orgs/{org}/members/{user_id}/role": ConsoleAccess.ADMIN,
    "POST /console/orgs/{org}/members/{user_id}/remove": ConsoleAccess.ADMIN,
    "POST /console/orgs/{org}/invitations/{invitation_id}/revoke": ConsoleAccess.ADMIN,
    "GET /console/invitation": ConsoleAccess.PUBLIC,  # ?token=: the token is the permission
    "POST /console/invitation/sign-up": ConsoleAccess.PUBLIC,
    "POST /console/invitation/accept": ConsoleAccess.SIGNED_IN,
    # the platform's pages (console/ops.py)
    **dict.fromkeys(
        (
            "GET /console/operator",  # the platform overview (console/overview.py)
            "GET /console/operator/orgs",
            "POST /console/operator/orgs",
            "GET /console/operator/orgs/{org}",
            "POST /console/operator/orgs/{org}/terms",
            "POST /console/operator/orgs/{org}/topup",
            "POST /console/operator/orgs/{org}/packs",
            "POST /console/operator/orgs/{org}/suspension",
            "GET /console/operator/models",
            "GET /console/operator/catalog",
            "POST /console/operator/catalog",
            "GET /console/operator/prices",
            "POST /console/operator/prices",
            "GET /console/operator/users",
            "POST /console/operator/users/{user_id}/operator",
            "POST /console/operator/users/{user_id}/disabled",
        ),
        ConsoleAccess.OPERATOR,
    ),
    "GET /console/{rest:path}": ConsoleAccess.PUBLIC,  # any other path: the console's 404
}

POLICY: dict[str, Access] = {
    # the base URL, health and the API's own documentation
    "HEAD /": _PUBLIC,
    "GET /healthz": _PUBLIC,
    "GET /readyz": _PUBLIC,
    "GET /metrics": Access.METRICS,  # 404 while no metrics token is set
    "GET /openapi.json": _PUBLIC,
    "HEAD /openapi.json": _PUBLIC,
    "GET /docs": _PUBLIC,
    "HEAD /docs": _PUBLIC,
    "GET /docs/oauth2-redirect": _PUBLIC,
    "HEAD /docs/oauth2-redirect": _PUBLIC,
    "GET /redoc": _PUBLIC,
    "HEAD /redoc": _PUBLIC,
    "GET /docs-assets/{path:path}": _PUBLIC,
    "HEAD /docs-assets/{path:path}": _PUBLIC,
    # OpenAI-compatible
    "POST /v1/chat/completions": _KEY,
    "POST /v1/completions": _KEY,
    "POST /v1/embeddings": _KEY,
    "GET /v1/models": _KEY,
    "GET /v1/models/{model_id:path}": _KEY,
    "POST /v1/responses": _KEY,
    "GET /v1/responses/{response_id}": _KEY,
    "DELETE /v1/responses/{response_id}": _KEY,
    "GET /v1/usage": _KEY,
    # Anthropic-compatible
    "POST /v1/messages": _KEY,
    "POST /v1/messages/count_tokens": _KEY,
    # Zhipu-compatible
    "POST /api/paas/v4/chat/completions": _KEY,
    "POST /api/paas/v4/async/chat/completions": _KEY,
    "GET /api/paas/v4/async-result/{job_id}": _KEY,
    "POST /api/paas/v4/embeddings": _KEY,
    "GET /api/paas/v4/models": _KEY,
    # the admin API
    "GET /admin/v1/orgs": _ADMIN,
    "POST /admin/v1/orgs": _ADMIN,
    "PATCH /admin/v1/orgs/{org}": _ADMIN,
    "POST /admin/v1/orgs/{org}/topups": _ADMIN,
    "PUT /admin/v1/orgs/{org}/suspension": _ADMIN,
    "DELETE /admin/v1/orgs/{org}/suspension": _ADMIN,
    "POST /admin/v1/orgs/{org}/promotions": _ADMIN,
    "GET /admin/v1/orgs/{org}/balance": _ADMIN,
    "GET /admin/v1/orgs/{org}/packs": _ADMIN,
    "POST /admin/v1/orgs/{org}/packs": _ADMIN,
    "GET /admin/v1/orgs/{org}/usage": _ADMIN,
    "GET /admin/v1/orgs/{org}/statement": _ADMIN,
    "GET /admin/v1/orgs/{org}/keys": _ADMIN,
    "POST /admin/v1/orgs/{org}/keys": _ADMIN,
    "PUT /admin/v1/budgets/{scope}/{period}": _ADMIN,
    "DELETE /admin/v1/budgets/{scope}/{period}": _ADMIN,
    "PATCH /admin/v1/keys/{key_id}": _ADMIN,
    "GET /admin/v1/prices": _ADMIN,
    "POST /admin/v1/prices": _ADMIN,
    "GET /admin/v1/tiers": _ADMIN,
    "PUT /admin/v1/tiers/{name}": _ADMIN,
    "GET /admin/v1/audit": _ADMIN,
    "GET /admin/v1/usage": _ADMIN,  # the platform's, as the console's overview
    "GET /admin/v1/catalog": _ADMIN,
    "PUT /admin/v1/catalog": _ADMIN,
    "GET /admin/v1/models": _ADMIN,
    "GET /admin/v1/credentials": _ADMIN,
    "PUT /admin/v1/credentials/{name}": _ADMIN,
    "DELETE /admin/v1/credentials/{name}": _ADMIN,
    # the admin API for people (admin_people.py): what the console's people pages do
    "GET /admin/v1/orgs/{org}/members": _ADMIN,
    "PATCH /admin/v1/orgs/{org}/members/{user_id}": _ADMIN,
    "DELETE /admin/v1/orgs/{org}/members/{user_id}": _ADMIN,
    "GET /admin/v1/orgs/{org}/invitations": _ADMIN,
    "POST /admin/v1/orgs/{org}/invitations": _ADMIN,
    "DELETE /admin/v1/orgs/{org}/invitations/{invitation_id}": _ADMIN,
    "GET /admin/v1/users": _ADMIN,
    "PUT /admin/v1/users/{user_id}/operator": _ADMIN,
    "DELETE /admin/v1/users/{user_id}/operator": _ADMIN,
    "PUT /admin/v1/users/{user_id}/disabled": _ADMIN,
    "DELETE /admin/v1/users/{user_id}/disabled": _ADMIN,
    # the console: sessions, not keys (CONSOLE_ROLES)
    **dict.fromkeys(CONSOLE_ROLES, Access.CONSOLE),
}


def served_routes(app: FastAPI) -> Iterator[str]:
    """Every ``"METHOD path"`` the application answers, as ``POLICY`` names them (a mounted
    folder of static files as ``<mount>/{path:path}``)."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            for method in ("GET", "HEAD"):
                yield f"{method} {route.path}/{{path:path}}"
            continue
        for method in sorted(route.methods or ()):
            yield f"{method} {route.path}"


def access(method: str, path: str) -> Access:
    """Who may call ``method path`` (a route's path as declared, e.g. ``/v1/responses/{id}``);
    a route missing from the policy is a programming error."""
    return POLICY[f"{method.upper()} {path}"]
