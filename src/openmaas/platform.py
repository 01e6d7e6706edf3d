"""The composition root: the one place that opens the database, brings its schema up to
date, and builds the services on it, once, for the server, the CLI and the tests.

``open_platform(settings)`` yields a ``Platform``: the database, the ledger, the accountant
(admission and settlement) and its rate limiter (in process, or in Redis when
``OPENMAAS_REDIS_URL`` is set), the master key, and the three administrative services, each
built the same way for an actor (``cli:<user>``, ``key:<admin key id>``) on one unit of work
that writes every change with its audit row. With ``serve=True`` (a serving process) it
also starts this process's instance (an id and its liveness lock, ``store/instance.py``:
any number of processes may serve from one database), folds usage records into daily
roll-ups every ``rollup_seconds`` (``billing/rollups.py``), recovers the requests that dead
processes left in flight (and fails their async jobs, ``store/async_jobs.py``), on start
and every ``recovery_seconds``, starts the change feed
(``store/changes.py``) that keeps the key cache and the accountant's terms true to every
process's changes, and builds and starts the model catalog and its reloader; leaving the
``with`` stops them and releases everything in the reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.admin import AccountsAdmin, IssuedKey, ensure_home, first_run
from openmaas.accounts.auth import load_master_key
from openmaas.accounts.keycache import KeyCache, KeySource
from openmaas.accounts.suspensions import SuspendedOrgs, Suspensions
from openmaas.billing.accountant import Accountant
from openmaas.billing.admin import BillingAdmin
from openmaas.billing.limiter import InProcessLimiter, Limiter
from openmaas.billing.limiter_redis import RedisLimiter
from openmaas.billing.rollups import keep_rolling
from openmaas.catalog.admin import CatalogAdmin
from openmaas.catalog.reloader import CatalogManager
from openmaas.catalog.served import ModelCatalog, build_catalog
from openmaas.core.clock import Clock, SystemClock
from openmaas.core.errors import ConfigurationError
from openmaas.core.leases import LeasePolicy
from openmaas.settings import Settings
from openmaas.store.async_jobs import AsyncJobStore
from openmaas.store.audit import AuditedChanges
from openmaas.store.changes import ChangeFeed
from openmaas.store.database import migrate, open_database
from openmaas.store.instance import Liveness
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import ApiKeyRepository
from openmaas.store.rollups.roller import UsageRoller

log = logging.getLogger("openmaas.platform")

FIRST_RUN_ACTOR = "system:first-run"
"""Who the audit log names for the default organization and admin key of a first start."""


@dataclass
class Platform:
    settings: Settings
    database: AsyncEngine
    clock: Clock
    master_key: bytes = field(repr=False)
    ledger: LedgerStore
    accountant: Accountant
    limiter: Limiter
    roller: UsageRoller  # usage records into daily roll-ups (in a server: in the background)
    catalog: ModelCatalog | None = None  # serving only
    catalog_manager: CatalogManager | None = None  # serving only: the document, reloaded live
    feed: ChangeFeed | None = None  # serving only: every process's changes, polled
    key_cache: KeyCache | None = None  # serving only: keys from memory, kept by the feed
    async_jobs: AsyncJobStore | None = None  # serving only: jobs this process runs
    suspended: SuspendedOrgs | None = None  # serving only: suspended organizations, by the feed

    @property
    def keys(self) -> KeySource:
        """Where authentication finds keys: the cache in a server, else the database."""
        if self.key_cache is not None:
            return self.key_cache
        return ApiKeyRepository(self.database)

    def changes(self, actor: str) -> AuditedChanges:
        """The unit of work of ``actor``'s administrative changes; in a server each change
        polls the feed once committed, so it applies here before its caller is answered."""
        committed = None if self.feed is None else self.feed.poll_now
        return AuditedChanges(
            self.database, self.ledger, self.clock.now_ms, actor, committed=committed
        )

    def accounts_admin(self, actor: str) -> AccountsAdmin:
        return AccountsAdmin(self.changes(actor), self.clock, self.master_key)

    def billing_admin(self, actor: str) -> BillingAdmin:
        """Billing administration; a change makes this process's accountant re-read terms."""
        return BillingAdmin(self.changes(actor), self.clock, on_change=self.accountant.invalidate)

    def catalog_admin(self, actor: str) -> CatalogAdmin:
        """Catalog administration; in the server a change applies at once."""
        return CatalogAdmin(
            self.changes(actor), self.settings, self.master_key, manager=self.catalog_manager
        )

    def suspensions(self, actor: str) -> Suspensions:
        """Suspending and resuming organizations (operators, admin keys)."""
        return Suspensions(self.changes(actor))

    async def first_run(self) -> IssuedKey | None:
        """The default organization and admin key on the very first start (None later)."""
        return await first_run(self.accounts_admin(FIRST_RUN_ACTOR), self.settings)


async def _keep_recovering(accountant: Accountant, every_seconds: float) -> None:
    """Recover the requests of processes that die while this one serves."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            await accountant.sweep()
        except Exception:  # the next round tries again
            log.exception("recovering the requests of dead processes failed")


async def _keep_returning_idle_leases(accountant: Accountant, settings: Settings) -> None:
    """Give back, every half lease period, the leases that admitted nothing for a period."""
    if settings.lease_seconds <= 0:
        return
    while True:
        await asyncio.sleep(settings.lease_seconds / 2)
        try:
            await accountant.return_idle_leases()
        except Exception:  # the next round tries again
            log.exception("giving back idle leases failed")


@asynccontextmanager
async def open_platform(
    settings: Settings,
    *,
    clock: Clock | None = None,
    catalog: ModelCatalog | None = None,
    serve: bool = False,
) -> AsyncIterator[Platform]:
    """The data directory's database, migrated, and the services on it. ``serve``: also
    this process's instance, crash recovery (on start and periodically), and the model
    catalog (``catalog``, or the one the settings and the catalog document declare),
    started."""
    ensure_home(settings)
    clock = clock or SystemClock()
    limiter = make_limiter(settings, clock)  # connects on first use
    database = open_database(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    liveness: Liveness | None = None
    async_jobs: AsyncJobStore | None = None
    ledger: LedgerStore | None = None
    try:
        await migrate(database)
        if serve:  # before the accountant: every request it admits names this instance
            liveness = await Liveness.start(database)
            async_jobs = AsyncJobStore(database, clock.now_ms, liveness.instance_id)
        ledger = LedgerStore(
            database,
            clock.now_ms,
            settled_window=settings.ledger_settled_window,
            snapshot_events=settings.ledger_snapshot_events,
            instance_id=None if liveness is None else liveness.instance_id,
        )
        accountant = Accountant(
            database,
            ledger,
            limiter,
            clock,
            refresh_seconds=settings.billing_refresh_seconds,
            checkpoint_seconds=settings.checkpoint_seconds,
            liveness=liveness,
            recoveries=() if async_jobs is None else (async_jobs,),  # a dead one's jobs fail
            leases=LeasePolicy(seconds=settings.lease_seconds),
        )
        roller = UsageRoller(database, clock.now_ms)
        platform = Platform(
            settings,
            database,
            clock,
            load_master_key(settings),
            ledger,
            accountant,
            limiter,
            roller,
        )
        platform.async_jobs = async_jobs
        if not serve:
            yield platform
            return
        recovered = await accountant.recover()  # what dead processes left in flight
        if recovered:
            log.warning("recovered %d requests left in flight by dead processes", recovered)
        recovery = asyncio.create_task(_keep_recovering(accountant, settings.recovery_seconds))
        leasing = asyncio.create_task(_keep_returning_idle_leases(accountant, settings))
        rolling = asyncio.create_task(keep_rolling(roller, settings.rollup_seconds))
        feed = ChangeFeed(database, clock, settings.change_poll_seconds)
        try:
            key_cache = KeyCache(ApiKeyRepository(database), current=feed.current)
            feed.subscribe(key_cache.apply)
            feed.subscribe(accountant.apply_changes)
            suspended = SuspendedOrgs(database, current=feed.current)
            feed.subscribe(suspended.apply)
            await feed.start()  # before anything is cached
            platform.feed, platform.key_cache = feed, key_cache
            platform.suspended = suspended
            models = catalog or build_catalog(settings)
            manager = CatalogManager(models, settings, database, platform.master_key, clock)
            await manager.start()  # the catalog document's models join the settings' ones
            platform.catalog, platform.catalog_manager = models, manager
            try:
                yield platform
            finally:
                await manager.stop()
                await models.stop()
        finally:
            await feed.stop()
            for task in (recovery, leasing, rolling):
                task.cancel()
            await asyncio.gather(recovery, leasing, rolling, return_exceptions=True)
            await accountant.close()  # every lease back to its organization
    finally:
        if liveness is not None:
            await liveness.stop()
        await limiter.aclose()
        if ledger is not None:
            await ledger.close()
        await database.dispose()


def make_limiter(settings: Settings, clock: Clock) -> Limiter:
    """Rate limits shared in Redis when ``OPENMAAS_REDIS_URL`` is set (many processes or
    machines), else counted in this process (one gateway process)."""
    if not settings.redis_url:
        return InProcessLimiter()
    try:
        return RedisLimiter(
            settings.redis_url, failure_mode=settings.redis_failure_mode, clock=clock
        )
    except ValueError as exc:  # billing/resp.py's word for a URL it cannot parse
        raise ConfigurationError(f"OPENMAAS_REDIS_URL is not a Redis URL: {exc}") from None
