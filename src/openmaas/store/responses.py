"""Stored responses of the OpenAI Responses API: the response object as it was answered and
the conversation it ends (its input and output items), for ``previous_response_id``. Each
belongs to one organization: another organization's id reads as no response at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from openmaas.store.schema import responses


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    org_id: str
    key_id: str
    created_at_ms: int
    body: dict[str, Any]  # the response object
    items: list[dict[str, Any]]  # the conversation: every input item, then the output


class ResponseRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def save(self, stored: StoredResponse) -> None:
        """Store one response; committed (durable) when this returns."""
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(responses).values(
                    id=stored.id,
                    org_id=stored.org_id,
                    key_id=stored.key_id,
                    created_at_ms=stored.created_at_ms,
                    body=orjson.dumps(stored.body).decode(),
                    items=orjson.dumps(stored.items).decode(),
                )
            )

    async def get(self, org_id: str, response_id: str) -> StoredResponse | None:
        """The response, if it exists and belongs to ``org_id``."""
        r = responses.c
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(responses).where(r.id == response_id, r.org_id == org_id))
            ).first()
        if row is None:
            return None
        return StoredResponse(
            row.id,
            row.org_id,
            row.key_id,
            row.created_at_ms,
            orjson.loads(row.body),
            orjson.loads(row.items),
        )

    async def delete(self, org_id: str, response_id: str) -> bool:
        """Delete the response if it belongs to ``org_id``; whether there was one."""
        r = responses.c
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(responses).where(r.id == response_id, r.org_id == org_id)
            )
        return bool(result.rowcount)
