"""Tiers (core/tiers.py): bundles of limits, narrowed per key, per model where configured."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.tiers import (
    ALL_MODELS,
    MAX_WEIGHT,
    UNLIMITED,
    Limits,
    Scope,
    Tier,
    default_tiers,
    scopes_for,
)

caps = st.none() | st.integers(min_value=0, max_value=10_000)
limits = st.builds(Limits, rpm=caps, tpm=caps, concurrency=caps)


def test_narrow_takes_the_stricter_cap_per_dimension() -> None:
    org = Limits(rpm=100, tpm=10_000, concurrency=None)
    key = Limits(rpm=10, tpm=None, concurrency=3)
    assert org.narrow(key) == Limits(rpm=10, tpm=10_000, concurrency=3)


def test_unlimited_is_the_identity_of_narrowing() -> None:
    some = Limits(rpm=5, tpm=None, concurrency=0)
    assert some.narrow(UNLIMITED) == some == UNLIMITED.narrow(some)
    assert UNLIMITED.is_unlimited and not some.is_unlimited


@given(limits, limits)
def test_narrowing_is_commutative_and_never_loosens(a: Limits, b: Limits) -> None:
    n = a.narrow(b)
    assert n == b.narrow(a)
    for dim in ("rpm", "tpm", "concurrency"):
        got, x, y = getattr(n, dim), getattr(a, dim), getattr(b, dim)
        for cap in (x, y):
            if cap is not None:
                assert got is not None and got <= cap


@pytest.mark.parametrize("bad", [-1, 1.5, "10"])
def test_limits_reject_bad_caps(bad: object) -> None:
    with pytest.raises(ValueError):
        Limits(rpm=bad)  # type: ignore[arg-type]


def test_tier_narrowing_covers_models_of_either_side() -> None:
    org = Tier("V2", Limits(rpm=100), models={"glm-4": Limits(concurrency=10)})
    key = Tier("key", Limits(rpm=20, tpm=500), models={"glm-4.5": Limits(concurrency=1)})
    eff = org.narrow(key)
    assert eff.limits == Limits(rpm=20, tpm=500)
    assert eff.models["glm-4"] == Limits(concurrency=10)
    assert eff.models["glm-4.5"] == Limits(concurrency=1)
    assert eff.name == "V2∧key"
    assert org.narrow(key, name="custom").name == "custom"


def test_counter_limits_default_then_per_model() -> None:
    tier = Tier("V1", Limits(rpm=60), models={"glm-4": Limits(tpm=1000)})
    assert tier.counter_limits("glm-4") == [
        (ALL_MODELS, Limits(rpm=60)),
        ("glm-4", Limits(tpm=1000)),
    ]
    assert tier.counter_limits("other") == [(ALL_MODELS, Limits(rpm=60))]


def test_unlimited_groups_are_not_counted() -> None:
    tier = Tier("free-for-all", models={"m": UNLIMITED})
    assert tier.counter_limits("m") == []


def test_tier_rejects_the_reserved_model_name_and_is_frozen() -> None:
    with pytest.raises(ValueError):
        Tier("x", models={ALL_MODELS: Limits(rpm=1)})
    source = {"m": Limits(rpm=1)}
    tier = Tier("x", models=source)
    source["m"] = Limits(rpm=999)  # the caller's dict is copied, not shared
    assert tier.models["m"] == Limits(rpm=1)
    with pytest.raises(TypeError):
        tier.models["n"] = Limits()  # type: ignore[index]


def test_scopes_for_key_is_narrowed_and_org_is_not() -> None:
    org_tier = Tier("V1", Limits(rpm=300, concurrency=20))
    key_tier = Tier("k", Limits(concurrency=2))
    key_scope, org_scope = scopes_for(
        org_id="o1", org_tier=org_tier, key_id="k1", key_tier=key_tier
    )
    assert key_scope == Scope("key:k1", org_tier.narrow(key_tier))
    assert key_scope.tier.limits == Limits(rpm=300, concurrency=2)
    assert org_scope == Scope("org:o1", org_tier)


def test_scopes_for_key_without_its_own_tier_gets_the_org_tier() -> None:
    tier = default_tiers()["V0"]
    key_scope, org_scope = scopes_for(org_id="o", org_tier=tier, key_id="k")
    assert key_scope.tier is tier and org_scope.tier is tier


def test_default_tiers_grow_in_every_dimension() -> None:
    tiers = default_tiers()
    assert list(tiers) == ["V0", "V1", "V2", "V3"]
    ordered = [tiers[name].limits for name in tiers]
    for lower, higher in zip(ordered, ordered[1:], strict=False):
        for dim in ("rpm", "tpm", "concurrency"):
            assert getattr(lower, dim) < getattr(higher, dim)
    assert default_tiers() == tiers and default_tiers() is not tiers  # fresh, not shared


def test_a_tiers_weight_is_a_positive_integer_and_narrowing_keeps_the_smaller() -> None:
    assert Tier("t").weight == 1
    for bad in (0, -1, MAX_WEIGHT + 1, True, 1.5):
        with pytest.raises(ValueError):
            Tier("t", weight=bad)  # type: ignore[arg-type]
    assert Tier("a", weight=4).narrow(Tier("b", weight=2)).weight == 2
