"""Secrets sealed at rest: AES-GCM under a purpose key derived from the master key."""

from __future__ import annotations

import pytest

from openmaas.accounts.secretbox import SecretBox, SecretBoxError, derive_key

MASTER = bytes(range(32))
SECRET = "sk-live-0123456789abcdef"


def test_round_trip_and_a_fresh_nonce_each_time() -> None:
    box = SecretBox(MASTER, "upstream-credentials")
    first, second = box.seal(SECRET, "cloud"), box.seal(SECRET, "cloud")
    assert first != second and first.startswith("v1.") and second.startswith("v1.")
    assert box.open(first, "cloud") == box.open(second, "cloud") == SECRET
    assert SECRET not in first and "sk-live" not in first


def test_another_master_key_or_purpose_cannot_open_it() -> None:
    sealed = SecretBox(MASTER, "upstream-credentials").seal(SECRET, "cloud")
    with pytest.raises(SecretBoxError, match="another master key") as caught:
        SecretBox(bytes(32), "upstream-credentials").open(sealed, "cloud")
    assert SECRET not in str(caught.value)
    with pytest.raises(SecretBoxError):
        SecretBox(MASTER, "something-else").open(sealed, "cloud")
    assert derive_key(MASTER, "a") != derive_key(MASTER, "b")


def test_a_sealed_value_is_bound_to_its_name_and_to_its_bytes() -> None:
    box = SecretBox(MASTER, "upstream-credentials")
    sealed = box.seal(SECRET, "cloud")
    with pytest.raises(SecretBoxError):
        box.open(sealed, "other")  # copied under another name
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SecretBoxError):
        box.open(flipped, "cloud")
    with pytest.raises(SecretBoxError, match="Unknown sealed format"):
        box.open("v9." + sealed[3:], "cloud")
    with pytest.raises(SecretBoxError):
        box.open("v1.!!", "cloud")


def test_the_box_never_shows_its_key() -> None:
    assert repr(SecretBox(MASTER, "x")) == "SecretBox(<key hidden>)"
