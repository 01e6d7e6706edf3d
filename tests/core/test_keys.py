"""API keys (core/keys.py): the Zhipu-SDK-compatible ``<id>.<secret>`` shape, stored as a hash."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.errors import AuthenticationFailed
from openmaas.core.keys import (
    InvalidToken,
    SignatureInvalid,
    TokenExpired,
    TokenLifetimeTooLong,
    build_jwt,
    check_jwt,
    derive_secret,
    generate_key,
    hash_secret,
    looks_like_jwt,
    parse_jwt,
    secret_matches,
    split_key,
)

MASTER = b"m" * 32


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
    assert not secret_matches(
        key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B"), key.secret_hash
    )
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


# -- secrets derived from the master key -------------------------------------------------
def test_derived_secret_has_the_secret_shape_and_depends_on_master_and_id() -> None:
    secret = derive_secret(MASTER, VALID.key_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert derive_secret(MASTER, VALID.key_id) == secret  # recomputable
    assert derive_secret(b"n" * 32, VALID.key_id) != secret
    assert derive_secret(MASTER, "om" + "f" * 16) != secret


def test_derived_secret_is_hmac_sha256_of_the_id_base64url() -> None:
    import base64
    import hashlib
    import hmac

    raw = hmac.new(MASTER, VALID.key_id.encode(), hashlib.sha256).digest()
    assert derive_secret(MASTER, VALID.key_id) == base64.urlsafe_b64encode(raw).decode()[:43]


def test_generate_key_with_master_key_derives_its_secret() -> None:
    for _ in range(20):
        key = generate_key(MASTER)
        assert key.secret == derive_secret(MASTER, key.key_id)
        assert split_key(key.token) == (key.key_id, key.secret)
        assert secret_matches(key.secret, key.secret_hash)
    keys = [generate_key(MASTER) for _ in range(100)]
    assert len({k.key_id for k in keys}) == 100 and len({k.secret for k in keys}) == 100


# -- JWTs as Zhipu's SDKs build them -------------------------------------------------------
NOW_MS = 1_764_000_000_000


def test_sdk_jwt_round_trips() -> None:
    token = build_jwt(VALID.key_id, VALID.secret, NOW_MS)
    assert looks_like_jwt(token) and not looks_like_jwt(VALID.token)
    jwt = parse_jwt(token)
    assert jwt.key_id == VALID.key_id and jwt.exp_ms == NOW_MS + 210_000
    check_jwt(jwt, VALID.secret, NOW_MS)


def test_jwt_exp_is_milliseconds_with_a_small_skew() -> None:
    jwt = parse_jwt(build_jwt(VALID.key_id, VALID.secret, NOW_MS, ttl_ms=1000))
    check_jwt(jwt, VALID.secret, NOW_MS + 1000 + 29_999)  # within the skew
    with pytest.raises(TokenExpired):
        check_jwt(jwt, VALID.secret, NOW_MS + 1000 + 30_000)


HOUR_MS = 3_600_000


def test_jwt_expiring_beyond_the_lifetime_bound_is_refused() -> None:
    # Zhipu's SDKs sign tokens that expire 3.5 minutes ahead; one that claims years is a
    # bearer credential that outlives the key's revocation in anyone's hands.
    day = 24 * HOUR_MS
    for ttl in (day + 30_000 + 1, 10 * 365 * day, 7000 * 365 * day):
        jwt = parse_jwt(build_jwt(VALID.key_id, VALID.secret, NOW_MS, ttl_ms=ttl))
        with pytest.raises(TokenLifetimeTooLong, match="24 h"):
            check_jwt(jwt, VALID.secret, NOW_MS, max_lifetime_ms=day)
    within = parse_jwt(build_jwt(VALID.key_id, VALID.secret, NOW_MS, ttl_ms=day + 30_000))
    check_jwt(within, VALID.secret, NOW_MS, max_lifetime_ms=day)  # the bound plus the skew
    hour = parse_jwt(build_jwt(VALID.key_id, VALID.secret, NOW_MS, ttl_ms=2 * HOUR_MS))
    with pytest.raises(TokenLifetimeTooLong, match="1 h"):
        check_jwt(hour, VALID.secret, NOW_MS, max_lifetime_ms=HOUR_MS)


def test_the_lifetime_bound_is_checked_only_once_the_signature_verifies() -> None:
    jwt = parse_jwt(build_jwt(VALID.key_id, VALID.secret, NOW_MS, ttl_ms=2**40))
    with pytest.raises(SignatureInvalid):
        check_jwt(jwt, derive_secret(MASTER, VALID.key_id), NOW_MS)


def test_jwt_with_another_secret_fails_its_signature() -> None:
    jwt = parse_jwt(build_jwt(VALID.key_id, VALID.secret, NOW_MS))
    with pytest.raises(SignatureInvalid):
        check_jwt(jwt, derive_secret(MASTER, VALID.key_id), NOW_MS)


def _forge(header: dict, payload: dict, signature: bytes = b"x" * 32) -> str:
    import base64
    import json

    def enc(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        [enc(json.dumps(header).encode()), enc(json.dumps(payload).encode()), enc(signature)]
    )


_GOOD_HEADER = {"alg": "HS256", "sign_type": "SIGN"}
_GOOD_PAYLOAD = {"api_key": VALID.key_id, "exp": NOW_MS, "timestamp": NOW_MS}


@pytest.mark.parametrize(
    "token",
    [
        _forge({"alg": "none"}, _GOOD_PAYLOAD),
        _forge({"alg": "HS512"}, _GOOD_PAYLOAD),
        _forge({"alg": "RS256"}, _GOOD_PAYLOAD),
        _forge({}, _GOOD_PAYLOAD),
        _forge(_GOOD_HEADER, {"exp": NOW_MS}),
        _forge(_GOOD_HEADER, {"api_key": "sk-other", "exp": NOW_MS}),
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id}),
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id, "exp": str(NOW_MS)}),
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id, "exp": 1.5}),
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id, "exp": True}),
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id, "exp": -1}),
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id, "exp": 2**63 - 1}),  # no time at all
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id, "exp": 2**64}),
        _forge(_GOOD_HEADER, {"api_key": VALID.key_id, "exp": 10**30}),
        _forge(_GOOD_HEADER, ["not", "an", "object"]),  # type: ignore[arg-type]
        "a.b.c",
        "..",
        "e30.e30.",
        "!!!.e30.e30",
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.e30",  # payload is not JSON
    ],
)
def test_malformed_or_foreign_jwts_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        parse_jwt(token)


@given(st.text())
def test_parse_jwt_never_fails_with_anything_but_invalid_token(token: str) -> None:
    try:
        parse_jwt(token)
    except InvalidToken:
        pass
