"""The gateway's meter (the metrics) is told of every usage record written, in the same
place the record is made: also of one whose caller was cancelled while it was written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openmaas.catalog.served import ModelCatalog
from openmaas.core.termination import Termination
from openmaas.core.types import Usage
from openmaas.core.usage import UsageRecord
from openmaas.serving.gateway import Gateway
from tests.support.clock import ManualClock

RECORD = UsageRecord(
    "req_1", "key_1", "org_1", "m", "chat.completions", Usage(3, 0, 4),
    Termination.CLIENT_DISCONNECTED, 0, ttft_ms=5, latency_ms=9,
)  # fmt: skip


class _SlowAccountant:
    """Writes a record when told to (``release``), saying when it has begun."""

    def __init__(self) -> None:
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def finish(self, ticket: Any, record: UsageRecord) -> UsageRecord:
        self.writing.set()
        await self.release.wait()
        return record


class _Meter:
    def __init__(self) -> None:
        self.recorded_records: list[UsageRecord] = []

    def recorded(self, record: UsageRecord) -> None:
        self.recorded_records.append(record)

    def refused(self, endpoint: str, model: str, exc: BaseException) -> None:
        raise AssertionError("nothing was refused")


async def test_a_record_written_while_its_caller_is_cancelled_is_counted() -> None:
    accountant, meter = _SlowAccountant(), _Meter()
    gateway = Gateway(
        ModelCatalog([]),
        accountant,  # type: ignore[arg-type]
        ManualClock(),
        lambda: False,
        meter=meter,
    )
    finishing = asyncio.create_task(gateway.finish(None, RECORD))  # type: ignore[arg-type]
    await accountant.writing.wait()
    finishing.cancel()  # the client went away again while the record is written
    accountant.release.set()
    with pytest.raises(asyncio.CancelledError):
        await finishing
    assert meter.recorded_records == [RECORD]  # written, so counted
