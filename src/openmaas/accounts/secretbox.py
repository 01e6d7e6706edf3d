"""Secrets encrypted at rest: AES-256-GCM under a key derived from the master key.

Pure (no I/O): the store keeps what :meth:`SecretBox.seal` returns and gives it back to
:meth:`SecretBox.open`. Each purpose gets its own key, derived from the server's master key
with HKDF-SHA256 and a purpose label, so a key used for upstream credentials is never the
one API-key secrets are derived from.

Sealed format (ASCII, versioned so the scheme can change without a flag day)::

    v1.<base64url(nonce[12] || ciphertext || tag[16])>

The ciphertext is bound to what it is for (``context``, e.g. the credential's name) as
associated data: a sealed value copied to another name does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from openmaas.core.errors import ConfigurationError

VERSION = "v1"
_NONCE_BYTES = 12
_SALT = b"openmaas secretbox"


class SecretBoxError(ConfigurationError):
    """A sealed value that cannot be opened: another master key, tampering, or a format
    this version does not know. The message never contains the value."""


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose (e.g. ``"upstream-credentials"``)."""
    if len(master_key) < 16:
        raise ConfigurationError("The master key is too short (at least 16 bytes).")
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=_SALT,
        info=f"openmaas/{VERSION}/{purpose}".encode(),
    ).derive(master_key)


class SecretBox:
    """Seals and opens short secrets for one purpose. Holds the derived key only."""

    __slots__ = ("_aead",)

    def __init__(self, master_key: bytes, purpose: str) -> None:
        self._aead = AESGCM(derive_key(master_key, purpose))

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{VERSION}." + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, context: str) -> str:
        version, _, payload = sealed.partition(".")
        if version != VERSION:
            raise SecretBoxError(f"Unknown sealed format '{version[:8]}'.")
        try:
            raw = base64.urlsafe_b64decode(payload.encode("ascii"))
        except (ValueError, binascii.Error):
            raise SecretBoxError("A sealed value is damaged.") from None
        if len(raw) < _NONCE_BYTES + 16:
            raise SecretBoxError("A sealed value is damaged.")
        try:
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise SecretBoxError(
                f"The secret '{context}' cannot be decrypted: it was sealed under another "
                "master key (OPENMAAS_SECRET_KEY) or has been altered."
            ) from None
        return plain.decode()
