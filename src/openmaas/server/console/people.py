"""The console's members and invitations: an organization's owners and admins list its
members, change their roles, remove them and invite people by email
(``/console/orgs/{org}/members``); whoever has an invitation's link
(``/console/invitation?token=...``) accepts it signed in with the invited email, or signs
up through it (even when open sign-up is off).

The rules live in ``accounts/people_roles.py`` (the last owner stays, only an owner
touches owners, a token is good once until it expires); this module renders them, and
every change is audited with the person as the actor.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from openmaas.accounts.people import OrgRole
from openmaas.accounts.people_roles import InvitationClosed, NewInvitation
from openmaas.core.errors import InvalidRequest, NotFound, PermissionDenied
from openmaas.server.console.ops import roles
from openmaas.server.console.pages import (
    PREFIX,
    SESSION_COOKIE,
    Visit,
    enter,
    page,
    set_cookie,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)
ROLES = [r.label for r in sorted(OrgRole, reverse=True)]


def invitation_link(request: Request, token: str) -> str:
    """The link to hand the invited person (this server's address, as the browser used it).
    The token rides in the query, never the path: the access log writes paths."""
    return f"{str(request.base_url).rstrip('/')}{PREFIX}/invitation?token={token}"


async def _members_page(
    visit: Visit, status: int = 200, invited: NewInvitation | None = None, **values: Any
) -> Response:
    assert visit.org is not None and visit.user is not None
    service = roles(visit)
    now = visit.platform.clock.now_ms()
    invitations = [i for i in await service.invitations(visit.org) if i.open(now)]
    return visit.render(
        "members.html",
        status,
        page="members",
        members=await service.members(visit.org),
        invitations=invitations,
        roles=ROLES,
        givable=[r for r in ROLES if OrgRole.parse(r) <= visit.org.role],
        orgs=await visit.people().organizations(visit.user),
        link=None if invited is None else invitation_link(visit.request, invited.token),
        **values,
    )


@router.get("/orgs/{org}/members")
@page
async def members(request: Request, org: str) -> Response:
    visit = await enter(request, org)
    return await _members_page(visit)


@router.post("/orgs/{org}/members/invite")
@page
async def invite(request: Request, org: str) -> Response:
    visit = await enter(request, org)
    assert visit.org is not None
    try:
        role = OrgRole.parse(visit.form.get("role", ""))
        made = await roles(visit).invite(visit.org, visit.form.get("email", ""), role)
    except InvalidRequest as exc:
        return await _members_page(visit, 400, error=exc.message)
    except PermissionDenied as exc:
        return await _members_page(visit, 403, error=exc.message)
    return await _members_page(visit, 201, invited=made)


@router.post("/orgs/{org}/members/{user_id}/role")
@page
async def set_role(request: Request, org: str, user_id: str) -> Response:
    visit = await enter(request, org)
    assert visit.org is not None
    try:
        role = OrgRole.parse(visit.form.get("role", ""))
        await roles(visit).set_role(visit.org, user_id, role)
    except (InvalidRequest, NotFound) as exc:
        return await _members_page(visit, 400, error=exc.message)
    except PermissionDenied as exc:
        return await _members_page(visit, 403, error=exc.message)
    return visit.redirect(f"{PREFIX}/orgs/{visit.org.org_id}/members")


@router.post("/orgs/{org}/members/{user_id}/remove")
@page
async def remove(request: Request, org: str, user_id: str) -> Response:
    visit = await enter(request, org)
    assert visit.org is not None and visit.user is not None
    try:
        await roles(visit).remove(visit.org, user_id)
    except (InvalidRequest, NotFound) as exc:
        return await _members_page(visit, 400, error=exc.message)
    except PermissionDenied as exc:
        return await _members_page(visit, 403, error=exc.message)
    if user_id == visit.user.id and not visit.user.operator:  # left it: nothing to see there
        return visit.redirect(PREFIX)
    return visit.redirect(f"{PREFIX}/orgs/{visit.org.org_id}/members")


@router.post("/orgs/{org}/invitations/{invitation_id}/revoke")
@page
async def revoke_invitation(request: Request, org: str, invitation_id: str) -> Response:
    visit = await enter(request, org)
    assert visit.org is not None
    try:
        await roles(visit).revoke_invitation(visit.org, invitation_id)
    except NotFound as exc:
        return await _members_page(visit, 400, error=exc.message)
    return visit.redirect(f"{PREFIX}/orgs/{visit.org.org_id}/members")


# -- accepting an invitation ------------------------------------------------------------------


async def _invitation_page(visit: Visit, token: str, status: int = 200, **values: Any) -> Response:
    try:
        found = await roles(visit).invitation(token)
    except InvitationClosed:
        return visit.render("invitation.html", 404, closed=True)
    return visit.render("invitation.html", status, invitation=found, token=token, **values)


@router.get("/invitation")
@page
async def invitation(request: Request) -> Response:
    visit = await enter(request)
    return await _invitation_page(visit, request.query_params.get("token", "")[:100])


@router.post("/invitation/accept")
@page
async def accept(request: Request) -> Response:
    """Signed in with the invited email: join the organization."""
    visit = await enter(request)
    assert visit.user is not None
    token = visit.form.get("token", "")[:100]
    try:
        found = await roles(visit).accept(token, visit.user)
    except InvitationClosed:
        return visit.render("invitation.html", 400, closed=True)
    except PermissionDenied:
        return await _invitation_page(visit, token, 403, error=visit.t("invite_other_email"))
    return visit.redirect(f"{PREFIX}/orgs/{found.org_id}/keys")


@router.post("/invitation/sign-up")
@page
async def sign_up(request: Request) -> Response:
    """A new account with the invited email, in the organization, signed in."""
    visit = await enter(request)
    token = visit.form.get("token", "")[:100]
    password = visit.form.get("password", "")
    if password != visit.form.get("password2"):
        return await _invitation_page(visit, token, 400, error=visit.t("passwords_differ"))
    service = roles(visit)
    try:
        found = await service.invitation(token)
        user = await service.sign_up(token, password, visit.people())
    except InvitationClosed:
        return visit.render("invitation.html", 400, closed=True)
    except InvalidRequest as exc:
        return await _invitation_page(visit, token, 400, error=exc.message)
    address = request.client.host if request.client else "unknown"
    session = await visit.sign_in().sign_in(user.email, password, address)
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # whatever session the browser brought ends (no fixation)
        await visit.sign_in().sign_out(old)
    response = visit.redirect(f"{PREFIX}/orgs/{found.org_id}/keys")
    set_cookie(request, response, SESSION_COOKIE, session.token)
    return response
