"""Rate-limit algorithms (core/limits.py), with time passed in: no sleeping, no wall clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmaas.core.errors import RateLimited
from openmaas.core.limits import (
    Dimension,
    LimitState,
    Status,
    WindowCounter,
    format_duration,
    rate_limit_headers,
    rate_limited,
    retry_after_seconds,
)
from openmaas.core.tiers import Limits, Scope, Tier, scopes_for

T, M, C = Dimension.TOKENS, Dimension.REQUESTS, Dimension.CONCURRENCY


def one(limits: Limits, models: dict[str, Limits] | None = None) -> list[Scope]:
    return [Scope("key:k", Tier("t", limits, models or {}))]


# --- the window counter ------------------------------------------------------------------


def test_window_counts_the_last_minute_and_one_bucket_more() -> None:
    w = WindowCounter(window_ms=60_000, bucket_ms=1_000)
    w.add(5, now_ms=500)  # bucket 0
    assert w.used(60_999) == 5  # buckets 0..60 are counted at t in bucket 60
    assert w.used(61_000) == 0  # bucket 0 left the window
    assert w.reset_ms(61_000) == 0


def test_window_reset_is_when_the_newest_usage_leaves() -> None:
    w = WindowCounter()
    w.add(1, 0)
    w.add(1, 30_000)
    assert w.reset_ms(30_000) == 61_000  # bucket 30 expires at 91 s
    assert w.reset_ms(70_000) == 21_000


def test_window_wait_frees_oldest_buckets_first() -> None:
    w = WindowCounter()
    w.add(60, 0)
    w.add(30, 10_000)
    assert w.wait_ms(10, limit=100, now_ms=20_000) == 0
    assert w.wait_ms(20, limit=100, now_ms=20_000) == 41_000  # bucket 0 leaves at 61 s
    assert w.wait_ms(80, limit=100, now_ms=20_000) == 51_000  # both must leave (71 s)
    assert w.wait_ms(101, limit=100, now_ms=20_000) is None


def test_window_refund_only_touches_its_bucket_and_never_goes_negative() -> None:
    w = WindowCounter()
    b = w.add(10, 0)
    w.add(7, 5_000)
    w.refund(b, 25, 6_000)  # at most what the bucket holds
    assert w.used(6_000) == 7
    w.refund(b, 5, 6_000)  # nothing left there
    assert w.used(6_000) == 7


def test_window_refund_after_expiry_is_a_noop() -> None:
    w = WindowCounter()
    b = w.add(10, 0)
    w.add(3, 70_000)
    w.refund(b, 10, 70_000)
    assert w.used(70_000) == 3


def test_window_rejects_a_window_that_is_not_whole_buckets() -> None:
    with pytest.raises(ValueError):
        WindowCounter(window_ms=60_000, bucket_ms=7_000)


# --- requests per minute --------------------------------------------------------------------


def test_rpm_refuses_the_n_plus_first_and_admits_after_rollover() -> None:
    s, scopes = LimitState(), one(Limits(rpm=3))
    for t in (0, 100, 200):
        assert s.admit(scopes, "m", 0, t).admitted
    refused = s.admit(scopes, "m", 0, 30_000)
    assert not refused.admitted
    assert refused.refusal is not None and refused.refusal.dimension is M
    assert refused.retry_after_ms == 31_000  # bucket 0 leaves the window at 61 s
    assert not s.admit(scopes, "m", 0, 60_999).admitted
    assert s.admit(scopes, "m", 0, 61_000).admitted


def test_rpm_is_not_refunded_by_release_or_settle() -> None:
    s, scopes = LimitState(), one(Limits(rpm=1))
    d = s.admit(scopes, "m", 10, 0)
    assert d.admission is not None
    s.release(d.admission.id)
    assert not s.admit(scopes, "m", 0, 1).admitted


# --- tokens per minute: reserve, then correct ---------------------------------------------------


def test_tpm_reserves_at_admission() -> None:
    s, scopes = LimitState(), one(Limits(tpm=100))
    assert s.admit(scopes, "m", 60, 0).admitted
    d = s.admit(scopes, "m", 50, 0)
    assert not d.admitted and d.refusal is not None
    assert (d.refusal.dimension, d.refusal.used, d.refusal.requested) == (T, 60, 50)


def test_settlement_refunds_the_unused_reservation() -> None:
    s, scopes = LimitState(), one(Limits(tpm=100))
    a = s.admit(scopes, "m", 80, 0).admission
    assert a is not None
    assert s.settle(a.id, 30, 5_000)
    assert s.used("key:k", "*", T, 5_000) == 30
    assert s.admit(scopes, "m", 70, 5_000).admitted


def test_settlement_above_the_reservation_charges_the_excess_now() -> None:
    s, scopes = LimitState(), one(Limits(tpm=100))
    a = s.admit(scopes, "m", 20, 0).admission
    assert a is not None
    s.settle(a.id, 150, 30_000)  # the engine used more than reserved: never refused afterwards
    assert s.used("key:k", "*", T, 30_000) == 150
    d = s.admit(scopes, "m", 1, 30_000)
    assert not d.admitted and d.tokens is not None and d.tokens.remaining == 0
    # The reservation leaves at 61 s, the excess (charged at 30 s) only at 91 s.
    assert d.retry_after_ms == 61_000
    assert not s.admit(scopes, "m", 1, 61_000).admitted
    assert s.admit(scopes, "m", 100, 91_000).admitted


def test_settle_and_release_are_idempotent_and_exclusive() -> None:
    s, scopes = LimitState(), one(Limits(tpm=100, concurrency=1))
    a = s.admit(scopes, "m", 50, 0).admission
    assert a is not None
    assert s.settle(a.id, 10, 1)
    assert not s.settle(a.id, 0, 2)  # the second settlement changes nothing
    assert not s.release(a.id)
    assert s.used("key:k", "*", T, 2) == 10
    assert s.open_admissions == 0
    assert not s.settle("no-such-admission", 5, 3)


def test_release_refunds_every_reserved_token() -> None:
    s, scopes = LimitState(), one(Limits(tpm=100))
    a = s.admit(scopes, "m", 100, 0).admission
    assert a is not None
    assert s.release(a.id)
    assert s.admit(scopes, "m", 100, 1).admitted


def test_a_request_larger_than_the_limit_is_refused_as_never_fitting() -> None:
    s, scopes = LimitState(), one(Limits(tpm=100))
    d = s.admit(scopes, "m", 101, 0)
    assert d.refusal is not None and d.refusal.never
    assert d.retry_after_ms == 60_000
    err = rate_limited(d)
    assert "too large" in err.message and "101" in err.message


def test_negative_amounts_are_rejected() -> None:
    s = LimitState()
    with pytest.raises(ValueError):
        s.admit(one(Limits(tpm=1)), "m", -1, 0)
    a = s.admit(one(Limits(tpm=1)), "m", 1, 0).admission
    assert a is not None
    with pytest.raises(ValueError):
        s.settle(a.id, -1, 0)


def test_a_clock_stepping_back_frees_nothing() -> None:
    s, scopes = LimitState(), one(Limits(rpm=1))
    assert s.admit(scopes, "m", 0, 100_000).admitted
    assert not s.admit(scopes, "m", 0, 0).admitted  # taken as 100 s, not as 0 s


# --- concurrency -----------------------------------------------------------------------------


def test_concurrency_cap_and_release() -> None:
    s, scopes = LimitState(), one(Limits(concurrency=2))
    a = s.admit(scopes, "m", 0, 0).admission
    b = s.admit(scopes, "m", 0, 0).admission
    assert a is not None and b is not None
    d = s.admit(scopes, "m", 0, 0)
    assert d.refusal is not None and d.refusal.dimension is C
    assert d.retry_after_ms == 1_000
    s.settle(a.id, 0, 10)
    assert s.admit(scopes, "m", 0, 10).admitted
    assert s.used("key:k", "*", C, 10) == 2
    s.release(b.id)
    assert s.used("key:k", "*", C, 10) == 1


def test_concurrency_zero_never_admits() -> None:
    d = LimitState().admit(one(Limits(concurrency=0)), "m", 0, 0)
    assert d.refusal is not None and d.refusal.never


# --- several scopes and models ------------------------------------------------------------------


def test_a_refusal_by_the_org_leaves_nothing_on_the_key() -> None:
    s = LimitState()
    org = Tier("V0", Limits(rpm=100, tpm=100, concurrency=10))
    other_key = scopes_for(org_id="o", org_tier=org, key_id="k2")
    scopes = scopes_for(org_id="o", org_tier=org, key_id="k1")
    assert s.admit(other_key, "m", 90, 0).admitted  # the org now has 10 tokens left
    d = s.admit(scopes, "m", 50, 0)
    assert d.refusal is not None and d.refusal.scope == "org:o"
    assert s.used("key:k1", "*", T, 0) == 0
    assert s.used("key:k1", "*", M, 0) == 0
    assert s.used("key:k1", "*", C, 0) == 0


def test_a_narrowed_key_is_refused_while_the_org_has_room() -> None:
    s = LimitState()
    org = Tier("V3", Limits(concurrency=100))
    scopes = scopes_for(
        org_id="o", org_tier=org, key_id="k", key_tier=Tier("k", Limits(concurrency=1))
    )
    assert s.admit(scopes, "m", 0, 0).admitted
    d = s.admit(scopes, "m", 0, 0)
    assert d.refusal is not None and d.refusal.scope == "key:k"
    assert s.used("org:o", "*", C, 0) == 1


def test_per_model_limits_count_separately_and_in_addition() -> None:
    s = LimitState()
    scopes = one(Limits(rpm=10), {"glm-4.5": Limits(concurrency=1)})
    assert s.admit(scopes, "glm-4.5", 0, 0).admitted
    d = s.admit(scopes, "glm-4.5", 0, 0)
    assert d.refusal is not None and (d.refusal.model, d.refusal.dimension) == ("glm-4.5", C)
    assert "for glm-4.5" in rate_limited(d).message
    for _ in range(9):  # other models are not capped per model, only by the default group
        assert s.admit(scopes, "glm-4", 0, 0).admitted
    d = s.admit(scopes, "glm-4", 0, 0)
    assert d.refusal is not None and d.refusal.dimension is M  # 10 requests in all
    assert s.used("key:k", "*", M, 0) == 10


def test_retry_after_waits_for_every_refusing_counter() -> None:
    s = LimitState()
    scopes = one(Limits(rpm=1, tpm=100))
    assert s.admit(scopes, "m", 100, 0).admitted
    d = s.admit(scopes, "m", 1, 20_000)
    assert d.refusal is not None and d.refusal.dimension is M  # first in order
    assert d.retry_after_ms == 41_000


def test_a_scope_named_twice_is_charged_once_with_its_strictest_cap() -> None:
    s = LimitState()
    scopes = [Scope("org:o", Tier("a", Limits(tpm=100))), Scope("org:o", Tier("b", Limits(tpm=50)))]
    assert s.admit(scopes, "m", 50, 0).admitted
    assert s.used("org:o", "*", T, 0) == 50
    assert not s.admit(scopes, "m", 1, 0).admitted


def test_idle_counters_are_swept() -> None:
    s, scopes = LimitState(), one(Limits(rpm=5, tpm=5, concurrency=5))
    a = s.admit(scopes, "m", 1, 0).admission
    assert a is not None
    s.settle(a.id, 1, 0)
    assert s.sweep(30_000) == 0
    assert s.sweep(61_000) == 2 and s.counters == 0


# --- headers --------------------------------------------------------------------------------


def test_headers_of_an_admission_report_the_tightest_counter() -> None:
    s = LimitState()
    org = Tier("V1", Limits(rpm=100, tpm=1_000))
    scopes = scopes_for(org_id="o", org_tier=org, key_id="k", key_tier=Tier("k", Limits(rpm=5)))
    a = s.admit(scopes, "m", 300, 2_500).admission
    assert a is not None
    assert a.headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1m0.5s",  # bucket 2 (2-3 s) is counted until 63 s
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "700",
        "x-ratelimit-reset-tokens": "1m0.5s",
    }


def test_headers_of_a_refusal_carry_retry_after() -> None:
    s, scopes = LimitState(), one(Limits(tpm=100))
    assert s.admit(scopes, "m", 100, 0).admitted
    err = rate_limited(s.admit(scopes, "m", 10, 15_250))
    assert isinstance(err, RateLimited)
    assert (err.limit, err.scope) == ("tokens", "key:k")
    assert err.retry_after_seconds == 46.0  # 45.75 s rounded up
    assert err.headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "45.75s",
        "retry-after": "46",
    }


def test_no_headers_for_dimensions_without_a_limit() -> None:
    a = LimitState().admit(one(Limits(concurrency=3)), "m", 10, 0).admission
    assert a is not None and a.headers == {}


def test_rate_limited_needs_a_refusal() -> None:
    d = LimitState().admit(one(Limits(rpm=1)), "m", 0, 0)
    with pytest.raises(ValueError):
        rate_limited(d)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (20, "20ms"),
        (1_000, "1s"),
        (17_280, "17.28s"),
        (60_000, "1m0s"),
        (61_000, "1m1s"),
        (360_000, "6m0s"),
        (90_500, "1m30.5s"),
        (7_200_000, "2h0m0s"),
    ],
)
def test_reset_durations_use_openai_format(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@pytest.mark.parametrize(("ms", "secs"), [(0, 1), (1, 1), (1_000, 1), (1_001, 2), (45_750, 46)])
def test_retry_after_is_whole_seconds_at_least_one(ms: int, secs: int) -> None:
    assert retry_after_seconds(ms) == secs


def test_header_function_alone() -> None:
    assert rate_limit_headers(Status(10, 3, 1500), None, 1) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "1.5s",
        "retry-after": "1",
    }


# --- properties: any interleaving, the limits hold ---------------------------------------------

RPM, TPM, CAP = 7, 100, 3

op = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 60), st.sampled_from(["k1", "k2"])),
    st.tuples(st.just("settle"), st.integers(0, 30), st.floats(0, 1)),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.integers(0, 45_000)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=80), st.sampled_from([1_000, 250, 60_000]))
def test_no_window_ever_holds_more_than_the_limit(ops: list[tuple], bucket_ms: int) -> None:
    """Over any interleaving, for every 60 s interval: admitted requests <= RPM, net tokens
    (reservation, less refunds; settlements at or under it) <= TPM, in flight <= cap. And the
    set is atomic: the keys' counters always add up to the organization's (key k2 is narrowed,
    so refusals come from either side)."""
    s = LimitState(window_ms=60_000, bucket_ms=bucket_ms)
    org = Tier("o", Limits(rpm=RPM, tpm=TPM, concurrency=CAP))
    narrow = {"k1": None, "k2": Tier("k2", Limits(rpm=3, tpm=40, concurrency=2))}
    now = 0
    log: list[list[int]] = []  # [admitted at, net tokens] for each admission
    open_: list[tuple[str, int]] = []  # (admission id, index into log)
    for kind, *args in ops:
        if kind == "advance":
            now += args[0]
        elif kind == "admit":
            scopes = scopes_for(org_id="o", org_tier=org, key_id=args[1], key_tier=narrow[args[1]])
            d = s.admit(scopes, "m", args[0], now)
            if d.admission is not None:
                log.append([now, args[0]])
                open_.append((d.admission.id, len(log) - 1))
            assert len(open_) <= CAP
            assert s.used("org:o", "*", C, now) == len(open_)
        elif open_:
            admission_id, i = open_.pop(args[0] % len(open_))
            if kind == "settle":
                actual = int(log[i][1] * args[1])
                assert s.settle(admission_id, actual, now)
                log[i][1] = actual
            else:
                assert s.release(admission_id)
                log[i][1] = 0
        for dim in (M, T, C):
            keys = s.used("key:k1", "*", dim, now) + s.used("key:k2", "*", dim, now)
            assert keys == s.used("org:o", "*", dim, now)
        assert s.used("key:k2", "*", C, now) <= 2  # the narrowed key's own cap
    for start, _ in log:
        inside = [tokens for t, tokens in log if start <= t < start + 60_000]
        assert len(inside) <= RPM
        assert sum(inside) <= TPM


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 200), st.integers(0, 20_000)), max_size=60
    )
)
def test_usage_matches_a_reference_model_with_overage(
    steps: list[tuple[int, int, int]],
) -> None:
    """Settlements above the reservation: the counter equals a model that charges the
    reservation at admission, corrects it at settlement, and forgets after the window; and a
    request is admitted exactly when the model says it fits."""
    s, scopes = LimitState(), one(Limits(tpm=TPM))
    now = 0
    charges: list[list[int]] = []  # [bucket-aligned time, tokens]

    def model_used() -> int:
        bucket = now // 1_000
        return sum(tok for t, tok in charges if t // 1_000 >= bucket - 60)

    for reserve, actual, advance in steps:
        fits = model_used() + reserve <= TPM
        d = s.admit(scopes, "m", reserve, now)
        assert d.admitted == fits
        if d.admission is not None:
            charge = [now, reserve]
            charges.append(charge)
            now += advance
            s.settle(d.admission.id, actual, now)
            if actual <= reserve:
                if charge[0] // 1_000 >= now // 1_000 - 60:
                    charge[1] = actual
            else:
                charges.append([now, actual - reserve])
        else:
            now += advance
        assert s.used("key:k", "*", T, now) == model_used()
