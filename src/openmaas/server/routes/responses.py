"""The OpenAI Responses API under ``/v1/responses``: create (plain or streamed), retrieve and
delete. A response is generated, metered and billed as a chat completion is (endpoint
``responses``); unless ``store`` is false it is stored for its organization, durable before
the client sees it end, so that ``previous_response_id`` continues it at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from openmaas.accounts.auth import Principal
from openmaas.core.errors import NotFound, OpenMaaSError
from openmaas.core.types import Finished
from openmaas.protocols.openai import adapter, responses
from openmaas.protocols.openai.errors import to_openai_error
from openmaas.protocols.openai.responses import RESPONSE_PREFIX, Output, ResponsesRequest
from openmaas.protocols.openai.responses_sse import ResponseEvents
from openmaas.server.responses import EventStreamResponse, json_response
from openmaas.server.routes.common import answer, authenticate, start_generation
from openmaas.server.routes.openapi import json_body
from openmaas.server.state import AppState, app_state, request_id
from openmaas.serving.generation import Generation
from openmaas.store.responses import ResponseRepository, StoredResponse

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
BODY_MODELS: list[type[BaseModel]] = [ResponsesRequest]
ENDPOINT = "responses"


@router.post(
    "/responses",
    summary="Create a model response (the Responses API; streaming with SSE when stream=true)",
    openapi_extra=json_body(ResponsesRequest),
)
async def create_response(request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    body = adapter.parse_body(await request.body(), ResponsesRequest)
    responses.check_supported(body)
    items = await _history(state, principal, body.previous_response_id)
    items += responses.input_items(body)
    rid = request_id(request)
    core = responses.generation_request(body, items, rid)
    created = int(time.time())
    events = ResponseEvents(body, RESPONSE_PREFIX + rid, rid, created)
    saver = _Saver(state, principal, body, items, created)
    if body.stream:
        generation = await start_generation(request, state, principal, core, ENDPOINT)
        if generation is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return EventStreamResponse(_stream(generation, events, saver))
    answered = await answer(
        request, state, principal, core, ENDPOINT, lambda g: _collect(g, events.output)
    )
    if answered is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    response = events.response()
    await saver.save(response)
    return json_response(response)


@router.get("/responses/{response_id}", summary="Retrieve a stored response")
async def get_response(response_id: str, request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    stored = await _stored(state, principal, response_id)
    return json_response(stored.body)


@router.delete("/responses/{response_id}", summary="Delete a stored response")
async def delete_response(response_id: str, request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    if not await ResponseRepository(state.database).delete(principal.org_id, response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


def _not_found(response_id: str, param: str | None = None) -> NotFound:
    error = NotFound(f"No response with id '{response_id}' was found.")
    error.param = param  # type: ignore[attr-defined]  # OpenAI's error names the field
    return error


async def _stored(
    state: AppState, principal: Principal, response_id: str, param: str | None = None
) -> StoredResponse:
    """The stored response ``response_id`` of the caller's organization (another's: 404)."""
    stored = await ResponseRepository(state.database).get(principal.org_id, response_id)
    if stored is None:
        raise _not_found(response_id, param)
    return stored


async def _history(
    state: AppState, principal: Principal, previous: str | None
) -> list[dict[str, Any]]:
    """The conversation ``previous`` ended: its input and output items."""
    if previous is None:
        return []
    return list((await _stored(state, principal, previous, "previous_response_id")).items)


class _Saver:
    """Stores a finished response with its conversation, unless ``store`` is false."""

    def __init__(
        self,
        state: AppState,
        principal: Principal,
        body: ResponsesRequest,
        items: list[dict[str, Any]],
        created: int,
    ) -> None:
        self._state = state
        self._principal = principal
        self._body = body
        self._items = items
        self._created = created

    async def save(self, response: dict[str, Any]) -> None:
        if not self._body.store:
            return
        stored = StoredResponse(
            response["id"],
            self._principal.org_id,
            self._principal.key_id,
            self._created * 1000,
            response,
            self._items + response["output"],
        )
        await ResponseRepository(self._state.database).save(stored)


async def _collect(generation: Generation, output: Output) -> Finished:
    try:
        async for event in generation:
            if isinstance(event, Finished):
                output.finished = event
                await generation.aclose()  # durable before the response is sent
                return event
            output.add(event)
        raise AssertionError("a generation always ends with Finished or an error")
    finally:
        await generation.aclose()


async def _stream(
    generation: Generation, events: ResponseEvents, saver: _Saver
) -> AsyncIterator[bytes]:
    """The response's events; the usage record and the stored response are durable before
    the client sees ``response.completed``."""
    try:
        yield events.start()
        async for event in generation:
            frames = events.event(event)
            if isinstance(event, Finished):
                await generation.aclose()
                response = events.response()
                await saver.save(response)
                yield frames + events.end(response)
                return
            if frames:
                yield frames
    except OpenMaaSError as exc:
        await generation.aclose()
        _status, body, _headers = to_openai_error(exc)
        yield events.error(body)
    finally:
        await generation.aclose()
