"""The change feed (store/changes.py) on a real SQLite file: every audited change reaches the
subscribers once, ids that commit out of order are not missed, and a failing poll is retried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.store.audit import audit
from openmaas.store.changes import GAP_SECONDS, RESET, Change, ChangeFeed
from openmaas.store.database import migrate, open_database
from openmaas.store.schema import audit_log
from tests.support.clock import ManualClock


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The feed on both databases (the shared ``database`` fixture opens it)."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("new_pg_database")()
        return url
    return "sqlite+aiosqlite:///" + str(tmp_path / "feed.db")


async def change(database: AsyncEngine, action: str, target: str, id: int | None = None) -> None:
    async with database.begin() as conn:
        if id is None:
            await audit(conn, 0, "cli:test", action, target)
        else:  # as PostgreSQL may: an id handed out earlier, committed later
            await conn.execute(
                insert(audit_log).values(id=id, at_ms=0, actor="t", action=action, target=target)
            )


class Seen:
    def __init__(self) -> None:
        self.batches: list[list[Change]] = []

    async def __call__(self, changes: Sequence[Change]) -> None:
        self.batches.append(list(changes))

    @property
    def actions(self) -> list[tuple[str, str]]:
        return [(c.action, c.target) for batch in self.batches for c in batch]


async def test_changes_before_the_start_are_not_replayed_later_ones_are(
    database: AsyncEngine,
) -> None:
    await change(database, "key.create", "om1")
    feed, seen = ChangeFeed(database, ManualClock(), 0.5), Seen()
    feed.subscribe(seen)
    await feed.start()
    try:
        assert await feed.poll() == [] and seen.batches == []
        await change(database, "key.revoke", "om1")
        await change(database, "price.set", "glm-4/CNY")
        await feed.poll()
        assert seen.actions == [("key.revoke", "om1"), ("price.set", "glm-4/CNY")]
        await feed.poll()
        assert len(seen.batches) == 1  # nothing new, nothing told
    finally:
        await feed.stop()


async def test_the_feed_polls_by_itself(database: AsyncEngine) -> None:
    feed = ChangeFeed(database, ManualClock(), 0.01)
    told: list[Change] = []
    arrived = asyncio.Event()

    async def note(changes: Sequence[Change]) -> None:
        told.extend(changes)
        arrived.set()

    feed.subscribe(note)
    await feed.start()
    try:
        await change(database, "tier.set", "V1")
        await asyncio.wait_for(arrived.wait(), 30)
        assert [(c.action, c.target) for c in told] == [("tier.set", "V1")]
    finally:
        await feed.stop()


async def test_an_id_that_commits_after_a_higher_one_is_not_missed(database: AsyncEngine) -> None:
    feed, seen = ChangeFeed(database, ManualClock(), 0.5), Seen()
    feed.subscribe(seen)
    await feed.start()
    await change(database, "key.create", "om1", id=1)
    await change(database, "key.create", "om3", id=3)  # id 2 handed out, not committed yet
    await feed.poll()
    await change(database, "key.revoke", "om2", id=2)
    await feed.poll()
    assert seen.actions == [("key.create", "om1"), ("key.create", "om3"), ("key.revoke", "om2")]


async def test_a_gap_never_filled_is_given_up_as_a_reset(database: AsyncEngine) -> None:
    clock = ManualClock()
    feed, seen = ChangeFeed(database, clock, 0.5), Seen()
    feed.subscribe(seen)
    await feed.start()
    await change(database, "key.create", "om2", id=2)  # id 1: a change rolled back
    await feed.poll()
    clock.advance(GAP_SECONDS)
    await feed.poll()
    assert seen.batches[-1][-1].action == RESET and seen.batches[-1][-1].resets


async def test_a_failing_poll_is_retried_and_a_failing_subscriber_spares_the_others(
    database: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    feed, seen = ChangeFeed(database, clock, 0.5), Seen()

    async def broken(_changes: Sequence[Change]) -> None:
        raise RuntimeError("subscriber down")

    feed.subscribe(broken)
    feed.subscribe(seen)
    await feed.start()
    assert feed.current()
    await change(database, "key.revoke", "om1")
    down = [True]

    def fail(*_args: object) -> None:
        if down[0]:
            raise OSError("database down")

    event.listen(database.sync_engine, "before_cursor_execute", fail)
    await feed.poll_now()  # logged, not raised
    assert "polling the change feed failed" in caplog.text
    clock.advance(2.0)
    assert not feed.current()  # no successful poll lately: the key cache stops trusting memory
    down[0] = False
    await feed.poll_now()
    assert feed.current() and seen.actions == [("key.revoke", "om1")]


async def test_on_postgresql_a_change_committed_late_is_still_reported(
    new_pg_database: Callable[[], str],
) -> None:
    database = open_database(new_pg_database())
    await migrate(database)
    try:
        feed, seen = ChangeFeed(database, ManualClock(), 0.5), Seen()
        feed.subscribe(seen)
        await feed.start()
        async with database.connect() as slow:
            await slow.begin()
            await audit(slow, 0, "cli:a", "key.revoke", "om_slow")  # takes the lower id...
            await change(database, "price.set", "m/CNY")  # ...this one commits first
            await feed.poll()
            assert seen.actions == [("price.set", "m/CNY")]
            await slow.commit()
        await feed.poll()
        assert seen.actions == [("price.set", "m/CNY"), ("key.revoke", "om_slow")]
    finally:
        await database.dispose()
