"""Who created each API key, and an organization's keys as the console lists them."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.store.people.schema import key_creators, users
from openmaas.store.rollups.roller import unfolded
from openmaas.store.rollups.schema import key_last_use
from openmaas.store.schema import api_keys, usage_records


@dataclass(frozen=True, slots=True)
class KeyListing:
    id: str
    name: str
    role: str
    created_at_ms: int
    revoked_at_ms: int | None
    creator: str | None  # the creator's email; None: made by the CLI or an admin key
    last_used_ms: int | None
    models: tuple[str, ...] | None = None  # the only models it may use; None: every model
    expires_at_ms: int | None = None


async def record_creator(conn: AsyncConnection, key_id: str, user_id: str) -> None:
    await conn.execute(insert(key_creators).values(key_id=key_id, user_id=user_id))


async def list_org_keys(engine: AsyncEngine, org_id: str) -> list[KeyListing]:
    """The organization's keys, newest first, with creator and last use: the usage roller's
    ``key_last_use`` for the records it folded, and the organization's records past its
    watermark (seconds' worth), read in one statement, so never a scan of a year."""
    u = usage_records.c
    recent = (
        select(u.key_id, func.max(u.started_at_ms).label("last"))
        .where(u.org_id == org_id, unfolded(engine.dialect.name == "postgresql"))
        .group_by(u.key_id)
        .subquery()
    )
    query = (
        select(
            api_keys.c.id,
            api_keys.c.name,
            api_keys.c.role,
            api_keys.c.created_at_ms,
            api_keys.c.revoked_at_ms,
            api_keys.c.models,
            api_keys.c.expires_at_ms,
            users.c.email,
            key_last_use.c.last_at_ms,
            recent.c.last,
        )
        .select_from(
            api_keys.outerjoin(key_creators, key_creators.c.key_id == api_keys.c.id)
            .outerjoin(users, users.c.id == key_creators.c.user_id)
            .outerjoin(key_last_use, key_last_use.c.key_id == api_keys.c.id)
            .outerjoin(recent, recent.c.key_id == api_keys.c.id)
        )
        .where(api_keys.c.org_id == org_id)
        .order_by(api_keys.c.created_at_ms.desc(), api_keys.c.id)
    )
    async with engine.connect() as conn:
        return [
            KeyListing(
                r.id,
                r.name,
                r.role,
                r.created_at_ms,
                r.revoked_at_ms,
                r.email,
                max(r.last_at_ms or 0, r.last or 0) or None,
                None if r.models is None else tuple(orjson.loads(r.models)),
                r.expires_at_ms,
            )
            for r in await conn.execute(query)
        ]


async def live_keys_named(engine: AsyncEngine, user_id: str, name: str) -> list[str]:
    """The ids of the keys ``user_id`` created under ``name`` that are not revoked."""
    query = (
        select(api_keys.c.id)
        .select_from(api_keys.join(key_creators, key_creators.c.key_id == api_keys.c.id))
        .where(
            key_creators.c.user_id == user_id,
            api_keys.c.name == name,
            api_keys.c.revoked_at_ms.is_(None),
        )
    )
    async with engine.connect() as conn:
        return [r.id for r in await conn.execute(query)]
