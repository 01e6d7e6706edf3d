"""Users and memberships: the only SQL about people and their roles."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.errors import InvalidRequest, NotFound
from openmaas.store.people.schema import memberships, users
from openmaas.store.schema import organizations


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    password_hash: str
    created_at_ms: int
    disabled_at_ms: int | None
    operator: bool

    @property
    def disabled(self) -> bool:
        return self.disabled_at_ms is not None


@dataclass(frozen=True, slots=True)
class Membership:
    user_id: str
    org_id: str
    org_name: str
    role: str


def normal_email(email: str) -> str:
    """Emails compare case-insensitively: stored and looked up in lower case."""
    return email.strip().lower()


def _user(row: object) -> User:
    m = row._mapping  # type: ignore[attr-defined]
    return User(
        m["id"],
        m["email"],
        m["password_hash"],
        m["created_at_ms"],
        m["disabled_at_ms"],
        bool(m["operator"]),
    )


async def insert_user(
    conn: AsyncConnection, email: str, password_hash: str, now_ms: int, *, operator: bool
) -> User:
    """A new user in the caller's transaction; a taken email is refused naming ``email``."""
    user = User(
        "usr_" + secrets.token_hex(8), normal_email(email), password_hash, now_ms, None, operator
    )
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(users).values(
                    id=user.id,
                    email=user.email,
                    password_hash=password_hash,
                    created_at_ms=now_ms,
                    operator=operator,
                )
            )
    except IntegrityError as exc:
        raise InvalidRequest(f"A user with email '{user.email}' already exists.", "email") from exc
    return user


async def set_password_hash(conn: AsyncConnection, user_id: str, password_hash: str) -> None:
    await conn.execute(
        update(users).where(users.c.id == user_id).values(password_hash=password_hash)
    )


async def upsert_membership(
    conn: AsyncConnection, user_id: str, org_id: str, role: str, now_ms: int
) -> str | None:
    """Give ``user_id`` ``role`` in ``org_id``; returns the role it had before (None: none)."""
    old = (
        await conn.execute(
            select(memberships.c.role).where(
                (memberships.c.user_id == user_id) & (memberships.c.org_id == org_id)
            )
        )
    ).scalar()
    if old is None:
        await conn.execute(
            insert(memberships).values(
                user_id=user_id, org_id=org_id, role=role, created_at_ms=now_ms
            )
        )
    elif old != role:
        await conn.execute(
            update(memberships)
            .where((memberships.c.user_id == user_id) & (memberships.c.org_id == org_id))
            .values(role=role)
        )
    return old


class UserRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def by_email(self, email: str) -> User | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(users).where(users.c.email == normal_email(email)))
            ).first()
        return None if row is None else _user(row)

    async def get(self, user_id: str) -> User | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        return None if row is None else _user(row)

    async def find(self, id_or_email: str) -> User:
        user = await self.get(id_or_email) or await self.by_email(id_or_email)
        if user is None:
            raise NotFound(f"No user with id or email '{id_or_email}'.")
        return user

    async def all(self) -> list[User]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(users).order_by(users.c.created_at_ms, users.c.id))
            return [_user(r) for r in rows]

    async def count(self) -> int:
        return len(await self.all())

    async def memberships(self, user_id: str | None = None) -> list[Membership]:
        """Every membership (of ``user_id`` only, when given), by organization name."""
        query = (
            select(memberships, organizations.c.name.label("org_name"))
            .join(organizations, organizations.c.id == memberships.c.org_id)
            .order_by(organizations.c.name)
        )
        if user_id is not None:
            query = query.where(memberships.c.user_id == user_id)
        async with self._engine.connect() as conn:
            return [
                Membership(r.user_id, r.org_id, r.org_name, r.role)
                for r in await conn.execute(query)
            ]
