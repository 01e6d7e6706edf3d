"""Persistence of the model catalog document and of sealed upstream credentials.

SQL only: what a credential's sealed text means is ``accounts/secretbox.py``'s business, what a
document says is ``catalog/document.py``'s. Tables created by migration ``0004``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()

catalog_documents = Table(
    "catalog_documents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
)

upstream_credentials = Table(
    "upstream_credentials",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("sealed", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredDocument:
    id: int
    version: str
    document: str
    created_at_ms: int
    actor: str


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """A credential's name and dates: all that is ever shown of it."""

    name: str
    created_at_ms: int
    updated_at_ms: int


async def latest_document(conn: AsyncConnection) -> StoredDocument | None:
    row = (
        await conn.execute(
            select(catalog_documents).order_by(catalog_documents.c.id.desc()).limit(1)
        )
    ).first()
    if row is None:
        return None
    return StoredDocument(row.id, row.version, row.document, row.created_at_ms, row.actor)


async def insert_document(
    conn: AsyncConnection, version: str, document: str, at_ms: int, actor: str
) -> None:
    await conn.execute(
        insert(catalog_documents).values(
            version=version, document=document, created_at_ms=at_ms, actor=actor
        )
    )


async def list_credentials(conn: AsyncConnection) -> list[CredentialInfo]:
    rows = await conn.execute(
        select(
            upstream_credentials.c.name,
            upstream_credentials.c.created_at_ms,
            upstream_credentials.c.updated_at_ms,
        ).order_by(upstream_credentials.c.name)
    )
    return [CredentialInfo(r.name, r.created_at_ms, r.updated_at_ms) for r in rows]


async def sealed_credentials(conn: AsyncConnection, names: set[str]) -> dict[str, str]:
    """The sealed values of ``names`` that exist."""
    if not names:
        return {}
    rows = await conn.execute(
        select(upstream_credentials.c.name, upstream_credentials.c.sealed).where(
            upstream_credentials.c.name.in_(sorted(names))
        )
    )
    return {r.name: r.sealed for r in rows}


async def put_credential(conn: AsyncConnection, name: str, sealed: str, at_ms: int) -> bool:
    """Create or replace; True when it is new."""
    changed = await conn.execute(
        update(upstream_credentials)
        .where(upstream_credentials.c.name == name)
        .values(sealed=sealed, updated_at_ms=at_ms)
    )
    if changed.rowcount:
        return False
    await conn.execute(
        insert(upstream_credentials).values(
            name=name, sealed=sealed, created_at_ms=at_ms, updated_at_ms=at_ms
        )
    )
    return True


async def delete_credential(conn: AsyncConnection, name: str) -> bool:
    done = await conn.execute(
        delete(upstream_credentials).where(upstream_credentials.c.name == name)
    )
    return bool(done.rowcount)
