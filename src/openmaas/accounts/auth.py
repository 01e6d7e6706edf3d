"""Who is calling: the one function that turns a presented credential into a principal.

Credentials arrive as ``Authorization: Bearer <token>``, ``Authorization: <token>`` (older
Zhipu SDKs) or ``x-api-key: <token>``; the token is a raw key ``<id>.<secret>`` or the HS256
JWT that Zhipu's SDKs build from one (see ``core/keys.py``). The key's row comes from a
``KeySource``: the database itself (``ApiKeyRepository``: a revoked key fails at once), or,
in a server, the ``KeyCache`` kept true by the change feed (``accounts/keycache.py``: a key
revoked anywhere fails in every process within a second). Either way the presented secret
is hashed and compared with the stored hash on every request, and the key's expiry with
the clock (an expired key is refused as a revoked one is, with no change to tell of it).
The principal carries the key's model restriction (``Principal.models``), read from the
same row: ``Principal.may_use`` is what the gateway and the model lists ask.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from openmaas.accounts.keycache import KeySource
from openmaas.core.errors import AuthenticationFailed, ConfigurationError
from openmaas.core.keys import (
    JWT_MAX_LIFETIME_MS,
    CredentialMissing,
    InvalidToken,
    KeyExpired,
    KeyRevoked,
    check_jwt,
    derive_secret,
    looks_like_jwt,
    parse_jwt,
    secret_matches,
    split_key,
)
from openmaas.settings import Settings
from openmaas.store.repositories import ApiKey

MASTER_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    org_id: str
    role: str
    tier: str | None = None  # the key's own tier, narrowing its organization's
    models: frozenset[str] | None = None  # the only models the key may use; None: every one

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, *names: str) -> bool:
        """Whether the key may use a model known by any of ``names`` (its name, an alias)."""
        return self.models is None or any(name in self.models for name in names)


_WHITESPACE = re.compile(r"\s")  # what str.isspace() calls whitespace, in one C call


def load_master_key(settings: Settings) -> bytes:
    """The server master key that key secrets are derived from: ``OPENMAAS_SECRET_KEY`` if
    set, else ``<home>/secret-key`` (32 random bytes, created with mode 0600 on first use)."""
    if settings.secret_key:
        return settings.secret_key.encode("utf-8")
    path: Path = settings.home / "secret-key"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked into place: a process starting
        # at the same moment reads either no file or the complete key, never a partial one.
        fd, temporary = tempfile.mkstemp(dir=settings.home, prefix=".secret-key.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(MASTER_KEY_BYTES))
            os.chmod(temporary, 0o600)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            os.unlink(temporary)
    key = path.read_bytes()
    if len(key) < MASTER_KEY_BYTES:
        raise ConfigurationError(f"{path} is shorter than {MASTER_KEY_BYTES} bytes.")
    return key


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization`` header: ``Bearer <token>`` or the bare token."""
    if not authorization or not authorization.strip():
        raise CredentialMissing(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    value = authorization.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        value = rest.strip()
    elif scheme.lower() == "bearer":
        raise CredentialMissing("Malformed Authorization header; expected 'Bearer <key>'.")
    if _WHITESPACE.search(value):
        raise InvalidToken("Malformed Authorization header; expected 'Bearer <key>'.")
    return value


def presented_token(headers: Mapping[str, str]) -> str:
    """The credential of a request, from ``Authorization`` or ``x-api-key``. A request that
    carries two different credentials, or either header more than once, is refused rather
    than guessed at (``headers`` with a ``getlist``, as Starlette's, shows every value)."""
    authorization = _once(headers, "authorization")
    api_key = _once(headers, "x-api-key")
    if not api_key:
        return bearer_token(authorization or None)
    if not authorization:
        return bearer_token(api_key)
    token = bearer_token(authorization)
    if token != bearer_token(api_key):
        raise AuthenticationFailed(
            "The Authorization and x-api-key headers carry different credentials; send one."
        )
    return token


def _once(headers: Mapping[str, str], name: str) -> str:
    """The value of header ``name`` ("" when absent); refused when it comes more than once:
    which copy counts is a guess that a proxy in front may make differently."""
    getlist = getattr(headers, "getlist", None)
    values: list[str] = list(getlist(name)) if getlist is not None else [headers.get(name) or ""]
    if len(values) > 1:
        raise AuthenticationFailed(
            f"The request carries more than one {name} header; send the credential once."
        )
    return values[0].strip() if values else ""


class Authenticator:
    def __init__(
        self,
        keys: KeySource,
        master_key: bytes | None = None,
        now_ms: Callable[[], int] | None = None,
        *,
        jwt_max_lifetime_ms: int = JWT_MAX_LIFETIME_MS,
    ) -> None:
        self._keys = keys
        self._master_key = master_key
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._jwt_max_lifetime_ms = jwt_max_lifetime_ms

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of an ``Authorization`` header value."""
        return await self.authenticate_token(bearer_token(authorization))

    async def authenticate_headers(self, headers: Mapping[str, str]) -> Principal:
        """The caller of a request, whichever header carries its credential."""
        return await self.authenticate_token(presented_token(headers))

    async def authenticate_token(self, token: str) -> Principal:
        """The one decision: a raw key or an SDK JWT -> the principal, or refusal."""
        key = await (self._jwt_key(token) if looks_like_jwt(token) else self._raw_key(token))
        if key.revoked:
            raise KeyRevoked("This API key has been revoked.")
        if key.expired(self._now_ms()):
            # compared with the clock on every request: no change is needed for it to hold
            raise KeyExpired("This API key has expired.")
        return Principal(key.id, key.org_id, key.role, key.tier, key.models)

    async def _raw_key(self, token: str) -> ApiKey:
        key_id, secret = split_key(token)
        key = await self._keys.get(key_id)
        if key is None or not secret_matches(secret, key.secret_hash):
            raise InvalidToken("Incorrect API key provided.")
        return key

    async def _jwt_key(self, token: str) -> ApiKey:
        jwt = parse_jwt(token)
        key = await self._keys.get(jwt.key_id)
        if key is None or self._master_key is None:
            raise InvalidToken("Incorrect API key provided.")
        secret = derive_secret(self._master_key, key.id)
        if not secret_matches(secret, key.secret_hash):
            # Issued with a random secret or under another master key: not verifiable.
            raise InvalidToken("This API key cannot sign tokens; send the key itself.")
        check_jwt(jwt, secret, self._now_ms(), max_lifetime_ms=self._jwt_max_lifetime_ms)
        return key
