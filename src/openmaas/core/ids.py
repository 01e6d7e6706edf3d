"""Request ids: sortable by creation time, unique, safe in URLs and headers.

The format is a ULID (48-bit millisecond timestamp + 80 random bits in Crockford base32),
so ids from later milliseconds sort later and logs, usage records and ledger entries line
up. A ``RequestIdGenerator`` is also monotonic within a millisecond: each id it makes sorts
after the one before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters (10 bits) at a time: 13 lookups for the 26 characters instead of 26.
_PAIRS = tuple(high + low for high in _ALPHABET for low in _ALPHABET)
_PAIR_SHIFTS = tuple(range(120, -1, -10))  # the 13 pairs' bits, most significant first


def encode_ulid(timestamp_ms: int, entropy: bytes) -> str:
    if not 0 <= timestamp_ms < 1 << 48:
        raise ValueError("timestamp out of range")
    if len(entropy) != 10:
        raise ValueError("entropy must be 10 bytes")
    return _encode((timestamp_ms << 80) | int.from_bytes(entropy, "big"))


def _encode(value: int) -> str:
    """The 26 characters of a 128-bit ULID value (its timestamp, then its random part)."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def decode_ulid_timestamp(ulid: str) -> int:
    if len(ulid) != 26 or ulid[0] > "7":
        raise ValueError("not a ULID: 26 characters, first one 0-7")
    value = 0
    for ch in ulid:
        index = _ALPHABET.find(ch)
        if index < 0:
            raise ValueError(f"not a ULID character: {ch!r}")
        value = (value << 5) | index
    return value >> 80


def new_request_id() -> str:
    return encode_ulid(time.time_ns() // 1_000_000, os.urandom(10))


class RequestIdGenerator:
    """Monotonic ULIDs: within one millisecond the random part counts up from its start."""

    _MAX_RANDOM = (1 << 80) - 1

    def __init__(
        self,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._now_ms = now_ms
        self._entropy = entropy
        self._last_ms = -1
        self._last_random = 0

    def __call__(self) -> str:
        now = self._now_ms()
        if now > self._last_ms:
            random = int.from_bytes(self._entropy(10), "big")
        elif self._last_random < self._MAX_RANDOM:  # same (or an earlier) millisecond
            now, random = self._last_ms, self._last_random + 1
        else:  # the millisecond is used up: borrow the next one
            now, random = self._last_ms + 1, int.from_bytes(self._entropy(10), "big")
        if not 0 <= now < 1 << 48:
            raise ValueError("timestamp out of range")
        self._last_ms, self._last_random = now, random
        return _encode((now << 80) | random)
