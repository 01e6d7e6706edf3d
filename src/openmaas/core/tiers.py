"""Rate-limit tiers: named bundles of limits, per organization and narrowed per key.

A :class:`Limits` is three caps, each optional (``None`` means unlimited):

* ``rpm``: requests admitted per minute;
* ``tpm``: tokens per minute (reserved at admission, corrected at settlement);
* ``concurrency``: requests in flight at once (Zhipu's unit).

A :class:`Tier` bundles a default :class:`Limits`, which counts every request of the scope
whatever the model, and optional per-model :class:`Limits`, which count only that model's
requests on separate counters. Both must admit. An organization has a tier; a key may carry
a narrower one, and the key's effective tier is the minimum of the two in every dimension
(:meth:`Tier.narrow`). A request counts against the key's scope *and* the organization's scope
(:func:`scopes_for`); the limiter admits it only when every counter of every scope admits.

A tier's ``weight`` is an organization's share of a busy engine's slots against other
organizations' (``engines/slots/fair.py``, docs/limits.md "Fair sharing"): the organization's
tier's counts, not a key's.

Everything here is immutable data; nothing reads a clock or holds state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ALL_MODELS = "*"
"""The model name of a scope's default counters (every model counts against them)."""


def _min_cap(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps of one counter group; ``None`` in a dimension means no limit there."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrency"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, not {value!r}")

    @property
    def is_unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None

    def narrow(self, other: Limits) -> Limits:
        """The stricter of the two in each dimension."""
        return Limits(
            rpm=_min_cap(self.rpm, other.rpm),
            tpm=_min_cap(self.tpm, other.tpm),
            concurrency=_min_cap(self.concurrency, other.concurrency),
        )


UNLIMITED = Limits()

MAX_WEIGHT = 1000
"""The largest tier ``weight``: a thousand times another organization's share is plenty."""


@dataclass(frozen=True, slots=True)
class Tier:
    """A named bundle: ``limits`` for all traffic of a scope, ``models`` for one model each,
    and ``weight``, the organization's share of a busy engine's slots (1: an equal share; 2:
    twice that of an organization of weight 1)."""

    name: str
    limits: Limits = UNLIMITED
    models: Mapping[str, Limits] = field(default_factory=dict)
    weight: int = 1

    def __post_init__(self) -> None:
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be an integer from 1 to {MAX_WEIGHT}, not {weight!r}")
        if ALL_MODELS in self.models:
            raise ValueError(f"'{ALL_MODELS}' is reserved for the tier's default limits")
        # Freeze the mapping so a Tier can be shared safely between requests.
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def narrow(self, other: Tier, name: str | None = None) -> Tier:
        """The stricter of ``self`` and ``other``: in every dimension, for every model."""
        models = {
            model: self.models.get(model, UNLIMITED).narrow(other.models.get(model, UNLIMITED))
            for model in set(self.models) | set(other.models)
        }
        return Tier(
            name=name if name is not None else f"{self.name}∧{other.name}",
            limits=self.limits.narrow(other.limits),
            models=models,
            weight=min(self.weight, other.weight),
        )

    def counter_limits(self, model: str) -> list[tuple[str, Limits]]:
        """The counter groups a request for ``model`` counts against, as ``(model key, caps)``.

        The default group is keyed :data:`ALL_MODELS`; a per-model group is keyed by the model
        name. Groups without any cap are left out: nothing needs counting there.
        """
        groups: list[tuple[str, Limits]] = []
        if not self.limits.is_unlimited:
            groups.append((ALL_MODELS, self.limits))
        per_model = self.models.get(model)
        if per_model is not None and not per_model.is_unlimited:
            groups.append((model, per_model))
        return groups


@dataclass(frozen=True, slots=True)
class Scope:
    """One party a request counts against (``"key:…"`` or ``"org:…"``) and its tier."""

    key: str
    tier: Tier


def scopes_for(
    *, org_id: str, org_tier: Tier, key_id: str, key_tier: Tier | None = None
) -> list[Scope]:
    """The scopes of a request made with key ``key_id`` of organization ``org_id``.

    The key's scope gets the organization's tier narrowed by the key's own (if any); the
    organization's scope gets the organization's tier, shared by all its keys.
    """
    effective = org_tier if key_tier is None else org_tier.narrow(key_tier)
    return [Scope(f"key:{key_id}", effective), Scope(f"org:{org_id}", org_tier)]


def default_tiers() -> dict[str, Tier]:
    """Example tiers V0–V3, growing roughly 5× per step; operators define their own.

    Concurrency is the main unit (as on Zhipu's platform); RPM and TPM bound bursts.
    """
    return {
        "V0": Tier("V0", Limits(rpm=60, tpm=100_000, concurrency=5)),
        "V1": Tier("V1", Limits(rpm=300, tpm=500_000, concurrency=20)),
        "V2": Tier("V2", Limits(rpm=1_500, tpm=2_500_000, concurrency=100)),
        "V3": Tier("V3", Limits(rpm=6_000, tpm=10_000_000, concurrency=500)),
    }
