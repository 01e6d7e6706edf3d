"""Console sessions (only a hash of each token is stored) and failed sign-ins counted per
account and per client address."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.store.people.schema import console_sessions, sign_in_failures


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredSession:
    token_hash: str
    user_id: str
    csrf_token: str
    created_at_ms: int
    last_seen_ms: int
    expires_at_ms: int
    revoked_at_ms: int | None


@dataclass(frozen=True, slots=True)
class Failures:
    failures: int
    first_at_ms: int
    locked_until_ms: int | None


class SessionRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, token: str, user_id: str, csrf_token: str, now_ms: int, expires_at_ms: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(console_sessions).values(
                    token_hash=token_hash(token),
                    user_id=user_id,
                    csrf_token=csrf_token,
                    created_at_ms=now_ms,
                    last_seen_ms=now_ms,
                    expires_at_ms=expires_at_ms,
                )
            )

    async def get(self, token: str) -> StoredSession | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(console_sessions).where(
                        console_sessions.c.token_hash == token_hash(token)
                    )
                )
            ).first()
        return None if row is None else StoredSession(**row._mapping)

    async def seen(self, token: str, now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(console_sessions)
                .where(console_sessions.c.token_hash == token_hash(token))
                .values(last_seen_ms=now_ms)
            )

    async def revoke(self, token: str, now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(console_sessions)
                .where(
                    (console_sessions.c.token_hash == token_hash(token))
                    & console_sessions.c.revoked_at_ms.is_(None)
                )
                .values(revoked_at_ms=now_ms)
            )


async def revoke_user_sessions(conn: object, user_id: str, now_ms: int) -> None:
    """Revoke every live session of ``user_id`` in the caller's transaction."""
    await conn.execute(  # type: ignore[attr-defined]
        update(console_sessions)
        .where((console_sessions.c.user_id == user_id) & console_sessions.c.revoked_at_ms.is_(None))
        .values(revoked_at_ms=now_ms)
    )


class FailureRepository:
    """Failed sign-ins per scope (``account:<email>``, ``address:<ip>``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, scope: str) -> Failures | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(sign_in_failures).where(sign_in_failures.c.scope == scope)
                )
            ).first()
        return None if row is None else Failures(row.failures, row.first_at_ms, row.locked_until_ms)

    async def put(self, scope: str, failures: Failures) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(sign_in_failures).where(sign_in_failures.c.scope == scope))
            await conn.execute(
                insert(sign_in_failures).values(
                    scope=scope,
                    failures=failures.failures,
                    first_at_ms=failures.first_at_ms,
                    locked_until_ms=failures.locked_until_ms,
                )
            )

    async def clear(self, scope: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(sign_in_failures).where(sign_in_failures.c.scope == scope))
