"""Signing in to the console: a password checked against its argon2id hash, failed
attempts counted per account and per client address (a lockout with a clear message), and
sessions whose token lives only in the browser's cookie (the database keeps its SHA-256).

A session ends at its absolute expiry, after ``idle`` without a request, when its user
signs out, changes their password, or is disabled. Each sign-in makes a new session (a
token the browser brought before is never kept: no fixation).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.people import password_hasher, verify_password
from openmaas.core.clock import Clock
from openmaas.core.errors import AuthenticationFailed
from openmaas.store.people.sessions import FailureRepository, Failures, SessionRepository
from openmaas.store.people.users import User, UserRepository, normal_email

SEEN_EVERY_MS = 60_000  # last_seen is written at most once a minute per session
_DUMMY_HASH = (  # verified when the email is unknown, so both cost the same time
    "$argon2id$v=19$m=65536,t=3,p=4$tKTRj3KJ0FMQJ7oxM9mw7g$"
    "QFdGyv740xXHLf3Z9FedTN0pQZsPB0+c782uzLHsiPg"
)


class SignInRefused(AuthenticationFailed):
    """Wrong email or password (one message for both: no account enumeration)."""


class LockedOut(AuthenticationFailed):
    """Too many failed sign-ins for the account or from the address."""

    def __init__(self, minutes: int) -> None:
        super().__init__(
            f"Too many failed sign-ins. Try again in {minutes} minute"
            f"{'s' if minutes != 1 else ''}, or ask an operator to reset your password."
        )
        self.minutes = minutes


@dataclass(frozen=True, slots=True)
class SignInPolicy:
    max_failures: int = 5  # per account within the window, then locked
    max_address_failures: int = 20  # per client address within the window, then locked
    window_ms: int = 15 * 60_000
    lockout_ms: int = 15 * 60_000
    idle_ms: int = 12 * 3_600_000
    lifetime_ms: int = 7 * 86_400_000


@dataclass(frozen=True, slots=True)
class Session:
    token: str  # the cookie's value, never stored
    user: User
    csrf_token: str


class SignIn:
    """Sign-in, sessions and sign-out on one database."""

    def __init__(self, database: AsyncEngine, clock: Clock, policy: SignInPolicy) -> None:
        self.users = UserRepository(database)
        self.sessions = SessionRepository(database)
        self.failures = FailureRepository(database)
        self._clock = clock
        self.policy = policy
        self._hasher = password_hasher()

    async def sign_in(self, email: str, password: str, address: str) -> Session:
        now = self._clock.now_ms()
        scopes = (
            (f"account:{normal_email(email)[:300]}", self.policy.max_failures),
            (f"address:{address[:60]}", self.policy.max_address_failures),
        )
        for scope, _limit in scopes:
            await self._refuse_if_locked(scope, now)
        user = await self.users.by_email(email)
        ok = verify_password(self._hasher, user.password_hash if user else _DUMMY_HASH, password)
        if user is None or not ok or user.disabled:
            locked = [await self._fail(scope, limit, now) for scope, limit in scopes]
            if any(locked):
                raise LockedOut(max(1, self.policy.lockout_ms // 60_000))
            raise SignInRefused("The email or the password is not right.")
        await self.failures.clear(scopes[0][0])
        return await self._open(user, now)

    async def _refuse_if_locked(self, scope: str, now: int) -> None:
        failures = await self.failures.get(scope)
        if failures and failures.locked_until_ms is not None and failures.locked_until_ms > now:
            raise LockedOut(max(1, -(-(failures.locked_until_ms - now) // 60_000)))

    async def _fail(self, scope: str, limit: int, now: int) -> bool:
        """Count one failure of ``scope``; True: it is locked now."""
        old = await self.failures.get(scope)
        if old is None or now - old.first_at_ms > self.policy.window_ms:
            old = Failures(0, now, None)
        count = old.failures + 1
        locked = now + self.policy.lockout_ms if count >= limit else None
        await self.failures.put(scope, Failures(count, old.first_at_ms, locked))
        return locked is not None

    async def _open(self, user: User, now: int) -> Session:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        await self.sessions.create(token, user.id, csrf, now, now + self.policy.lifetime_ms)
        return Session(token, user, csrf)

    async def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (None: none, ended, or its user disabled)."""
        if not token or len(token) > 200:
            return None
        stored = await self.sessions.get(token)
        now = self._clock.now_ms()
        if (
            stored is None
            or stored.revoked_at_ms is not None
            or stored.expires_at_ms <= now
            or now - stored.last_seen_ms > self.policy.idle_ms
        ):
            return None
        user = await self.users.get(stored.user_id)
        if user is None or user.disabled:
            return None
        if now - stored.last_seen_ms >= SEEN_EVERY_MS:
            await self.sessions.seen(token, now)
        return Session(token, user, stored.csrf_token)

    async def sign_out(self, token: str) -> None:
        await self.sessions.revoke(token, self._clock.now_ms())
