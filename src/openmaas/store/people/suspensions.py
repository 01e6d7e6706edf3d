"""Suspended organizations (migration 0013): a row while one is suspended."""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.store.people.schema import org_suspensions


async def suspended_orgs(engine: AsyncEngine) -> dict[str, int]:
    """Every suspended organization and since when."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(org_suspensions))
        return {r.org_id: r.suspended_at_ms for r in rows}


async def suspend(conn: AsyncConnection, org_id: str, now_ms: int) -> bool:
    """Suspend ``org_id`` in the caller's transaction: whether it was not already."""
    found = (
        await conn.execute(
            select(org_suspensions.c.org_id).where(org_suspensions.c.org_id == org_id)
        )
    ).first()
    if found is not None:
        return False
    await conn.execute(insert(org_suspensions).values(org_id=org_id, suspended_at_ms=now_ms))
    return True


async def resume(conn: AsyncConnection, org_id: str) -> bool:
    """Resume ``org_id``: whether it was suspended."""
    result = await conn.execute(delete(org_suspensions).where(org_suspensions.c.org_id == org_id))
    return bool(result.rowcount)
