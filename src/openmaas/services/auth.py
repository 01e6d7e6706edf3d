"""Who is calling: the one function that turns a presented credential into a principal."""

from __future__ import annotations

from dataclasses import dataclass

from openmaas.core.errors import AuthenticationFailed
from openmaas.core.keys import secret_matches, split_key
from openmaas.store.repositories import ApiKeyRepository


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    org_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.")
    return token.strip()


class Authenticator:
    def __init__(self, keys: ApiKeyRepository) -> None:
        self._keys = keys

    async def authenticate(self, authorization: str | None) -> Principal:
        """Every request is checked against the database, so a revoked key fails at once."""
        key_id, secret = split_key(bearer_token(authorization))
        key = await self._keys.get(key_id)
        if key is None or not secret_matches(secret, key.secret_hash):
            raise AuthenticationFailed("Incorrect API key provided.")
        if key.revoked:
            raise AuthenticationFailed("This API key has been revoked.")
        return Principal(key_id=key.id, org_id=key.org_id, role=key.role)
