"""This process's leases on the ledger (``core/leases.py`` keeps the book, the ledger the
money): reserve a request's worst case in memory, draw a new lease when it does not fit (one
draw per organization at a time), give back what a replaced, idle or closed lease holds, and
close a dead instance's leases once its requests are settled (``docs/billing.md``, Leases)."""

from __future__ import annotations

import asyncio
import logging
import math

from openmaas.aio import finish_despite_cancellation
from openmaas.core.clock import Clock
from openmaas.core.errors import InsufficientBalance
from openmaas.core.ids import new_request_id
from openmaas.core.leases import LeaseBook, LeasePolicy, Shrink
from openmaas.core.ledger_events import DrawLease, ShrinkLease
from openmaas.store.ledger.log import LedgerStore

log = logging.getLogger("openmaas.billing")


class Leasing:
    """The leases of the serving instance ``instance_id``."""

    def __init__(
        self, ledger: LedgerStore, clock: Clock, policy: LeasePolicy, instance_id: str
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._instance_id = instance_id
        self._book = LeaseBook(policy, self._left)
        self._drawing: dict[str, asyncio.Future[bool]] = {}  # org -> the draw in flight
        self._no_lease_until: dict[str, float] = {}  # org -> monotonic time (refused)

    def _left(self, lease_id: str) -> int:
        lease = self._ledger.ledger.leases.get(lease_id)
        return 0 if lease is None or lease.closed else lease.left

    async def reserve(
        self,
        org: str,
        model: str,
        request_id: str,
        amount: int,
        now_ms: int,
        budget_scopes: tuple[str, ...],
    ) -> str | None:
        """Reserve ``amount`` micros of this process's lease for the organization, drawing a
        new lease when the request does not fit; the lease id, or None where the request
        needs a ledger hold of its own: a budget or a resource pack in play, or the ledger
        refused a lease (the balance is too low to lease)."""
        if amount <= 0:
            return None
        ledger = self._ledger.ledger
        if ledger.has_budget(budget_scopes) or ledger.has_usable_packs(org, model, now_ms):
            return None
        book = self._book
        while True:
            lease_id = book.reserve(org, request_id, amount, self._clock.monotonic())
            if lease_id is not None:
                return lease_id
            drawing = self._drawing.get(org)
            if drawing is None:
                break
            if not await asyncio.shield(drawing):
                return None  # refused just now: a hold of its own
        if self._clock.monotonic() < self._no_lease_until.get(org, -math.inf):
            return None
        drawing = asyncio.get_running_loop().create_future()
        self._drawing[org] = drawing
        try:
            granted = await finish_despite_cancellation(self._draw(org, amount))
        except BaseException:
            drawing.set_result(False)
            raise
        finally:
            del self._drawing[org]
        drawing.set_result(granted)
        if not granted:
            return None
        return book.reserve(org, request_id, amount, self._clock.monotonic())

    async def _draw(self, org: str, amount: int) -> bool:
        """Retire the organization's current lease (it gives back what nothing reserved)
        and draw a new one sized by ``LeaseBook.want``; False when the ledger refused (the
        balance is too low to lease: holds of their own for a while)."""
        book = self._book
        now = self._clock.monotonic()
        want, at_least = book.want(org, amount, now)
        lease_id = new_request_id()
        draw = DrawLease(lease_id, org, self._instance_id, want, at_least, book.policy.share_bp)
        await give_back(self._ledger, book.retire(org))  # first: what it gives back is free
        try:
            await self._ledger.execute(draw)
        except InsufficientBalance:
            self._no_lease_until[org] = now + book.policy.seconds / 4
            return False
        book.opened(org, lease_id, now)
        return True

    async def release(self, request_id: str) -> None:
        """The request ended (settled from its lease, or cancelled): its reservation goes,
        and a retiring lease whose last request it was closes."""
        await give_back(self._ledger, self._book.release(request_id))

    async def return_idle(self) -> int:
        """Close the leases idle for ``LeasePolicy.seconds``; how many."""
        shrinks = self._book.idle(self._clock.monotonic())
        await asyncio.gather(*(give_back(self._ledger, s) for s in shrinks))
        return len(shrinks)

    async def close(self) -> None:
        """Give back every lease (the process stops serving)."""
        await asyncio.gather(*(give_back(self._ledger, s) for s in self._book.close_all()))


async def give_back(ledger: LedgerStore, shrink: Shrink | None) -> None:
    """Send ``shrink`` to the ledger; a failure is logged and leaves the lease open (its
    process's death or restart closes it)."""
    if shrink is None:
        return
    try:
        await ledger.execute(ShrinkLease(shrink.lease_id, shrink.keep))
    except Exception:
        log.exception("failed to give back lease %s", shrink.lease_id)


async def close_leases_of(ledger: LedgerStore, instance_id: str) -> None:
    """Close the leases of a dead instance, once its requests are settled: what they still
    hold goes back to the organization."""
    state = await ledger.refresh()
    for lease_id in state.open_leases(instance_id=instance_id):
        await give_back(ledger, Shrink(lease_id, 0))
