"""The admin HTTP API for people (``/admin/v1/...``, admin keys): an organization's members
and invitations, and users' platform roles. What the console's members and users pages do,
without a back door: both call ``accounts/people_roles.py``, whose rules answer here too
(the last owner stays; an admin key acts as an operator: as owner). Changes are audited as
``key:<admin key id>``.

Errors as the rest of the admin API: 401 without a key, 403 for a member key, 400 naming
the field (the last owner, a role that is not one), 404 for an unknown organization, member,
invitation or user.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from openmaas.accounts.people import OrgRole
from openmaas.accounts.people_roles import (
    InvitationRequest,
    MemberRoleChange,
    PeopleRoles,
    invitation_status,
)
from openmaas.core.admin_fields import AdminBody, iso_ms
from openmaas.server.console.people import invitation_link
from openmaas.server.responses import json_response
from openmaas.server.routes.admin import _actor, _body
from openmaas.server.routes.openapi import json_body
from openmaas.server.state import app_state
from openmaas.store.people.invitations import Invitation
from openmaas.store.people.members import Member
from openmaas.store.people.users import Membership, User

router = APIRouter(prefix="/admin/v1", tags=["Admin: people"])
BODY_MODELS: list[type[AdminBody]] = [MemberRoleChange, InvitationRequest]


async def _roles(request: Request) -> PeopleRoles:
    state = app_state(request)
    return PeopleRoles(
        state.platform.changes(await _actor(request, state)),
        state.platform.clock,
        invitation_hours=state.platform.settings.console_invitation_hours,
    )


def member_json(m: Member) -> dict[str, Any]:
    return {
        "user_id": m.user_id,
        "email": m.email,
        "role": m.role,
        "since": iso_ms(m.since_ms),
        "disabled": m.disabled,
    }


def invitation_json(i: Invitation, now_ms: int) -> dict[str, Any]:
    def moment(ms: int | None) -> str | None:
        return None if ms is None else iso_ms(ms)

    return {
        "id": i.id,
        "org": i.org_id,
        "email": i.email,
        "role": i.role,
        "status": invitation_status(i, now_ms),
        "invited_by": i.invited_by,
        "created_at": iso_ms(i.created_at_ms),
        "expires_at": iso_ms(i.expires_at_ms),
        "accepted_at": moment(i.accepted_at_ms),
        "revoked_at": moment(i.revoked_at_ms),
    }


def user_json(u: User, memberships: list[Membership]) -> dict[str, Any]:
    return {
        "id": u.id,
        "email": u.email,
        "operator": u.operator,
        "disabled": u.disabled,
        "created_at": iso_ms(u.created_at_ms),
        "disabled_at": None if u.disabled_at_ms is None else iso_ms(u.disabled_at_ms),
        "memberships": [
            {"org": m.org_id, "org_name": m.org_name, "role": m.role}
            for m in memberships
            if m.user_id == u.id
        ],
    }


# -- members ------------------------------------------------------------------------------


@router.get("/orgs/{org}/members", summary="An organization's members and their roles")
async def list_members(request: Request, org: str) -> Response:
    service = await _roles(request)
    found = await service.members(await service.platform_access(org))
    return json_response({"object": "list", "data": [member_json(m) for m in found]})


@router.patch(
    "/orgs/{org}/members/{user_id}",
    summary="Change a member's role (an organization keeps at least one owner)",
    openapi_extra=json_body(MemberRoleChange),
)
async def set_member_role(request: Request, org: str, user_id: str) -> Response:
    service = await _roles(request)
    access = await service.platform_access(org)
    role = OrgRole.parse((await _body(request, MemberRoleChange)).role)
    await service.set_role(access, user_id, role)
    return json_response({"user_id": user_id, "org": access.org_id, "role": role.label})


@router.delete(
    "/orgs/{org}/members/{user_id}",
    summary="Remove a member (the last owner stays)",
    status_code=204,
)
async def remove_member(request: Request, org: str, user_id: str) -> Response:
    service = await _roles(request)
    await service.remove(await service.platform_access(org), user_id)
    return Response(status_code=204)


# -- invitations --------------------------------------------------------------------------


@router.get(
    "/orgs/{org}/invitations",
    summary="An organization's invitations: open, accepted, revoked and expired",
)
async def list_invitations(request: Request, org: str) -> Response:
    service = await _roles(request)
    found = await service.invitations(await service.platform_access(org))
    now = app_state(request).platform.clock.now_ms()
    return json_response({"object": "list", "data": [invitation_json(i, now) for i in found]})


@router.post(
    "/orgs/{org}/invitations",
    summary="Invite a person by email; the token and its link ('token', 'link') are shown once",
    status_code=201,
    openapi_extra=json_body(InvitationRequest),
)
async def create_invitation(request: Request, org: str) -> Response:
    service = await _roles(request)
    access = await service.platform_access(org)
    body = await _body(request, InvitationRequest)
    made = await service.invite(access, body.email, OrgRole.parse(body.role))
    now = app_state(request).platform.clock.now_ms()
    [found] = [i for i in await service.invitations(access) if i.id == made.id]
    shown = {"token": made.token, "link": invitation_link(request, made.token)}
    return json_response({**invitation_json(found, now), **shown}, 201)


@router.delete(
    "/orgs/{org}/invitations/{invitation_id}",
    summary="Revoke an open invitation",
    status_code=204,
)
async def revoke_invitation(request: Request, org: str, invitation_id: str) -> Response:
    service = await _roles(request)
    await service.revoke_invitation(await service.platform_access(org), invitation_id)
    return Response(status_code=204)


# -- users --------------------------------------------------------------------------------


@router.get("/users", summary="Users: their platform role, whether disabled, their memberships")
async def list_users(request: Request) -> Response:
    service = await _roles(request)
    memberships = await service.users.memberships()
    data = [user_json(u, memberships) for u in await service.users.all()]
    return json_response({"object": "list", "data": data})


@router.put("/users/{user_id}/operator", summary="Make a user an operator", status_code=204)
async def make_operator(request: Request, user_id: str) -> Response:
    await (await _roles(request)).set_operator(None, user_id, True)
    return Response(status_code=204)


@router.delete(
    "/users/{user_id}/operator", summary="Take a user's operator role away", status_code=204
)
async def unmake_operator(request: Request, user_id: str) -> Response:
    await (await _roles(request)).set_operator(None, user_id, False)
    return Response(status_code=204)


@router.put(
    "/users/{user_id}/disabled",
    summary="Disable a user: their sessions end, they cannot sign in",
    status_code=204,
)
async def disable_user(request: Request, user_id: str) -> Response:
    await (await _roles(request)).set_disabled(None, user_id, True)
    return Response(status_code=204)


@router.delete("/users/{user_id}/disabled", summary="Enable a disabled user", status_code=204)
async def enable_user(request: Request, user_id: str) -> Response:
    await (await _roles(request)).set_disabled(None, user_id, False)
    return Response(status_code=204)
