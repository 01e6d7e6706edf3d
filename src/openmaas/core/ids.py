"""Request ids: sortable by creation time, unique, safe in URLs and headers.

The format is a ULID (48-bit millisecond timestamp + 80 random bits in Crockford base32),
so ids created later sort later and logs, usage records and ledger entries line up.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def encode_ulid(timestamp_ms: int, entropy: bytes) -> str:
    if not 0 <= timestamp_ms < 1 << 48:
        raise ValueError("timestamp out of range")
    if len(entropy) != 10:
        raise ValueError("entropy must be 10 bytes")
    value = (timestamp_ms << 80) | int.from_bytes(entropy, "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def decode_ulid_timestamp(ulid: str) -> int:
    value = 0
    for ch in ulid:
        value = (value << 5) | _ALPHABET.index(ch)
    return value >> 80


def new_request_id() -> str:
    return encode_ulid(time.time_ns() // 1_000_000, os.urandom(10))
