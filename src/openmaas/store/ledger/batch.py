"""What ``store/ledger/log.py``'s group-committed batches are made of: the jobs waiting for a
transaction, the extra writes they carry, and how an event is written to the log (its JSON
body and its idempotency key)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import Field, TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection

from openmaas.core.ledger import LeaseState
from openmaas.core.ledger_events import (
    Command,
    DrawLease,
    Event,
    Funded,
    GrantPack,
    GrantPromo,
    Hold,
    HoldPlaced,
    HoldResolved,
    LeaseDrawn,
    LeaseShrunk,
    LeaseSpent,
    OrgOpened,
    PackExpired,
    PackGranted,
    Release,
    SetCreditLimit,
    Settle,
    SpendLease,
    TopUp,
)
from openmaas.store.rows import Delete, Insert

EVENT = TypeAdapter(Annotated[Event, Field(discriminator="kind")])


def event_json(event: Event) -> str:
    """The event's body in ``ledger_events``: pydantic's JSON of it (``EVENT``), the one
    read back. A request's settlement, written once per request, is serialized by orjson,
    which writes the same bytes for it (plain dataclasses of ints, strings and bools;
    ``tests/store/test_ledger_store.py`` compares them) at less CPU."""
    if type(event) is LeaseSpent or type(event) is HoldResolved:
        return orjson.dumps(event).decode()
    return EVENT.dump_json(event).decode()


Caught = tuple[bool, list[tuple[int, str]]]
"""An optimistic batch's write: whether it committed, and the events (seq and body) other
processes appended after the one it was decided on, as far as the write read them."""

Appended = tuple[int | None, int]
"""A commuting batch's write: the log's new last event (None: not written, the fence had
moved), and the fence. Its events go numbered after the last one this process applied, and
the writer moves them on past whatever other processes appended meanwhile."""

Also = Callable[[AsyncConnection, tuple[Event, ...]], Awaitable[None]]
"""Extra writes that commit or roll back with a command's events."""


Rows = Callable[[tuple[Event, ...]], Iterable[Insert | Delete]]
"""Rows a command adds or deletes with its events (given the events, ``()`` for a repeat),
written together with every other command's of the batch: the hot path's writes. A batch
must not insert and delete the same row (the inserts are written first). It may be asked
more than once (a try that rolled back, then the one that commits): the last answer is
the one written."""


def idempotency_key(event: Event) -> str | None:
    """The key that makes appending ``event`` twice impossible (None: repeatable)."""
    if type(event) is LeaseSpent:  # the hot path: one per leased request
        return f"resolved:{event.request_id}"
    if isinstance(event, OrgOpened):
        return f"org:{event.org}"
    if isinstance(event, Funded):
        return f"funded:{event.funding_id}"
    if isinstance(event, PackGranted):
        return f"pack:{event.pack_id}"
    if isinstance(event, PackExpired):
        return f"expired:{event.pack_id}"
    if isinstance(event, HoldPlaced):
        return f"hold:{event.request_id}"
    if isinstance(event, HoldResolved | LeaseSpent):  # a request is settled once, either way
        return f"resolved:{event.request_id}"
    if isinstance(event, LeaseDrawn):
        return f"lease:{event.lease_id}"
    return None


def event_rows(
    events: list[tuple[int, Event]], at_ms: int, unit_of: Callable[[str], str]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The ``ledger_events`` and ``ledger_entries`` rows of ``events`` (each with its seq),
    as tuples in the writers' ``EVENT_COLUMNS`` and ``ENTRY_COLUMNS`` order; ``unit_of``
    names an account's unit."""
    events_out: list[tuple[Any, ...]] = []
    entries_out: list[tuple[Any, ...]] = []
    for seq, event in events:
        request_id = getattr(event, "request_id", None)
        events_out.append(
            (seq, at_ms, event.kind, getattr(event, "org", None), request_id,
             idempotency_key(event), event_json(event))
        )  # fmt: skip
        for transfer in getattr(event, "transfers", ()):
            entries_out.append(
                (seq, at_ms, transfer.debit, transfer.credit, transfer.amount,
                 unit_of(transfer.debit), request_id)
            )  # fmt: skip
    return events_out, entries_out


def from_lease(event: Event) -> bool:
    """Whether ``event`` settles a request from its lease alone (nothing beyond what it
    reserved there, from the organization's balance or the shortfall)."""
    return type(event) is LeaseSpent and event.charged == event.from_promo + event.from_cash


def raises_fence(
    appended: Iterable[tuple[int, Event]], leases: Mapping[str, LeaseState], instance_id: str | None
) -> bool:
    """Whether ``appended`` settles a request from, or shrinks, a lease the process
    ``instance_id`` did not draw (it recovers a dead process): that sends the owner's
    commuting appends back, should it still run (``LedgerStore._commuting``)."""
    for _, event in appended:
        if type(event) is LeaseSpent or type(event) is LeaseShrunk:
            lease = leases.get(event.lease_id)
            if lease is None or lease.instance_id != instance_id:
                return True
    return False


def request_of(command: Command | None) -> str | None:
    """The request a command settles (or holds for): its ``resolved:`` key's id."""
    if isinstance(command, SpendLease | Settle | Release | Hold):
        return command.request_id
    return None


def org_of(command: Command) -> str | None:
    if type(command) is SpendLease:  # the hot path, first
        return None
    if isinstance(command, Hold | TopUp | GrantPromo | GrantPack | SetCreditLimit | DrawLease):
        return command.org
    return None


@dataclass(slots=True)
class Job:
    """A command (or plain writes) waiting for the next group-committed transaction."""

    command: Command | None  # None: only ``also`` and ``rows``
    also: Also | None
    rows: Rows | None
    future: asyncio.Future[tuple[Event, ...]]

    def settle(self, outcome: tuple[Event, ...] | BaseException) -> None:
        if self.future.done():
            return
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


def job_writes(
    batch: Iterable[Job], outcomes: Iterable[tuple[Event, ...] | Exception]
) -> list[Insert | Delete]:
    """The rows of every job the batch answered (``Job.rows`` given its events), in order."""
    writes: list[Insert | Delete] = []
    for job, outcome in zip(batch, outcomes, strict=True):
        if job.rows is not None and not isinstance(outcome, Exception):
            writes.extend(job.rows(outcome))
    return writes
