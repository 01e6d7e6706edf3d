"""Suspended organizations: an operator suspends one (its member keys are refused, 403,
by every server within the change feed's interval; requests in flight finish) and resumes
it. Admin keys are never refused for it: they administer the platform, suspended
organizations included.

``Suspensions`` makes the change (audited ``org.suspend`` / ``org.resume``, the target
the organization's id); ``SuspendedOrgs`` answers the request path from memory, kept
true by the change feed as ``KeyCache`` is: re-read after any such change, and from the
database while the feed is not current.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openmaas.core.admin_fields import AdminBody
from openmaas.core.errors import PermissionDenied
from openmaas.core.ledger_events import Event
from openmaas.store.audit import AuditedChanges, AuditRecord
from openmaas.store.changes import Change
from openmaas.store.people import suspensions as store
from openmaas.store.repositories import OrganizationRepository

ORG_SUSPEND = "org.suspend"
ORG_RESUME = "org.resume"


class OrganizationSuspended(PermissionDenied):
    """A member key of a suspended organization (HTTP 403)."""

    def __init__(self) -> None:
        super().__init__(
            "This organization is suspended: its API keys are refused until an operator resumes it."
        )


class NewSuspension(AdminBody):
    """``PUT /admin/v1/orgs/{org}/suspension``: why, if said (kept in the audit log)."""

    reason: str | None = Field(None, max_length=500)


class Suspensions:
    """Suspend and resume organizations, as ``changes``' actor."""

    def __init__(self, changes: AuditedChanges) -> None:
        self.changes = changes
        self.orgs = OrganizationRepository(changes.database)

    async def suspended(self) -> dict[str, int]:
        return await store.suspended_orgs(self.changes.database)

    async def suspend(self, org: str, reason: str | None = None) -> None:
        """Suspend ``org`` (id or name); again: nothing changes, nothing audited."""
        found = await self.orgs.find(org)
        now = self.changes.now_ms()

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord | None:
            if not await store.suspend(conn, found.id, now):
                return None
            after = {"suspended": True, "reason": reason}
            return AuditRecord(ORG_SUSPEND, found.id, {"suspended": False}, after)

        await self.changes.commit(write)

    async def resume(self, org: str) -> None:
        found = await self.orgs.find(org)

        async def write(conn: AsyncConnection, _events: tuple[Event, ...]) -> AuditRecord | None:
            if not await store.resume(conn, found.id):
                return None
            return AuditRecord(ORG_RESUME, found.id, {"suspended": True}, {"suspended": False})

        await self.changes.commit(write)


class SuspendedOrgs:
    """Whether an organization is suspended, from memory (a set: suspensions are few)."""

    def __init__(self, database: AsyncEngine, *, current: Callable[[], bool] = lambda: True):
        self._database = database
        self._current = current
        self._ids: frozenset[str] | None = None
        self._epoch = 0  # moves on every change applied: a read begun before is not kept

    async def check(self, org_id: str) -> None:
        """Raise ``OrganizationSuspended`` when ``org_id`` is suspended."""
        ids = self._ids
        if ids is None or not self._current():
            epoch = self._epoch
            ids = frozenset(await store.suspended_orgs(self._database))
            if epoch == self._epoch and self._current():
                self._ids = ids
        if org_id in ids:
            raise OrganizationSuspended()

    async def apply(self, changes: Sequence[Change]) -> None:
        """A change-feed subscriber: read the set again after a suspension or resumption."""
        if any(c.resets or c.action in (ORG_SUSPEND, ORG_RESUME) for c in changes):
            self._epoch += 1
            self._ids = None
