"""API keys and the JWTs that Zhipu's SDKs build from them. Pure functions, no I/O.

A key is ``<id>.<secret>`` with exactly one dot, the shape Zhipu's official SDKs require.
The id is public (it names the key in lists and logs). The secret is never stored: the
database holds its SHA-256 digest only. It is *derived* from a server master key,

    secret = urlsafe_b64(HMAC-SHA256(master_key, key_id))    (43 characters, 256 bits)

so the server can recompute the secret of any key from its id when it must verify an
HS256 JWT signed with it (``ZhipuAI(disable_token_cache=False)`` sends such tokens), while a
stolen database still reveals no secret. The master key must be guarded like a password.

JWT as the SDKs build it: header ``{"alg": "HS256", "sign_type": "SIGN"}``, payload
``{"api_key": <id>, "exp": <ms epoch>, "timestamp": <ms epoch>}``. ``exp`` is in
*milliseconds*, so it is validated here by hand rather than by a JWT library. The SDKs sign
tokens that expire 3.5 minutes ahead; one whose ``exp`` lies further ahead than a bound
(``OPENMAAS_JWT_MAX_LIFETIME_SECONDS``, a day by default) is refused, so that a token cannot
be minted to stay valid for years (``TokenLifetimeTooLong``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from openmaas.core.errors import AuthenticationFailed

KEY_ID_PREFIX = "om"
JWT_SKEW_MS = 30_000  # clock difference tolerated between client and server
JWT_MAX_LIFETIME_MS = 86_400_000  # how far ahead a JWT's exp may lie (the setting's default)
_MAX_EXP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: beyond it, not a time at all
_KEY_ID_RE = re.compile(r"om[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")


class CredentialMissing(AuthenticationFailed):
    """No credential was presented at all."""


class InvalidToken(AuthenticationFailed):
    """A credential that is malformed, or names no key we know, or has the wrong secret."""


class TokenExpired(AuthenticationFailed):
    """A well-formed, correctly signed JWT whose ``exp`` has passed."""


class SignatureInvalid(AuthenticationFailed):
    """A well-formed JWT for a known key whose signature does not verify."""


class KeyRevoked(AuthenticationFailed):
    """The key was revoked: refused from then on, and its requests in flight are ended."""


class KeyExpired(AuthenticationFailed):
    """The key's expiry has passed: refused from then on, as a revoked key is."""


class TokenLifetimeTooLong(InvalidToken):
    """A correctly signed JWT whose ``exp`` lies further ahead than the server accepts."""


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret: str
    secret_hash: str

    @property
    def token(self) -> str:
        return f"{self.key_id}.{self.secret}"


@dataclass(frozen=True, slots=True)
class SdkJwt:
    """A JWT parsed (not yet verified): the key it names, its expiry, and what was signed."""

    key_id: str
    exp_ms: int
    signing_input: bytes
    signature: bytes


def derive_secret(master_key: bytes, key_id: str) -> str:
    """The secret of key ``key_id``: 43 url-safe base64 characters."""
    digest = hmac.new(master_key, key_id.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def generate_key(master_key: bytes | None = None) -> NewKey:
    """A new key. With ``master_key`` (what the server issues) its secret is derived, so
    JWTs signed with it can be verified; without one the secret is random and the key works
    as a raw key only (its JWTs are refused: the derived secret does not match its hash)."""
    key_id = KEY_ID_PREFIX + secrets.token_hex(8)
    if master_key is None:
        secret = secrets.token_urlsafe(32)
    else:
        secret = derive_secret(master_key, key_id)
    return NewKey(key_id=key_id, secret=secret, secret_hash=hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def split_key(token: str) -> tuple[str, str]:
    """Split a presented key into (id, secret); refuse anything not shaped like our keys."""
    key_id, dot, secret = token.partition(".")
    if not dot or not _KEY_ID_RE.fullmatch(key_id) or not _SECRET_RE.fullmatch(secret):
        raise InvalidToken("Incorrect API key provided.")
    return key_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def _b64decode(part: str) -> bytes:
    if not _B64URL_RE.fullmatch(part):
        raise InvalidToken("Malformed token.")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("Malformed token.") from None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidToken("Malformed token.") from None
    if not isinstance(value, dict):
        raise InvalidToken("Malformed token.")
    return value


def parse_jwt(token: str) -> SdkJwt:
    """Parse an SDK-built JWT; refuse any other algorithm or a missing/odd claim."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("Malformed token.")
    header = _json_object(_b64decode(parts[0]))
    payload = _json_object(_b64decode(parts[1]))
    signature = _b64decode(parts[2])
    if header.get("alg") != "HS256":
        raise InvalidToken("Unsupported token algorithm; only HS256 is accepted.")
    key_id, exp = payload.get("api_key"), payload.get("exp")
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise InvalidToken("Malformed token: 'api_key' is not a key id.")
    if not isinstance(exp, int) or isinstance(exp, bool) or not 0 <= exp <= _MAX_EXP_MS:
        raise InvalidToken(
            "Malformed token: 'exp' must be an integer time (milliseconds since 1970)."
        )
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return SdkJwt(key_id, exp, signing_input, signature)


def check_jwt(
    jwt: SdkJwt,
    secret: str,
    now_ms: int,
    skew_ms: int = JWT_SKEW_MS,
    *,
    max_lifetime_ms: int = JWT_MAX_LIFETIME_MS,
) -> None:
    """Verify the signature with ``secret`` (the key's), then the expiry (milliseconds):
    passed (beyond ``skew_ms``) or further ahead than ``max_lifetime_ms`` (plus the skew)."""
    expected = hmac.new(secret.encode("ascii"), jwt.signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, jwt.signature):
        raise SignatureInvalid("Token signature verification failed.")
    if jwt.exp_ms + skew_ms <= now_ms:
        raise TokenExpired("The token has expired.")
    if jwt.exp_ms - skew_ms > now_ms + max_lifetime_ms:
        raise TokenLifetimeTooLong(
            f"The token expires more than {_duration(max_lifetime_ms)} from now; this server "
            f"accepts tokens whose 'exp' is at most {_duration(max_lifetime_ms)} ahead."
        )


def _duration(ms: int) -> str:
    """``24 h``, ``90 min`` or ``45 s``: the lifetime bound as the refusal states it."""
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    return f"{ms / 1000:g} s"


def build_jwt(key_id: str, secret: str, now_ms: int, ttl_ms: int = 210_000) -> str:
    """A JWT exactly as the SDKs build it (for tests and for clients written in Python)."""

    def enc(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = enc(orjson.dumps({"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}))
    payload = enc(orjson.dumps({"api_key": key_id, "exp": now_ms + ttl_ms, "timestamp": now_ms}))
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(secret.encode("ascii"), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{enc(signature)}"
