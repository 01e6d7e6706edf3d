"""An organization's data policy, set in the database, decides where its requests may go:
through the gateway to the router, for chat and for embeddings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.accounts.auth import Principal
from openmaas.billing.accountant import Accountant
from openmaas.billing.limiter import InProcessLimiter
from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.core.errors import EngineFailure, UpstreamUnavailable
from openmaas.core.ids import new_request_id
from openmaas.core.types import (
    DataPolicy,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    Message,
    Role,
    Usage,
)
from openmaas.engines.base import ModelKind, SlotEngine
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.routing.router import DataClass, Deployment, RoutedEngine
from openmaas.serving.gateway import Gateway
from openmaas.store.billing import update_org
from openmaas.store.ledger.log import LedgerStore
from openmaas.store.repositories import OrganizationRepository
from openmaas.store.schema import usage_records
from tests.support.clock import ManualClock

NOW_MS = 1_790_000_000_000


class Embedder(SlotEngine):
    def __init__(self, name: str) -> None:
        super().__init__(name, ModelKind.EMBEDDING, slots=2, queue=0)
        self.calls = 0

    async def _load(self) -> None:
        return None

    async def _unload(self) -> None:
        return None

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self.calls += 1
        return EmbeddingResult(tuple((1.0,) for _ in request.inputs), Usage(len(request.inputs)))


class Site:
    """A model with one failing local deployment and one cloud deployment, per kind."""

    def __init__(self, database, org_id: str) -> None:  # type: ignore[no-untyped-def]
        self.database = database
        self.principal = Principal("om_k", org_id, "member")
        self.local = FakeEngine("chat", FakeScript(fail_before_first_token=True))
        self.cloud = FakeEngine("chat", FakeScript(text="from the cloud"))
        self.cloud_embedder = Embedder("emb")
        chat = RoutedEngine(
            "chat",
            [
                Deployment("on-prem", self.local),
                Deployment("cloud", self.cloud, data_class=DataClass.EXTERNAL, priority=1),
            ],
        )
        embed = RoutedEngine(
            "emb", [Deployment("cloud-emb", self.cloud_embedder, data_class=DataClass.EXTERNAL)]
        )
        self.models = [ServedModel("chat", chat), ServedModel("emb", embed)]
        clock = ManualClock(NOW_MS)
        billing = Accountant(
            database, LedgerStore(database, clock.now_ms), InProcessLimiter(), clock,
            refresh_seconds=0,
        )  # fmt: skip
        self.gateway = Gateway(ModelCatalog(self.models), billing, clock, lambda: False)

    async def set_policy(self, policy: DataPolicy) -> None:
        async with self.database.begin() as conn:
            await update_org(conn, self.principal.org_id, data_policy=policy.value)

    async def chat(self) -> str:
        request = GenerationRequest(
            new_request_id(), "chat", messages=(Message(Role.USER, "where does this go"),)
        )
        generation = await self.gateway.generate(self.principal, request, "chat.completions")
        text = ""
        async for event in generation:
            text += getattr(event, "text", "")
        await generation.aclose()
        return text


@pytest.fixture
async def site(database: AsyncEngine) -> AsyncIterator[Site]:
    org = await OrganizationRepository(database).create("hospital", NOW_MS)
    s = Site(database, org.id)
    for model in s.models:
        await model.engine.start()
    try:
        yield s
    finally:
        for model in s.models:
            await model.engine.stop()


async def test_a_local_only_organization_never_reaches_the_cloud(site: Site) -> None:
    await site.set_policy(DataPolicy.LOCAL_ONLY)
    with pytest.raises(EngineFailure):  # its local deployment fails; no cloud retry
        await site.chat()
    with pytest.raises(UpstreamUnavailable, match="local"):  # a cloud-only model: refused
        await site.gateway.embed(
            site.principal, EmbeddingRequest(new_request_id(), "emb", ("x",)), "embeddings"
        )
    assert site.cloud.stats.streams_started == 0 and site.cloud_embedder.calls == 0


async def test_a_bursting_organization_fails_over_to_the_cloud_and_it_is_recorded(
    site: Site,
) -> None:
    assert await site.chat() == "from the cloud"  # the default policy: burst
    async with site.database.connect() as conn:
        row = (await conn.execute(select(usage_records))).one()
    assert (row.deployment, row.data_class, row.attempts) == ("cloud", "external", 2)
    await site.gateway.embed(
        site.principal, EmbeddingRequest(new_request_id(), "emb", ("x",)), "embeddings"
    )
    assert site.cloud_embedder.calls == 1
