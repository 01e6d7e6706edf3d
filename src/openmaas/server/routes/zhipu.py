"""The Zhipu-compatible API (BigModel / Z.ai ``paas/v4``) under ``/api/paas/v4``.

Point ``zhipuai.ZhipuAI`` or ``zai.ZhipuAiClient`` at ``http://<host>:<port>/api/paas/v4/``.
Errors on these paths are rendered by ``protocols.zhipu.errors`` (see ``server/app.py``).
Async jobs are stored in the database (``store/async_jobs.py``): any process answers for
any job.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response

from openmaas.accounts.auth import Principal
from openmaas.catalog.served import ModelCatalog
from openmaas.core.assembly import Assembler
from openmaas.core.errors import NotFound, OpenMaaSError
from openmaas.core.jobs import Job
from openmaas.core.types import GenerationRequest
from openmaas.engines.base import ModelKind
from openmaas.protocols.zhipu import adapter
from openmaas.protocols.zhipu.errors import to_zhipu_error
from openmaas.protocols.zhipu.jobs import JobBoard, JobStore, create_json, result_json
from openmaas.protocols.zhipu.schemas import ZhipuChatRequest, ZhipuEmbeddingRequest
from openmaas.protocols.zhipu.sse import ChunkWriter
from openmaas.server.responses import EventStreamResponse, json_response
from openmaas.server.routes.common import (
    answer,
    authenticate,
    collect,
    response_headers,
    sse_stream,
    start_generation,
)
from openmaas.server.routes.openapi import json_body
from openmaas.server.state import AppState, app_state, request_id
from openmaas.serving.gateway import Reservation

PREFIX = "/api/paas/v4"
ENDPOINT_CHAT = "zhipu.chat.completions"

router = APIRouter(prefix=PREFIX, tags=["Zhipu-compatible (paas/v4)"])
BODY_MODELS: list[type[BaseModel]] = [ZhipuChatRequest, ZhipuEmbeddingRequest]


def install(app: FastAPI) -> None:
    """Mount the routes."""
    app.include_router(router)


def open_jobs(app: FastAPI, store: JobStore) -> None:
    """Give the app its board of async jobs, stored in ``store`` (the platform's
    ``async_jobs``: the database), at startup: each organization may have
    ``async_jobs_per_org`` unfinished, and the jobs of this process take at most half of
    a model's slots (``job_room``)."""
    state: AppState = app.state.openmaas
    app.state.zhipu_jobs = JobBoard(
        store,
        lambda exc: to_zhipu_error(exc)[1],
        per_org=state.settings.async_jobs_per_org,
        room=lambda model: job_room(state.catalog, model),
    )


def job_room(catalog: ModelCatalog, model: str) -> int:
    """How many async jobs of one process may be in ``model``'s engine at once: half of
    its slots (at least one), so that jobs never fill the slots and the queue that
    synchronous requests need; the rest wait on the board, not in the engine's queue."""
    try:
        slots = catalog.for_kind(model, ModelKind.CHAT).engine.capacity().slots
    except OpenMaaSError:  # gone since the submit: the job fails as it starts
        return 1
    return max(1, slots // 2)


async def close(app: FastAPI) -> None:
    """Cancel the async jobs still running (at shutdown)."""
    await _board(app).close()


def _board(app: FastAPI) -> JobBoard:
    return app.state.zhipu_jobs  # type: ignore[no-any-return]


async def _parse_chat(
    request: Request, state: AppState
) -> tuple[Principal, ZhipuChatRequest, GenerationRequest]:
    principal = await authenticate(request, state)
    body = adapter.parse_body(await request.body(), ZhipuChatRequest)
    return principal, body, adapter.chat_request(body, request_id(request))


@router.post(
    "/chat/completions",
    summary="Create a chat completion (streaming with SSE when stream=true)",
    openapi_extra=json_body(ZhipuChatRequest),
)
async def chat_completions(request: Request) -> Response:
    state = app_state(request)
    principal, body, core = await _parse_chat(request, state)
    if body.stream:
        generation = await start_generation(request, state, principal, core, ENDPOINT_CHAT)
        if generation is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        writer = ChunkWriter(
            generation.request_id,
            body.request_id,
            core.model,
            int(time.time()),
            tool_stream=body.tool_stream,
        )
        return EventStreamResponse(sse_stream(generation, writer, to_zhipu_error))
    answered = await answer(request, state, principal, core, ENDPOINT_CHAT, collect)
    if answered is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    generation, collected = answered
    return json_response(
        adapter.chat_completion(
            generation.request_id, body.request_id, core.model, int(time.time()), collected
        )
    )


@router.post(
    "/async/chat/completions",
    summary="Start a chat completion in the background; poll /async-result/{id}",
    openapi_extra=json_body(ZhipuChatRequest),
)
async def async_chat_completions(request: Request) -> Response:
    state = app_state(request)
    principal, body, core = await _parse_chat(request, state)
    board = _board(request.app)
    await board.check(principal.org_id)  # over the organization's jobs: refused, nothing held
    # Refused now, not later: an unknown model, a bound, a rate limit or the balance; the job
    # is admitted once, here, and its generation starts on this admission when its turn comes.
    reservation = await state.gateway.reserve(principal, core, "zhipu.async.chat.completions")
    job = Job(
        id=request_id(request),
        org_id=principal.org_id,
        model=core.model,
        client_request_id=body.request_id,
        created_at_ms=state.clock.now_ms(),
    )
    await board.submit(
        job,
        lambda: _run_job(state, reservation),
        abandon=lambda: state.gateway.release(reservation),
    )
    return json_response(create_json(job))


async def _run_job(state: AppState, reservation: Reservation) -> dict[str, Any]:
    """One async job: the same metered path as any request (its usage is recorded)."""
    generation = await state.gateway.start(reservation)
    answer: Assembler = await collect(generation)
    assert answer.finished is not None
    return {
        "choices": adapter.choices_json(answer),
        "usage": adapter.usage_json(answer.finished.usage),
    }


@router.get("/async-result/{job_id}", summary="The status, and once done the result, of a job")
async def async_result(job_id: str, request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    job = await _board(request.app).get(principal.org_id, job_id)
    if job is None:
        raise NotFound(f"No task with id '{job_id}'.")
    return json_response(result_json(job))


@router.post(
    "/embeddings",
    summary="Create embeddings for a string or a list of strings",
    openapi_extra=json_body(ZhipuEmbeddingRequest),
)
async def embeddings(request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    body = adapter.parse_body(await request.body(), ZhipuEmbeddingRequest)
    model = state.catalog.get(body.model)
    core = adapter.embedding_request(body, request_id(request), model.dimensions)
    result = await state.gateway.embed(
        principal, core, "zhipu.embeddings", response_headers(request)
    )
    return json_response(adapter.embeddings(body.model, result))


@router.get("/models", summary="List the models this server serves")
async def list_models(request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    usable = state.catalog.usable(principal.models)  # a restricted key: its models only
    cards = [adapter.model_card(m.name, m.owned_by, m.created) for m in usable]
    return json_response({"object": "list", "data": cards})
