"""Request ids (core/ids.py): ULIDs that sort by creation time and carry their timestamp."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.ids import (
    RequestIdGenerator,
    decode_ulid_timestamp,
    encode_ulid,
    new_request_id,
)

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
MAX_TS = (1 << 48) - 1

timestamps = st.integers(min_value=0, max_value=MAX_TS)
entropies = st.binary(min_size=10, max_size=10)


@given(timestamps, entropies)
def test_encoded_id_is_26_crockford_chars(ts: int, entropy: bytes) -> None:
    ulid = encode_ulid(ts, entropy)
    assert len(ulid) == 26
    assert set(ulid) <= CROCKFORD


@given(timestamps, entropies)
def test_timestamp_round_trips(ts: int, entropy: bytes) -> None:
    assert decode_ulid_timestamp(encode_ulid(ts, entropy)) == ts


@given(timestamps, timestamps, entropies, entropies)
def test_later_timestamp_sorts_later_whatever_the_entropy(
    t1: int, t2: int, e1: bytes, e2: bytes
) -> None:
    a, b = encode_ulid(t1, e1), encode_ulid(t2, e2)
    if t1 < t2:
        assert a < b
    elif t1 > t2:
        assert a > b


@given(timestamps, entropies, entropies)
def test_distinct_entropy_gives_distinct_ids(ts: int, e1: bytes, e2: bytes) -> None:
    assert (encode_ulid(ts, e1) == encode_ulid(ts, e2)) == (e1 == e2)


def test_known_vector() -> None:
    # 2^48 - 1 ms and all-ones entropy is the largest ULID the spec allows.
    assert encode_ulid(MAX_TS, b"\xff" * 10) == "7" + "Z" * 25
    assert encode_ulid(0, bytes(10)) == "0" * 26


@pytest.mark.parametrize("ts", [-1, 1 << 48, 1 << 60])
def test_timestamp_out_of_range_is_refused(ts: int) -> None:
    with pytest.raises(ValueError):
        encode_ulid(ts, bytes(10))


@pytest.mark.parametrize("size", [0, 9, 11, 16])
def test_entropy_of_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError):
        encode_ulid(0, bytes(size))


@pytest.mark.parametrize(
    "bad", ["0" * 25 + "I", "0" * 25 + "L", "0" * 25 + "O", "0" * 25 + "U", "0" * 25 + "-"]
)
def test_decoding_a_character_outside_the_alphabet_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_ulid_timestamp(bad)


@pytest.mark.parametrize("bad", ["", "0" * 25, "0" * 27, "Z" * 26])
def test_decoding_a_string_that_is_not_a_ulid_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_ulid_timestamp(bad)


def test_new_request_ids_are_unique_ulids() -> None:
    ids = [new_request_id() for _ in range(500)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 26 and set(i) <= CROCKFORD for i in ids)


def test_new_request_id_carries_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    rid = new_request_id()
    after = time.time_ns() // 1_000_000
    assert before <= decode_ulid_timestamp(rid) <= after


def test_ids_created_one_after_another_sort_in_creation_order() -> None:
    generate = RequestIdGenerator()
    ids = [generate() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_generator_stays_monotonic_when_the_clock_goes_back() -> None:
    times = iter([1000, 1000, 999, 1000, 1001])
    generate = RequestIdGenerator(now_ms=lambda: next(times))
    ids = [generate() for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert decode_ulid_timestamp(ids[-1]) == 1001
