"""API keys (core/keys.py): the Zhipu-SDK-compatible ``<id>.<secret>`` shape, stored as a hash."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.errors import AuthenticationFailed
from openmaas.core.keys import generate_key, hash_secret, secret_matches, split_key


def test_generated_key_has_exactly_one_dot_between_id_and_secret() -> None:
    key = generate_key()
    assert key.token.count(".") == 1
    key_id, secret = key.token.split(".")
    assert key_id == key.key_id
    assert secret == key.secret


def test_generated_key_has_zhipu_sdk_shape() -> None:
    # zhipuai / zai SDKs do `api_key.split(".")` and expect exactly two non-empty parts.
    for _ in range(50):
        parts = generate_key().token.split(".")
        assert len(parts) == 2 and all(parts)
        assert re.fullmatch(r"om[0-9a-f]{16}", parts[0])
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", parts[1])


def test_generated_keys_are_unique() -> None:
    keys = [generate_key() for _ in range(200)]
    assert len({k.key_id for k in keys}) == 200
    assert len({k.secret for k in keys}) == 200


def test_split_key_round_trips_a_generated_key() -> None:
    for _ in range(50):
        key = generate_key()
        assert split_key(key.token) == (key.key_id, key.secret)


# A fixed, well-formed key, so test ids are stable from run to run.
_ID = "om0123456789abcdef"
_SECRET = "Zq3_-x9KpL0mN2bV4cX6zA8sD1fG3hJ5kL7qW9eR2tY"
assert len(_SECRET) == 43


class VALID:  # noqa: N801 - reads like the key it stands for
    key_id = _ID
    secret = _SECRET
    token = f"{_ID}.{_SECRET}"


def test_the_fixed_key_is_well_formed() -> None:
    assert split_key(VALID.token) == (VALID.key_id, VALID.secret)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        VALID.key_id,  # no dot
        VALID.secret,  # no dot, no id
        VALID.key_id + ".",  # empty secret
        "." + VALID.secret,  # empty id
        VALID.token + ".extra",  # two dots
        VALID.key_id + "." + VALID.secret[:10] + "." + VALID.secret[10:],  # dot inside secret
        "sk" + VALID.key_id[2:] + "." + VALID.secret,  # wrong id prefix
        "OM" + VALID.key_id[2:] + "." + VALID.secret,  # prefix is case-sensitive
        VALID.key_id[:-1] + "." + VALID.secret,  # id too short
        VALID.key_id + "0." + VALID.secret,  # id too long
        VALID.key_id + "." + VALID.secret[:-1],  # secret too short
        VALID.key_id + "." + VALID.secret + "A",  # secret too long
        VALID.key_id + "." + VALID.secret[:-1] + "=",  # character outside the alphabet
        " " + VALID.token,
        VALID.token + " ",
        "Bearer " + VALID.token,
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",  # an OpenAI-shaped key
    ],
)
def test_split_key_rejects_malformed_tokens(token: str) -> None:
    with pytest.raises(AuthenticationFailed):
        split_key(token)


@pytest.mark.parametrize(
    "token",
    [VALID.token + "\n", VALID.key_id + "\n." + VALID.secret],
    ids=["after-secret", "after-id"],
)
def test_split_key_rejects_a_trailing_newline(token: str) -> None:
    with pytest.raises(AuthenticationFailed):
        split_key(token)


_text = st.text()
_near_keys = st.one_of(
    _text,
    st.tuples(_text, _text).map(lambda p: f"{p[0]}.{p[1]}"),
    st.tuples(st.sampled_from(["", "om", VALID.key_id]), _text, _text).map(
        lambda p: f"{p[0]}{p[1]}.{VALID.secret}{p[2]}"
    ),
)


@given(_near_keys)
def test_split_key_on_any_string_either_refuses_or_returns_well_formed_parts(token: str) -> None:
    try:
        key_id, secret = split_key(token)
    except AuthenticationFailed:
        return
    assert f"{key_id}.{secret}" == token
    assert re.fullmatch(r"om[0-9a-f]{16}", key_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)


@given(st.text())
def test_split_key_never_fails_with_anything_but_authentication_failed(token: str) -> None:
    try:
        split_key(token)
    except AuthenticationFailed:
        pass


@given(
    st.from_regex(r"om[0-9a-f]{16}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{43}", fullmatch=True),
)
def test_split_key_accepts_every_well_formed_key(key_id: str, secret: str) -> None:
    assert split_key(f"{key_id}.{secret}") == (key_id, secret)


def test_secret_matches_only_the_right_secret() -> None:
    key, other = generate_key(), generate_key()
    assert secret_matches(key.secret, key.secret_hash)
    assert not secret_matches(other.secret, key.secret_hash)
    assert not secret_matches(key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B"), key.secret_hash)
    assert not secret_matches("", key.secret_hash)
    assert not secret_matches(key.secret_hash, key.secret_hash)  # the hash is not a password


def test_stored_hash_never_reveals_the_secret() -> None:
    for _ in range(50):
        key = generate_key()
        assert key.secret_hash != key.secret
        assert key.secret not in key.secret_hash
        assert key.secret_hash == hash_secret(key.secret)
        assert re.fullmatch(r"[0-9a-f]{64}", key.secret_hash)  # fits api_keys.secret_hash


def test_hash_is_deterministic_so_a_stored_hash_keeps_verifying() -> None:
    assert hash_secret("abc") == hash_secret("abc")
    # SHA-256 of "abc", so a change of algorithm (which would lock out every key) is noticed.
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
