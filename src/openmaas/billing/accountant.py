"""The accountant: admission and settlement, rate limits and the ledger around every request.

``Accountant.admit`` runs before an engine is called: rate limits first (key and organization,
per the tiers), then, for a model with a price in the organization's currency, the worst case
(prompt tokens + the most output the request allows) is reserved: in memory, against the
lease this process holds for the organization (``core/leases.py``: money the ledger set aside
for this process, drawn in bulk), or, where no lease applies (no serving instance, a budget
or a resource pack in play, or a balance too low to lease), by a ledger hold of its own. A
refusal raises ``RateLimited``, ``InsufficientBalance`` or ``BudgetExceeded`` and nothing was
reserved.

Exactly one of ``Accountant.finish`` (the engine ran: settle the hold, or spend from the
lease, with the billable usage in the same group-committed transaction as the usage record;
correct the TPM reservation) or ``Accountant.cancel`` (the engine never saw the request:
release everything) ends a ticket.

While a request runs, ``Accountant.checkpoint`` writes the engine's running count to the
``inflight`` table every ``checkpoint_seconds``. The row itself, owned by this process's
instance, is written with the hold for a held request; for a leased or unpriced one it is
written ``row_delay_seconds`` after admission (:data:`ROW_DELAY_SECONDS`), in the background,
so that a request answered sooner commits once (its settlement and usage record), not twice;
when a process dies, ``Accountant.recover`` (on start) and
``Accountant.sweep`` (periodically, in every other process) settle its requests by
``recovery_usage``, exactly once, then close its leases (see ``docs/billing.md``).
Organizations without a tier
and models without a price are neither limited nor charged: a fresh install meters usage
and refuses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.accounts.auth import Principal
from openmaas.aio import finish_despite_cancellation
from openmaas.billing.leasing import Leasing, close_leases_of
from openmaas.billing.limiter import Limiter
from openmaas.core.billing import billable_usage
from openmaas.core.clock import Clock
from openmaas.core.errors import InsufficientBalance
from openmaas.core.leases import LeasePolicy
from openmaas.core.ledger_events import (
    Event,
    ExpirePacks,
    Hold,
    HoldResolved,
    LeaseSpent,
    Release,
    Settle,
    SpendLease,
)
from openmaas.core.limits import Admission
from openmaas.core.money import Money
from openmaas.core.prices import AppliedPrice, PriceCatalog
from openmaas.core.termination import Termination
from openmaas.core.tiers import Scope, Tier, scopes_for
from openmaas.core.types import DataPolicy, Usage
from openmaas.core.usage import UsageRecord
from openmaas.store.billing import (
    InFlight,
    OrgTerms,
    checkpoint,
    forget_inflight,
    forget_recovered,
    inflight_owners,
    inflight_row,
    load_inflight,
    load_org_terms,
    load_owned_inflight,
    load_price_catalog,
    load_tiers,
)
from openmaas.store.changes import Change
from openmaas.store.instance import Liveness
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import insert_usage, usage_row, usage_rows
from openmaas.store.rows import Delete, Insert
from openmaas.store.schema import inflight, usage_records

log = logging.getLogger("openmaas.billing")

ROW_DELAY_SECONDS = 0.1
"""How long after admission a leased or unpriced request's in-flight row is written (at most
``checkpoint_seconds``). A request answered sooner writes none: one transaction instead of
two. A ``kill -9`` within this time of a request's admission leaves it no usage record (nor
a charge: before its first checkpoint a killed request costs nothing either way)."""

DEFAULT_MAX_OUTPUT = 4096
"""The output a request without ``max_tokens`` may reserve when its engine has no window."""


@dataclass(frozen=True, slots=True)
class Terms:
    """The billing configuration as of one read of the database."""

    prices: PriceCatalog = field(default_factory=PriceCatalog)
    tiers: Mapping[str, Tier] = field(default_factory=dict)
    orgs: Mapping[str, OrgTerms] = field(default_factory=dict)

    def org(self, org_id: str) -> OrgTerms:
        return self.orgs.get(org_id) or OrgTerms()

    def scopes(self, principal: Principal) -> list[Scope]:
        """What the request counts against; empty when neither the organization nor the key
        has a tier (an unknown tier name counts as none)."""
        org_tier = self.tiers.get(self.org(principal.org_id).tier or "")
        key_tier = self.tiers.get(principal.tier or "")
        if org_tier is None and key_tier is None:
            return []
        if org_tier is None:
            return [Scope(f"key:{principal.key_id}", key_tier)]  # type: ignore[arg-type]
        return scopes_for(
            org_id=principal.org_id, org_tier=org_tier, key_id=principal.key_id, key_tier=key_tier
        )

    def share_weight(self, org_id: str) -> int:
        """The organization's weight in sharing an engine's slots: its tier's (1 without)."""
        tier = self.tiers.get(self.org(org_id).tier or "")
        return 1 if tier is None else tier.weight

    def price(self, principal: Principal, model: str, at_ms: int) -> AppliedPrice | None:
        return self.price_for(principal.org_id, model, at_ms)

    def price_for(self, org_id: str, model: str, at_ms: int) -> AppliedPrice | None:
        """The organization's price of ``model`` at ``at_ms``, with its discount."""
        price = self.prices.find(model, at_ms, self.org(org_id).currency)
        if price is None:
            return None
        return AppliedPrice(price, self.prices.discounts_bp.get(org_id, 0))


TERMS_ACTIONS = frozenset({"org.create", "org.update", "price.set", "tier.set"})
"""The audited actions that change what ``Terms`` holds."""


@dataclass(frozen=True, slots=True)
class _LoadedTerms:
    terms: Terms
    generation: int  # the accountant's generation when the read began
    started_at: float  # monotonic time the read began


@dataclass(slots=True)
class _TermsRead:
    generation: int
    started_at: float
    future: asyncio.Future[_LoadedTerms] = field(init=False)


@dataclass(slots=True)
class Ticket:
    """One admitted request's reservations; ended by ``finish`` or ``cancel``."""

    request: InFlight
    price: AppliedPrice | None
    limit: Admission | None
    data_policy: DataPolicy = DataPolicy.BURST  # the organization's, for the router
    share_weight: int = 1  # the organization's tier's weight, for the engine's fair queue
    prompt_logging: bool = False  # the organization's: the generation is logged in full
    last_checkpoint: float = 0.0  # monotonic time of admission, then of the last write
    pending: asyncio.Future[None] | None = None  # the row's last write, in the background
    row_due: bool = False  # the row waits to be written (``Accountant._schedule_row``)
    closed: bool = False

    @property
    def leased(self) -> bool:
        """Admitted against this process's lease (``request.lease_id``), not a hold."""
        return self.request.lease_id is not None

    @property
    def held(self) -> bool:
        """Priced, with a ledger hold of its own."""
        return self.price is not None and not self.leased


class InstanceRecovery(Protocol):
    """Something else a dead instance leaves behind (its async jobs), recovered by the
    sweep with its requests, under the dead instance's lock: exactly once."""

    async def owners(self) -> set[str]:
        """Instances that have something to recover if they die."""
        ...

    async def recover(self, instance_id: str) -> int:
        """Recover what the dead ``instance_id`` left; how many things."""
        ...


class Accountant:
    """Admits requests (rate limits, data policy, holds), checkpoints them while they run,
    settles them, and recovers what a killed process left in flight."""

    def __init__(
        self,
        database: AsyncEngine,
        ledger: LedgerStore,
        limiter: Limiter,
        clock: Clock,
        *,
        refresh_seconds: float = 2.0,
        checkpoint_seconds: float = 1.0,
        liveness: Liveness | None = None,
        recoveries: Sequence[InstanceRecovery] = (),
        leases: LeasePolicy | None = None,
        row_delay_seconds: float = ROW_DELAY_SECONDS,
    ) -> None:
        self.ledger = ledger
        self._database = database
        self._limiter = limiter
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._checkpoint_seconds = checkpoint_seconds
        self._row_delay_seconds = min(row_delay_seconds, checkpoint_seconds)
        self._liveness = liveness  # None: rows without an owner (no serving instance)
        self._instance_id = liveness.instance_id if liveness is not None else None
        self._recoveries = tuple(recoveries)  # what else the sweep recovers of the dead
        self._generation = 0  # moved by invalidate(): terms read before are stale
        self._loaded: _LoadedTerms | None = None
        self._refreshing: _TermsRead | None = None  # the one read of the terms in flight
        # Leases need an instance to own them (its death is how they come back).
        self._leasing = (
            Leasing(ledger, clock, leases, liveness.instance_id)
            if leases is not None and leases.seconds > 0 and liveness is not None
            else None
        )
        # Tickets whose in-flight row is due, by the loop's time, in admission order; one
        # timer for all of them (one per request cost more than the rest of admission).
        self._rows_due: deque[tuple[float, Ticket]] = deque()
        self._rows_timer: asyncio.TimerHandle | None = None

    # -- configuration --------------------------------------------------------------

    async def terms(self) -> Terms:
        """Prices, tiers and organization terms, from memory. Re-read after ``invalidate``
        (this process's own changes, and the change feed's from any process: the next
        request waits for the read), and in the background every ``refresh_seconds`` as a
        safety net for changes made beside OpenMaaS (``0``: before every request). One read
        at a time: every caller that needs a fresh one awaits the same read."""
        now = self._clock.monotonic()
        if self._refresh_seconds <= 0:
            return await self._fresh_terms(self._generation, now)
        loaded = self._loaded
        if loaded is None or loaded.generation != self._generation:
            return await self._fresh_terms(self._generation, -math.inf)
        if now - loaded.started_at >= self._refresh_seconds and self._refreshing is None:
            self._start_refresh()  # the safety net: this request does not wait for it
        return loaded.terms

    def invalidate(self) -> None:
        """Forget the cached terms (after an admin change in this process, or one the
        change feed reports): the next request reads them again."""
        self._generation += 1

    async def apply_changes(self, changes: Sequence[Change]) -> None:
        """A change-feed subscriber: a change of a price, a tier or an organization re-reads
        the terms now, so that requests seldom wait for it."""
        if any(change.resets or change.action in TERMS_ACTIONS for change in changes):
            self.invalidate()
            await self.terms()
        if self._leasing is not None and any(
            change.resets or change.action.startswith("billing.") for change in changes
        ):  # a budget, a pack, a top-up: admission against a lease reads them from memory
            await self.ledger.refresh()

    async def _fresh_terms(self, generation: int, since: float) -> Terms:
        """Terms read by a refresh begun at or after ``since`` with ``generation`` (joining
        the one in flight when it qualifies, else waiting it out and starting the next)."""
        while True:
            loaded = self._loaded
            if (
                loaded is not None
                and loaded.generation >= generation
                and loaded.started_at >= since
            ):
                return loaded.terms
            flight = self._refreshing
            if flight is None or flight.future.done():
                flight = self._start_refresh()
            if flight.generation >= generation and flight.started_at >= since:
                return (await asyncio.shield(flight.future)).terms
            await asyncio.gather(asyncio.shield(flight.future), return_exceptions=True)

    def _start_refresh(self) -> _TermsRead:
        flight = _TermsRead(self._generation, self._clock.monotonic())
        flight.future = asyncio.ensure_future(self._read_terms(flight))
        self._refreshing = flight
        flight.future.add_done_callback(lambda _: self._refreshed(flight))
        return flight

    async def _read_terms(self, flight: _TermsRead) -> _LoadedTerms:
        async with self._database.connect() as conn:
            terms = Terms(
                await load_price_catalog(conn), await load_tiers(conn), await load_org_terms(conn)
            )
        self._loaded = _LoadedTerms(terms, flight.generation, flight.started_at)
        return self._loaded

    def _refreshed(self, flight: _TermsRead) -> None:
        if self._refreshing is flight:
            self._refreshing = None
        if not flight.future.cancelled() and flight.future.exception() is not None:
            log.warning("reading the billing terms failed: %s", flight.future.exception())

    # -- a request ------------------------------------------------------------------

    async def admit(
        self,
        principal: Principal,
        model: str,
        endpoint: str,
        request_id: str,
        *,
        count_prompt: Callable[[], Awaitable[int]],
        max_tokens: int | None,
        context_length: int | None,
    ) -> Ticket:
        """Reserve rate limits and the worst-case charge, or raise having reserved nothing.
        ``count_prompt`` is called only when a price or a token limit needs the count."""
        terms = await self.terms()
        now_ms = self._clock.now_ms()
        price = terms.price(principal, model, now_ms)
        scopes = terms.scopes(principal)
        wants_tokens = price is not None or any(
            limits.tpm is not None
            for scope in scopes
            for _, limits in scope.tier.counter_limits(model)
        )
        prompt = await count_prompt() if wants_tokens else 0
        if max_tokens is not None:  # an engine never generates more than its window
            max_output = max_tokens if context_length is None else min(max_tokens, context_length)
        elif context_length is not None:
            max_output = max(context_length - prompt, 0)
        else:
            max_output = DEFAULT_MAX_OUTPUT
        instance_id = self._instance_id
        request = InFlight(
            request_id, principal.key_id, principal.org_id, model, endpoint, now_ms, None,
            instance_id,
        )  # fmt: skip
        limit = (
            await self._limiter.admit(scopes, model, prompt + max_output, now_ms)
            if scopes
            else None
        )
        org_terms = terms.org(principal.org_id)
        ticket = Ticket(
            request,
            price,
            limit,
            org_terms.data_policy,
            terms.share_weight(principal.org_id),
            org_terms.prompt_logging,
            last_checkpoint=self._clock.monotonic(),
        )
        quote = None if price is None else price.worst_case(prompt, max_output)
        budget_scopes = (f"key:{principal.key_id}", f"org:{principal.org_id}")
        if quote is not None:
            reserved = quote.micros  # one rounding, read twice
            try:
                lease_id = (
                    None
                    if self._leasing is None
                    else await self._leasing.reserve(
                        principal.org_id, model, request_id, reserved, now_ms, budget_scopes
                    )
                )
            except BaseException:
                await self.cancel(ticket)
                raise
            if lease_id is not None:  # built whole: ``dataclasses.replace`` costs 3x more
                ticket.request = InFlight(
                    request_id, principal.key_id, principal.org_id, model, endpoint, now_ms,
                    None, instance_id, lease_id, reserved,
                )  # fmt: skip
        if quote is None or ticket.leased:
            if self._checkpoint_seconds > 0:  # so that even a kill before the first token
                self._schedule_row(ticket)  # leaves a usage record
            return ticket
        hold = Hold(request_id, principal.org_id, quote, now_ms, budget_scopes)

        def remember(events: tuple[Event, ...]) -> tuple[Insert, ...]:
            return (inflight_row(request),) if events else ()  # committed with the hold

        try:
            await self.ledger.execute(hold, rows=remember)
        except InsufficientBalance as exc:  # the ledger knows ids; people know names
            await self.cancel(ticket)
            name = terms.org(principal.org_id).name
            if not name:
                raise
            raise InsufficientBalance(
                exc.org_id, exc.needed_micros, exc.available_micros, exc.currency, name
            ) from None
        except BaseException:  # refused; or placed, and then the caller went away
            await self.cancel(ticket)
            raise
        return ticket

    async def return_idle_leases(self) -> int:
        """Close the leases that admitted nothing for ``LeasePolicy.seconds`` (run every
        half of that); returns how many."""
        return 0 if self._leasing is None else await self._leasing.return_idle()

    async def close(self) -> None:
        """The process stops serving: give back every lease (one whose requests are still
        open keeps what they reserved and closes when the last of them ends)."""
        if self._leasing is not None:
            await self._leasing.close()

    @asynccontextmanager
    async def counting(self, principal: Principal, model: str) -> AsyncIterator[Admission | None]:
        """Admit a token count (``POST /v1/messages/count_tokens``) for the body of the
        ``with``: it costs engine work, so it counts against the request limits (RPM and
        concurrency) as one request of no tokens, or raises ``RateLimited`` having counted
        nothing. It holds no money, is never charged and writes no usage record."""
        scopes = (await self.terms()).scopes(principal)
        if not scopes:
            yield None
            return
        admission = await self._limiter.admit(scopes, model, 0, self._clock.now_ms())
        try:
            yield admission
        finally:
            await self._limiter.settle(admission, 0, self._clock.now_ms())

    def checkpoint(self, ticket: Ticket, usage: Callable[[], Usage]) -> None:
        """Note the engine's running count: written at most every ``checkpoint_seconds``
        from admission, in the background (one write at a time per request). A request
        shorter than that writes none: a kill loses at most that much of its generation."""
        if ticket.closed or self._checkpoint_seconds <= 0:
            return
        now = self._clock.monotonic()
        if now - ticket.last_checkpoint < self._checkpoint_seconds or (
            ticket.pending is not None and not ticket.pending.done()
        ):
            return
        ticket.last_checkpoint = now
        self._write_row(ticket)  # not written yet (its delay is real time): first the row
        self._schedule_checkpoint(ticket, usage())

    def _schedule_row(self, ticket: Ticket) -> None:
        """Write the request's in-flight row ``row_delay_seconds`` from now, unless it ends
        first: then its settlement is its only write. The rows due are queued in admission
        order behind one timer (``_write_due_rows``), not a timer each."""
        if self._row_delay_seconds <= 0:
            self._schedule_checkpoint(ticket, None)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + self._row_delay_seconds
        ticket.row_due = True
        self._rows_due.append((due, ticket))
        if self._rows_timer is None:
            self._rows_timer = loop.call_at(due, self._write_due_rows)

    def _write_due_rows(self) -> None:
        """Write the rows that are due (of requests still running), then wait for the next."""
        self._rows_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + 0.001  # the loop may run a timer a hair before its time
        due = self._rows_due
        while due and due[0][0] <= now:
            self._write_row(due.popleft()[1])
        if due:
            self._rows_timer = loop.call_at(due[0][0], self._write_due_rows)

    def _write_row(self, ticket: Ticket) -> None:
        if ticket.row_due:
            ticket.row_due = False
            self._schedule_checkpoint(ticket, None)

    def _schedule_checkpoint(self, ticket: Ticket, usage: Usage | None) -> None:
        """Write the request's in-flight row (``usage`` None: admitted, nothing counted yet)
        after any write still pending for it, so rows never go back in time."""
        previous = ticket.pending
        ticket.pending = asyncio.ensure_future(self._write_checkpoint(ticket, usage, previous))

    async def _write_checkpoint(
        self, ticket: Ticket, usage: Usage | None, previous: asyncio.Future[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        at_ms = self._clock.now_ms()
        request = ticket.request

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> None:
            if usage is not None:
                await checkpoint(conn, request.request_id, usage, at_ms)

        try:
            if usage is None:  # admitted: the row, in a multi-row insert with others
                await self.ledger.write(rows=lambda _: (inflight_row(request),))
            else:
                await self.ledger.write(write)
        except Exception:  # a missed checkpoint costs at most the interval on a crash
            log.exception("failed to checkpoint request %s", ticket.request.request_id)

    async def _stop_checkpoints(self, ticket: Ticket) -> None:
        ticket.closed = True
        ticket.row_due = False  # ended before its row was due: none is written
        if ticket.pending is not None:
            await asyncio.shield(ticket.pending)

    async def finish(self, ticket: Ticket, record: UsageRecord) -> UsageRecord:
        """The engine ran: settle by the billing rule and append the usage record, in one
        transaction; then release the request's reservation in its lease and correct the
        TPM reservation to the tokens actually used. All of it, even if the caller is
        cancelled meanwhile (a client hanging up): the cancellation comes after."""
        return await finish_despite_cancellation(self._finish(ticket, record))

    async def _finish(self, ticket: Ticket, record: UsageRecord) -> UsageRecord:
        limits: Awaitable[None] | None = None
        if ticket.limit is not None:
            limits = self._limiter.settle(
                ticket.limit, record.usage.total_tokens, self._clock.now_ms()
            )
            if self._limiter.remote:  # its round trip runs beside the ledger's commit
                limits = asyncio.ensure_future(limits)
        try:
            await self._stop_checkpoints(ticket)
            written = ticket.pending is not None  # its in-flight row (held: with the hold)
            if ticket.held:
                record = await self._settle(record)
            elif ticket.leased and ticket.price is not None:
                record = await self._spend(ticket.request, ticket.price, record, written)
            else:
                await self._append(record, written)
        finally:  # a failed write leaves the hold to recovery, never a slot taken forever
            if limits is not None:
                await limits
        return record

    async def _settle(self, record: UsageRecord) -> UsageRecord:
        decision = billable_usage(record.termination, record.usage)
        row, rows = _usage_rows(record, forget=True)
        cost: list[Money] = []

        def write(events: tuple[Event, ...]) -> tuple[Insert | Delete, ...]:
            resolved = next((e for e in events if isinstance(e, HoldResolved)), None)
            cost.clear()  # asked again after a try that rolled back: this one counts
            if resolved is None:
                return ()  # settled before: its usage record was written with it
            currency = self.ledger.ledger.orgs[record.org_id].currency
            cost.append(Money(resolved.charged, currency))
            row["cost_micros"], row["currency"] = resolved.charged, currency.value
            return rows

        await self.ledger.execute(Settle(record.request_id, decision.usage), rows=write)
        return _costed(record, cost[-1]) if cost else record

    async def _spend(
        self, request: InFlight, price: AppliedPrice, record: UsageRecord, written: bool
    ) -> UsageRecord:
        """Settle a request admitted against a lease, with its usage record, in one
        group-committed transaction; then its reservation goes (once settled: a failed
        write keeps it, so the lease never gives back money a settlement may still take)."""
        assert request.lease_id is not None
        decision = billable_usage(record.termination, record.usage)
        command = SpendLease(
            record.request_id, request.lease_id, price, decision.usage,
            request.reserved_micros or 0,
        )  # fmt: skip
        # The rows are built here, not under the ledger's lock: there only the charge is
        # filled in (the ledger refuses a price in another currency than the lease's).
        row, rows = _usage_rows(record, forget=written)
        charged: list[int] = []

        def write(events: tuple[Event, ...]) -> tuple[Insert | Delete, ...]:
            charged.clear()  # asked again after a try that rolled back: this one counts
            if not events:
                return ()  # settled before: its usage record was written with it
            spent = events[0]  # a spend decides one event, or none
            assert isinstance(spent, LeaseSpent)
            charged.append(spent.charged)
            row["cost_micros"], row["currency"] = spent.charged, price.currency.value
            return rows

        await self.ledger.execute(command, rows=write)
        if self._leasing is not None:
            await self._leasing.release(record.request_id)
        return _costed(record, Money(charged[-1], price.currency)) if charged else record

    async def _append(self, record: UsageRecord, written: bool) -> None:
        """An unpriced request's usage record, group-committed with other billing writes."""

        await self.ledger.write(rows=lambda _: usage_rows(record, forget=written))

    async def cancel(self, ticket: Ticket) -> None:
        """The engine never saw the request: release the hold, the lease's reservation and
        the limits (all of them, even if the caller is cancelled meanwhile)."""
        await finish_despite_cancellation(self._cancel(ticket))

    async def _cancel(self, ticket: Ticket) -> None:
        request_id = ticket.request.request_id

        def forget(_events: tuple[Event, ...]) -> tuple[Delete, ...]:
            return (Delete(inflight.c.request_id, request_id),)

        try:
            await self._stop_checkpoints(ticket)
            if ticket.held and request_id in self.ledger.ledger.holds:
                await self.ledger.execute(Release(request_id), rows=forget)
            elif ticket.pending is not None:  # an unpriced or leased request's row
                await self.ledger.write(rows=forget)
            if ticket.leased and self._leasing is not None:
                await self._leasing.release(request_id)
        finally:
            if ticket.limit is not None:
                await self._limiter.release(ticket.limit)

    # -- housekeeping ---------------------------------------------------------------

    async def recover(self) -> int:
        """On start, before serving: settle the requests left in flight by the rows without
        an owner (written before instances existed: stop old servers before upgrading), by
        every dead instance (``sweep``), and release holds that have no row. Without a
        liveness lock (no serving instance), only the rows without an owner. Returns how
        many requests were recovered."""
        recovered = await self._recover_owned(None)
        await self._release_holds_without_rows()
        return recovered + await self.sweep()

    async def sweep(self) -> int:
        """Recover the requests of every instance that died (its liveness lock is free),
        each by the one process that takes its lock; run every ``OPENMAAS_RECOVERY_SECONDS``.
        A live instance, or one another process is recovering, is left alone. The
        ``recoveries`` recover what else a dead instance left (its async jobs) with it."""
        if self._liveness is None:
            return 0
        async with self._database.connect() as conn:
            owners = await inflight_owners(conn)
        ledger = await self.ledger.refresh()
        leasing = {ledger.leases[lease_id].instance_id for lease_id in ledger.open_leases()}
        candidates = set(owners) | leasing | set(self._liveness.lock_files())  # died idle
        for recovery in self._recoveries:
            candidates |= await recovery.owners()
        candidates.discard(self._liveness.instance_id)
        recovered = 0
        for instance_id in sorted(candidates):
            lock = await self._liveness.claim(instance_id)
            if lock is None:
                continue  # alive, or being recovered by another process
            try:
                count = await self._recover_owned(instance_id)
                for recovery in self._recoveries:
                    await recovery.recover(instance_id)
            finally:  # recovered, or not (a failed write): the next sweep tries again
                await lock.release()
            if count:
                log.warning("recovered %d requests of dead instance %s", count, instance_id)
            recovered += count
        return recovered

    async def _recover_owned(self, owner: str | None) -> int:
        """Settle ``owner``'s rows by their last checkpoint, each with its usage record and
        the deletion of its row in one transaction, then close ``owner``'s leases. At most
        once per request even without the owner's lock: a settlement is a repeat once
        resolved (``resolved:<request id>``), and an unpriced request is recorded by whoever
        deletes its row."""
        async with self._database.connect() as conn:
            left = await load_owned_inflight(conn, owner)
        if not left:
            await self._close_leases_of(owner)
            return 0
        ledger = await self.ledger.refresh()  # after reading the rows: their holds are in it
        terms = await self.terms() if any(r.lease_id for r in left) else None
        for request in left:
            record = UsageRecord(
                request.request_id,
                request.key_id,
                request.org_id,
                request.model,
                request.endpoint,
                request.checkpoint or Usage(),
                Termination.GATEWAY_KILLED,
                request.started_at_ms,
                ttft_ms=None,
                latency_ms=0,
                error="the gateway process ended while the request ran",
            )
            if request.request_id in ledger.holds:
                await self._settle(record)  # billed by recovery_usage(checkpoint)
            elif ledger.settled(request.request_id):
                continue  # settled: its settler recorded it
            elif terms is not None and request.lease_id in ledger.leases:
                price = terms.price_for(request.org_id, request.model, request.started_at_ms)
                if price is None:  # its price was removed since: recorded unpriced
                    await self._record_unpriced(record)
                else:
                    await self._spend(request, price, record, True)
            else:
                await self._record_unpriced(record)

        async def rest(conn: AsyncConnection, _events: tuple[Event, ...]) -> None:
            ids = [request.request_id for request in left]  # only those read: a row
            await forget_recovered(conn, ids)  # whose hold was resolved already

        await self.ledger.write(rest)
        await self._close_leases_of(owner)
        return len(left)

    async def _close_leases_of(self, owner: str | None) -> None:
        """Close the leases of a dead instance, once its requests are settled."""
        if owner is not None:
            await close_leases_of(self.ledger, owner)

    async def _record_unpriced(self, record: UsageRecord) -> None:
        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> None:
            if await forget_inflight(conn, record.request_id):  # not recovered by another
                await insert_usage(conn, record)

        await self.ledger.write(write)

    async def _release_holds_without_rows(self) -> None:
        """Release the open holds that have no ``inflight`` row (impossible by construction:
        a hold and its row commit together). The ledger is read before the rows, so a hold
        placed meanwhile by a live process is not in it, and one resolved meanwhile makes
        the release a repeat."""
        ledger = await self.ledger.refresh()
        open_holds = ledger.open_holds()
        if not open_holds:
            return
        async with self._database.connect() as conn:
            known = {request.request_id for request in await load_inflight(conn)}
        for request_id in open_holds:
            if request_id not in known:
                await self.ledger.execute(Release(request_id))

    async def expire_packs(self) -> int:
        """Move what is left of expired resource packs out; returns how many expired."""
        return len(await self.ledger.execute(ExpirePacks(self._clock.now_ms())))


_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))


def _usage_rows(
    record: UsageRecord, *, forget: bool
) -> tuple[dict[str, object], tuple[Insert | Delete, ...]]:
    """``usage_rows(record)`` and the record's row in it, to fill in its cost later."""
    row = usage_row(record)
    usage = Insert(usage_records, row)
    return row, (usage, Delete(inflight.c.request_id, record.request_id)) if forget else (usage,)


def _costed(record: UsageRecord, cost: Money) -> UsageRecord:
    """``dataclasses.replace(record, cost=cost)`` at a third of its CPU (once per settled
    request): the fields copied as they are, none checked again."""
    costed = object.__new__(UsageRecord)
    for name in _RECORD_FIELDS:
        object.__setattr__(costed, name, getattr(record, name))
    object.__setattr__(costed, "cost", cost)
    return costed
