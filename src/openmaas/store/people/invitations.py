"""Invitations to an organization (migration 0013): only the SHA-256 of each token is
stored; a token is good once, until it expires or is revoked."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.store.people.schema import invitations, users
from openmaas.store.schema import organizations


def invitation_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Invitation:
    id: str
    org_id: str
    org_name: str
    email: str
    role: str
    invited_by: str | None  # the inviter's email (None: not a person, or gone)
    created_at_ms: int
    expires_at_ms: int
    accepted_at_ms: int | None
    revoked_at_ms: int | None

    def open(self, now_ms: int) -> bool:
        """Whether the invitation may still be accepted."""
        return (
            self.accepted_at_ms is None
            and self.revoked_at_ms is None
            and now_ms < self.expires_at_ms
        )


def _query() -> Select[Any]:
    inviter = users.alias("inviter")
    return select(
        invitations.c.id,
        invitations.c.org_id,
        organizations.c.name.label("org_name"),
        invitations.c.email,
        invitations.c.role,
        inviter.c.email.label("inviter"),
        invitations.c.created_at_ms,
        invitations.c.expires_at_ms,
        invitations.c.accepted_at_ms,
        invitations.c.revoked_at_ms,
    ).select_from(
        invitations.join(organizations, organizations.c.id == invitations.c.org_id).outerjoin(
            inviter, inviter.c.id == invitations.c.invited_by
        )
    )


def _invitation(r: object) -> Invitation:
    m = r._mapping  # type: ignore[attr-defined]
    return Invitation(
        m["id"],
        m["org_id"],
        m["org_name"],
        m["email"],
        m["role"],
        m["inviter"],
        m["created_at_ms"],
        m["expires_at_ms"],
        m["accepted_at_ms"],
        m["revoked_at_ms"],
    )


async def insert_invitation(
    conn: AsyncConnection,
    token: str,
    org_id: str,
    email: str,
    role: str,
    invited_by: str | None,
    now_ms: int,
    expires_at_ms: int,
) -> str:
    """A new invitation in the caller's transaction; its id."""
    invitation_id = "inv_" + secrets.token_hex(8)
    await conn.execute(
        insert(invitations).values(
            id=invitation_id,
            token_hash=invitation_hash(token),
            org_id=org_id,
            email=email,
            role=role,
            invited_by=invited_by,
            created_at_ms=now_ms,
            expires_at_ms=expires_at_ms,
        )
    )
    return invitation_id


async def by_token(engine: AsyncEngine, token: str) -> Invitation | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(_query().where(invitations.c.token_hash == invitation_hash(token)))
        ).first()
    return None if row is None else _invitation(row)


async def org_invitations(engine: AsyncEngine, org_id: str) -> list[Invitation]:
    """The organization's invitations, newest first."""
    query = (
        _query()
        .where(invitations.c.org_id == org_id)
        .order_by(invitations.c.created_at_ms.desc(), invitations.c.id)
    )
    async with engine.connect() as conn:
        return [_invitation(r) for r in await conn.execute(query)]


async def use_invitation(
    conn: AsyncConnection, invitation_id: str, user_id: str, now_ms: int
) -> bool:
    """Mark it accepted, if it still may be (one use, even racing): whether it was."""
    result = await conn.execute(
        update(invitations)
        .where(
            (invitations.c.id == invitation_id)
            & invitations.c.accepted_at_ms.is_(None)
            & invitations.c.revoked_at_ms.is_(None)
            & (invitations.c.expires_at_ms > now_ms)
        )
        .values(accepted_at_ms=now_ms, accepted_by=user_id)
    )
    return bool(result.rowcount)


async def revoke_invitation(
    conn: AsyncConnection, org_id: str, invitation_id: str, now_ms: int
) -> bool:
    """Revoke an open invitation of ``org_id``: whether there was one."""
    result = await conn.execute(
        update(invitations)
        .where(
            (invitations.c.id == invitation_id)
            & (invitations.c.org_id == org_id)
            & invitations.c.accepted_at_ms.is_(None)
            & invitations.c.revoked_at_ms.is_(None)
        )
        .values(revoked_at_ms=now_ms)
    )
    return bool(result.rowcount)
