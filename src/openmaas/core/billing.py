"""The billing rule for every way a request ends.

One pure function, ``billable_usage(termination, engine_usage, estimate)``: what a request
is charged for, in tokens, before prices (``core/prices.py``) and the ledger
(``core/ledger.py``) turn it into money. The table is in ``docs/billing.md``.

The rule in one sentence: **charge what the engine read and generated, by the engine's own
counts** (never an estimate when the engine's count exists), except where the request
failed on our side before any output, which is free. Concretely:

- ``finished``, ``length``: the engine's final usage.
- ``client_disconnected``: the engine's counts when it stopped (the prompt it read and
  every token it generated before it saw the cancellation, delivered or not). The client
  chose to leave; an engine that had not started reports zero and nothing is charged.
- ``key_revoked``: as ``client_disconnected``: the caller's side (its key's owner) ended it.
- ``engine_error``, ``timeout``, ``gateway_shutdown``, ``gateway_killed``: our side cut
  the request. With no completion token generated, nothing is charged (not even the prompt);
  after the first token, the engine's counts so far (the client received that output).
- ``rejected``: the engine refused the input; nothing is charged.
- ``content_filtered``: moderation cut the output (``docs/moderation.md``), as
  ``client_disconnected``: the prompt read and the tokens generated up to the cut,
  delivered or held back. A filtered *input* is refused before admission (no hold, no
  engine, no usage record) and costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from openmaas.core.termination import Termination
from openmaas.core.types import Usage


class Rule(StrEnum):
    """Why a request was charged what it was (stored with the settlement for audits)."""

    FULL = "full"  # the engine's final counts
    AS_COUNTED = "as_counted"  # the engine's counts when it stopped
    FREE_NO_OUTPUT = "free_no_output"  # failed on our side before the first token
    FREE_REJECTED = "free_rejected"  # the engine refused the input


CHARGED_AS_COUNTED = frozenset(
    {Termination.CLIENT_DISCONNECTED, Termination.KEY_REVOKED, Termination.CONTENT_FILTERED}
)
"""Ended by the client, by its key's revocation, or by a content filter on what the model
generated: the engine's counts, even with no output."""

FREE_WITHOUT_OUTPUT = frozenset(
    {
        Termination.ENGINE_ERROR,
        Termination.TIMEOUT,
        Termination.GATEWAY_SHUTDOWN,
        Termination.GATEWAY_KILLED,
    }
)
"""Ended by our side: free before the first completion token, counted after it."""


@dataclass(frozen=True, slots=True)
class BillingDecision:
    usage: Usage  # what to settle the hold with (all zero when free)
    rule: Rule
    estimated: bool  # True when no engine count existed and a tokenizer estimate was used

    @property
    def free(self) -> bool:
        return self.usage.prompt_tokens == 0 and self.usage.completion_tokens == 0


def billable_usage(
    termination: Termination,
    engine_usage: Usage | None,
    estimate: Usage | None = None,
) -> BillingDecision:
    """What a request that ended with ``termination`` is charged for.

    ``engine_usage`` is the engine's count (final, or as far as it got); ``None`` only when
    the engine reported nothing at all. ``estimate`` is a tokenizer count of what was read
    and delivered, used only then, and marked estimated.
    """
    usage, estimated = _source(engine_usage, estimate)
    if termination is Termination.REJECTED:
        return BillingDecision(Usage(), Rule.FREE_REJECTED, False)
    if termination in (Termination.FINISHED, Termination.LENGTH):
        return BillingDecision(usage, Rule.FULL, estimated)
    if termination in CHARGED_AS_COUNTED:
        return BillingDecision(usage, Rule.AS_COUNTED, estimated)
    if termination in FREE_WITHOUT_OUTPUT:
        if usage.completion_tokens == 0:
            return BillingDecision(Usage(), Rule.FREE_NO_OUTPUT, False)
        return BillingDecision(usage, Rule.AS_COUNTED, estimated)
    raise ValueError(f"no billing rule for termination {termination!r}")  # pragma: no cover


def _source(engine_usage: Usage | None, estimate: Usage | None) -> tuple[Usage, bool]:
    if engine_usage is not None:
        if min(engine_usage.prompt_tokens, engine_usage.completion_tokens) < 0:
            raise ValueError(f"negative token count in {engine_usage!r}")
        return engine_usage, engine_usage.estimated
    if estimate is not None:
        return replace(estimate, estimated=True), True
    return Usage(), False


def recovery_usage(checkpoint: Usage | None) -> BillingDecision:
    """What crash recovery settles an open request with on the next start.

    ``checkpoint`` is the engine's count as last written to the store while the request
    ran (at its first token, then periodically); ``None`` when the process died before
    any checkpoint. The request is billed as ``gateway_killed``: free without a
    completion token, else the checkpointed counts. A checkpoint can only lag the truth,
    so recovery may under-bill the last moments of a stream but never bills a guess.
    """
    return billable_usage(Termination.GATEWAY_KILLED, checkpoint)
