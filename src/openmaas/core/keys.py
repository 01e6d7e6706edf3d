"""API key format: ``<id>.<secret>`` with exactly one dot.

The id is public (it names the key in lists and logs); the secret is shown once and only
its SHA-256 digest is stored. A secret carries 256 bits of entropy, so a fast digest is the
right tool: there is nothing to brute-force. The one-dot shape is what Zhipu's official SDKs
require of a key, so the same key works with them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from openmaas.core.errors import AuthenticationFailed

KEY_ID_PREFIX = "om"
_KEY_ID_RE = re.compile(r"om[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret: str
    secret_hash: str

    @property
    def token(self) -> str:
        return f"{self.key_id}.{self.secret}"


def generate_key() -> NewKey:
    key_id = KEY_ID_PREFIX + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id=key_id, secret=secret, secret_hash=hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def split_key(token: str) -> tuple[str, str]:
    """Split a presented key into (id, secret); refuse anything not shaped like our keys."""
    key_id, dot, secret = token.partition(".")
    if not dot or not _KEY_ID_RE.fullmatch(key_id) or not _SECRET_RE.fullmatch(secret):
        raise AuthenticationFailed("Incorrect API key provided.")
    return key_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
