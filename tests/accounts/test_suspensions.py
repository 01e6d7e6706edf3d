"""Suspended organizations (accounts/suspensions.py) on SQLite and PostgreSQL: suspending
and resuming are audited once, and the request path's memory follows the change feed."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaas.accounts.admin import NewOrganization
from openmaas.accounts.suspensions import (
    ORG_RESUME,
    ORG_SUSPEND,
    OrganizationSuspended,
    SuspendedOrgs,
)
from openmaas.core.errors import NotFound, PermissionDenied
from openmaas.platform import Platform
from openmaas.store.audit import read_audit
from openmaas.store.changes import Change


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db")
    return request.getfixturevalue("new_pg_database")()  # type: ignore[no-any-return]


async def test_suspending_and_resuming_are_audited_once_and_followed_by_memory(
    platform: Platform,
) -> None:
    org = await platform.accounts_admin("cli:test").create_org(NewOrganization(name="acme"))
    memory = SuspendedOrgs(platform.database)
    await memory.check(org.id)  # not suspended: nothing raised
    service = platform.suspensions("user:usr_ops")
    await service.suspend("acme")
    await service.suspend(org.id)  # again: no change
    await memory.check(org.id)  # memory kept until the feed says
    await memory.apply([Change(1, ORG_SUSPEND, org.id)])
    with pytest.raises(OrganizationSuspended) as refused:
        await memory.check(org.id)
    assert isinstance(refused.value, PermissionDenied)
    assert list(await service.suspended()) == [org.id]

    await service.resume(org.id)
    await service.resume(org.id)
    await memory.apply([Change(2, ORG_RESUME, org.id)])
    await memory.check(org.id)
    with pytest.raises(NotFound):
        await service.suspend("nobody")
    actions = [(e.actor, e.action, e.target) for e in reversed(await read_audit(platform.database))]
    assert actions[-2:] == [
        ("user:usr_ops", "org.suspend", org.id),
        ("user:usr_ops", "org.resume", org.id),
    ]


async def test_while_the_feed_is_not_current_memory_reads_the_database(
    platform: Platform,
) -> None:
    org = await platform.accounts_admin("cli:test").create_org(NewOrganization(name="acme"))
    current = [True]
    memory = SuspendedOrgs(platform.database, current=lambda: current[0])
    await memory.check(org.id)
    await platform.suspensions("cli:test").suspend(org.id)
    current[0] = False  # the feed fell behind: nothing is answered from memory
    with pytest.raises(OrganizationSuspended):
        await memory.check(org.id)
