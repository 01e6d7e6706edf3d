"""An organization's members, and the flags an operator sets on a user: the SQL of
``accounts/people_roles.py``. Each writer runs in the caller's transaction (the unit of
work that also writes the audit row)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.store.people.schema import memberships, users


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    email: str
    role: str
    since_ms: int
    disabled: bool


async def list_members(engine: AsyncEngine, org_id: str) -> list[Member]:
    """The organization's members, by email."""
    query = (
        select(
            memberships.c.user_id,
            users.c.email,
            memberships.c.role,
            memberships.c.created_at_ms,
            users.c.disabled_at_ms,
        )
        .join(users, users.c.id == memberships.c.user_id)
        .where(memberships.c.org_id == org_id)
        .order_by(users.c.email)
    )
    async with engine.connect() as conn:
        return [
            Member(r.user_id, r.email, r.role, r.created_at_ms, r.disabled_at_ms is not None)
            for r in await conn.execute(query)
        ]


async def member_role(conn: AsyncConnection, org_id: str, user_id: str) -> str | None:
    return (
        await conn.execute(
            select(memberships.c.role).where(
                (memberships.c.org_id == org_id) & (memberships.c.user_id == user_id)
            )
        )
    ).scalar()


async def count_owners(conn: AsyncConnection, org_id: str) -> int:
    return int(
        (
            await conn.execute(
                select(func.count())
                .select_from(memberships)
                .where((memberships.c.org_id == org_id) & (memberships.c.role == "owner"))
            )
        ).scalar_one()
    )


async def set_member_role(conn: AsyncConnection, org_id: str, user_id: str, role: str) -> None:
    await conn.execute(
        update(memberships)
        .where((memberships.c.org_id == org_id) & (memberships.c.user_id == user_id))
        .values(role=role)
    )


async def delete_member(conn: AsyncConnection, org_id: str, user_id: str) -> None:
    await conn.execute(
        delete(memberships).where(
            (memberships.c.org_id == org_id) & (memberships.c.user_id == user_id)
        )
    )


async def set_operator(conn: AsyncConnection, user_id: str, operator: bool) -> None:
    await conn.execute(update(users).where(users.c.id == user_id).values(operator=operator))


async def set_disabled(conn: AsyncConnection, user_id: str, disabled_at_ms: int | None) -> None:
    await conn.execute(
        update(users).where(users.c.id == user_id).values(disabled_at_ms=disabled_at_ms)
    )
