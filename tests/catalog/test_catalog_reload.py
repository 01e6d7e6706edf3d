"""The catalog document applied without a restart: from a file, from the database, with
credentials sealed at rest (real SQLite, fake engines, a real local HTTP upstream)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.catalog.admin import (
    CatalogAdmin,
    CredentialValue,
    EmptyCatalogRefused,
    describe_model,
)
from openmaas.catalog.document import CatalogRejected
from openmaas.catalog.reloader import CatalogFileManaged, CatalogManager
from openmaas.catalog.served import ModelCatalog, ServedModel
from openmaas.core.clock import SystemClock
from openmaas.core.errors import ModelNotFound
from openmaas.core.ids import new_request_id
from openmaas.core.types import GenerationRequest, Message, Role, TextDelta
from openmaas.engines.base import EngineState
from openmaas.engines.fake import FakeEngine, FakeScript
from openmaas.routing.router import RoutedEngine
from openmaas.settings import Settings
from openmaas.store import catalog as catalog_store
from openmaas.store.audit import AuditedChanges
from openmaas.store.ledger.log import LedgerStore
from tests.engines.upstream import Behaviour, Upstream
from tests.support.waiting import eventually

MASTER = bytes(range(32))
SECRET = "sk-upstream-7f3a9c0e5b"


def chat_request(model: str) -> GenerationRequest:
    return GenerationRequest(new_request_id(), model, (Message(Role.USER, "hi there"),))


def fake_model(name: str, deployment: str, text: str, token_delay: float = 0.0) -> str:
    return f"""\
  - name: {name}
    deployments:
      - id: {deployment}
        engine: fake
        script: {{text: "{text}", token_delay: {token_delay}}}
"""


class Site:
    def __init__(self, tmp_path: Path, settings: Settings, database: AsyncEngine, *, file: bool):
        self.path = tmp_path / "catalog.yaml"
        self.settings = settings.model_copy(
            update={"catalog_file": self.path if file else None, "catalog_drain_seconds": 30}
        )
        self.database = database
        self.base = FakeEngine("base", FakeScript(text="from settings"))
        self.catalog = ModelCatalog([ServedModel("base", self.base)], {"base-alias": "base"})
        self.manager: CatalogManager | None = None

    async def start(self) -> CatalogManager:
        self.manager = CatalogManager(self.catalog, self.settings, self.database, MASTER)
        await self.manager.start()
        self.catalog.start_loading()
        await self.catalog.wait_loaded()
        return self.manager

    def admin(self, master: bytes = MASTER) -> CatalogAdmin:
        now = SystemClock().now_ms
        changes = AuditedChanges(self.database, LedgerStore(self.database, now), now, "test")
        return CatalogAdmin(changes, self.settings, master, manager=self.manager)

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
        await self.catalog.stop()


@pytest.fixture()
async def file_site(
    tmp_path: Path, settings: Settings, database: AsyncEngine
) -> AsyncIterator[Site]:
    site = Site(tmp_path, settings, database, file=True)
    yield site
    await site.close()


@pytest.fixture()
async def db_site(tmp_path: Path, settings: Settings, database: AsyncEngine) -> AsyncIterator[Site]:
    site = Site(tmp_path, settings, database, file=False)
    yield site
    await site.close()


async def text_of(catalog: ModelCatalog, model: str) -> str:
    stream = catalog.get(model).engine.stream(chat_request(model))
    try:
        return "".join([e.text async for e in stream if isinstance(e, TextDelta)])
    finally:
        await stream.aclose()


async def test_a_file_edit_applies_while_a_stream_is_in_flight(
    file_site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    slow_words = " ".join(f"w{i}" for i in range(30))
    file_site.path.write_text(
        "models:\n"
        + fake_model("slow", "slow-1", slow_words, token_delay=0.02)
        + fake_model("kept", "kept-1", "kept words")
    )
    manager = await file_site.start()
    catalog = file_site.catalog
    assert sorted(m.name for m in catalog.list()) == ["base", "kept", "slow"]
    kept_engine = catalog.get("kept").engine
    first_version = manager.version

    stream = catalog.get("slow").engine.stream(chat_request("slow"))
    received = [await stream.__anext__()]  # the first token is out

    # "slow" removed, "fresh" added, "kept" unchanged.
    file_site.path.write_text(
        "models:\n" + fake_model("kept", "kept-1", "kept words") + fake_model("fresh", "f-1", "new")
    )
    assert await manager.refresh()
    assert manager.version != first_version
    with pytest.raises(ModelNotFound):
        catalog.get("slow")  # gone for new requests at once
    assert await text_of(catalog, "fresh") == "new"
    assert catalog.get("kept").engine is kept_engine  # not reloaded
    assert catalog.get("base").engine is file_site.base and catalog.resolve("base-alias") == "base"

    received += [event async for event in stream]  # the stream in flight completes
    await stream.aclose()
    text = "".join(e.text for e in received if isinstance(e, TextDelta))
    assert text.split() == slow_words.split()

    # ...and the retired engine is stopped once it is idle.
    retired: RoutedEngine = stream._relay.plan.router  # type: ignore[attr-defined]
    await eventually(lambda: retired.health().state is EngineState.STOPPED)
    await eventually(lambda: manager.retiring() == 0)

    # An invalid edit: logged with its line, ignored; the running catalog stays.
    applied = manager.version
    file_site.path.write_text("models:\n  - name: kept\n    deployments: []\n")
    with caplog.at_level(logging.ERROR, logger="openmaas.catalog"):
        assert not await manager.refresh()
        assert not await manager.refresh()  # the same refused text is not re-checked
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert refused[0].issues == [  # type: ignore[attr-defined]
        f"{file_site.path}:3: models[0].deployments: must have at least 1 item(s)"
    ]
    assert manager.version == applied
    assert await text_of(catalog, "kept") == "kept words"


async def test_a_changed_model_gets_new_engines_and_fallbacks_follow(file_site: Site) -> None:
    file_site.path.write_text(
        "models:\n"
        "  - name: main\n"
        "    routing: {fallbacks: [spare]}\n"
        "    deployments: [{id: m-1, engine: fake, script: {fail_before_first_token: true}}]\n"
        + fake_model("spare", "s-1", "old spare")
    )
    manager = await file_site.start()
    catalog = file_site.catalog
    main = catalog.get("main").engine
    assert await text_of(catalog, "main") == "old spare"  # failed over to the fallback
    file_site.path.write_text(
        "models:\n"
        "  - name: main\n"
        "    routing: {fallbacks: [spare]}\n"
        "    deployments: [{id: m-1, engine: fake, script: {fail_before_first_token: true}}]\n"
        + fake_model("spare", "s-1", "new spare")
    )
    assert await manager.refresh()
    assert catalog.get("main").engine is main  # unchanged: kept, its fallback re-wired
    assert await text_of(catalog, "main") == "new spare"


async def test_the_database_source_and_credentials(db_site: Site) -> None:
    with Upstream(Behaviour(text="from upstream")) as upstream:
        manager = await db_site.start()
        admin = db_site.admin()
        document = f"""\
models:
  - name: cloud
    aliases: [cloud-latest]
    capabilities: [tools]
    deployments:
      - id: up-1
        engine: openai
        base_url: {upstream.base_url}
        upstream_model: upstream-model
        credential: cloud-key
"""
        with pytest.raises(CatalogRejected) as caught:
            await admin.apply(document)  # the credential does not exist yet
        assert [i.render("catalog") for i in caught.value.issues] == [
            "catalog:10: models[0].deployments[0].credential: no credential named "
            "'cloud-key' (openmaas credentials set cloud-key)"
        ]
        assert await admin.set_credential("cloud-key", CredentialValue(value=SECRET)) is True
        version = await admin.apply(document)
        assert manager.version == version
        assert db_site.catalog.resolve("cloud-latest") == "cloud"
        assert await text_of(db_site.catalog, "cloud") == "from upstream"
        assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
        described = describe_model(db_site.catalog.get("cloud"), db_site.catalog.aliases)
        assert described["aliases"] == ["cloud-latest"] and described["source"] == "catalog"
        [deployment] = described["deployments"]  # type: ignore[misc]
        assert (deployment["id"], deployment["data_class"], deployment["breaker"]) == (
            "up-1",
            "external",
            "closed",
        )
        assert SECRET not in repr(described)

        # Rotating the credential rebuilds the model that uses it.
        engine = db_site.catalog.get("cloud").engine
        assert (
            await admin.set_credential("cloud-key", CredentialValue(value=SECRET + "-2")) is False
        )
        assert db_site.catalog.get("cloud").engine is not engine
        assert await text_of(db_site.catalog, "cloud") == "from upstream"
        assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}-2"

        # In use: cannot be deleted.
        with pytest.raises(Exception, match="used by the catalog"):
            await admin.delete_credential("cloud-key")

    # At rest: sealed; never in clear anywhere in the database.
    async with db_site.database.connect() as conn:
        sealed = (await conn.execute(select(catalog_store.upstream_credentials))).one().sealed
    assert sealed.startswith("v1.") and SECRET not in sealed
    raw = b"".join(p.read_bytes() for p in db_site.path.parent.glob("openmaas.db*") if p.is_file())
    assert SECRET.encode() not in raw

    # Another master key cannot use it: the catalog is refused, naming the credential.
    with pytest.raises(CatalogRejected, match="cannot be decrypted"):
        await db_site.admin(bytes(32)).check(document)


@pytest.mark.parametrize("empty", ["", "\n", "# nothing yet\n", "models: []\n", "version: 1\n"])
async def test_a_document_without_models_is_refused_unless_allowed(
    db_site: Site, empty: str
) -> None:
    await db_site.start()
    admin = db_site.admin()
    version = await admin.apply("models:\n" + fake_model("kept", "kept-1", "kept words"))
    with pytest.raises(EmptyCatalogRefused, match="allow_empty") as refused:
        await admin.apply(empty)
    assert refused.value.param == "allow_empty"
    assert (await admin.current()).version == version  # nothing stored, nothing applied
    assert await text_of(db_site.catalog, "kept") == "kept words"

    await admin.apply(empty, allow_empty=True)  # said in so many words: every model goes
    with pytest.raises(ModelNotFound):
        db_site.catalog.get("kept")
    assert await text_of(db_site.catalog, "base") == "from settings"  # the settings' stay


async def test_a_file_managed_catalog_refuses_database_changes(file_site: Site) -> None:
    file_site.path.write_text("models: []\n")
    await file_site.start()
    with pytest.raises(CatalogFileManaged, match="edit that file"):
        await file_site.admin().apply("models: []\n")


async def test_an_invalid_file_at_start_is_refused(file_site: Site) -> None:
    file_site.path.write_text("models:\n  - name: x\n")
    with pytest.raises(Exception, match=r"catalog.yaml:2: models\[0\].deployments: is required"):
        await file_site.start()


async def test_an_empty_file_is_not_applied_and_its_next_text_is(file_site: Site) -> None:
    """An editor that truncates the file before writing its new text lets a poll read it
    empty: that must not remove every model (it did, in CI). ``models: []`` still does."""
    file_site.path.write_text("models:\n" + fake_model("kept", "kept-1", "kept words"))
    manager = await file_site.start()
    version = manager.version
    for empty in ("", "\n  \n"):
        file_site.path.write_text(empty)
        assert not await manager.refresh()
        assert manager.version == version
        assert await text_of(file_site.catalog, "kept") == "kept words"
    file_site.path.write_text("models:\n" + fake_model("next", "next-1", "next words"))
    assert await manager.refresh()
    assert await text_of(file_site.catalog, "next") == "next words"
    file_site.path.write_text("models: []\n")
    assert await manager.refresh()
    with pytest.raises(ModelNotFound):
        file_site.catalog.get("next")
