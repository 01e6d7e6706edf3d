"""The OpenAI-compatible API under ``/v1``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from openmaas.accounts.auth import Principal
from openmaas.core.types import GenerationRequest
from openmaas.protocols.openai import adapter
from openmaas.protocols.openai.errors import to_openai_error
from openmaas.protocols.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequestBody,
)
from openmaas.protocols.openai.sse import ChunkWriter
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

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
BODY_MODELS: list[type[BaseModel]] = [
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequestBody,
]


@router.post(
    "/chat/completions",
    summary="Create a chat completion (streaming with SSE when stream=true)",
    openapi_extra=json_body(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    return await _generation_route(
        request, ChatCompletionRequest, adapter.chat_request, "chat.completions"
    )


@router.post(
    "/completions",
    summary="Create a text completion (streaming with SSE when stream=true)",
    openapi_extra=json_body(CompletionRequest),
)
async def completions(request: Request) -> Response:
    return await _generation_route(
        request, CompletionRequest, adapter.completion_request, "completions"
    )


@router.post(
    "/embeddings",
    summary="Create embeddings for a string or a list of strings",
    openapi_extra=json_body(EmbeddingRequestBody),
)
async def embeddings(request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    body = adapter.parse_body(await request.body(), EmbeddingRequestBody)
    model = state.catalog.get(body.model)
    embedding_request = adapter.embedding_request(body, request_id(request), model.dimensions)
    result = await state.gateway.embed(
        principal, embedding_request, "embeddings", response_headers(request)
    )
    return json_response(adapter.embeddings(body.model, result, body.encoding_format))


@router.get("/models", summary="List the models this server serves")
async def list_models(request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    cards = [
        adapter.model_card(m.name, m.owned_by, m.created, m.context_length)
        for m in state.catalog.usable(principal.models)  # a restricted key: its models only
    ]
    return json_response({"object": "list", "data": cards})


@router.get("/models/{model_id:path}", summary="Describe one model")
async def get_model(model_id: str, request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    model = state.catalog.get(model_id)
    state.catalog.check_allowed(principal.models, model.name)
    card = adapter.model_card(model.name, model.owned_by, model.created, model.context_length)
    return json_response(card)


B = TypeVar("B", ChatCompletionRequest, CompletionRequest)


async def _generation_route(
    request: Request,
    body_model: type[B],
    to_core: Callable[[B, str], GenerationRequest],
    endpoint: str,
) -> Response:
    """Authenticate, parse, generate: the shared path of the two generation endpoints."""
    state = app_state(request)
    principal = await authenticate(request, state)
    body = adapter.parse_body(await request.body(), body_model)
    generation_request = to_core(body, request_id(request))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _generate(
        request, state, principal, generation_request, endpoint, body.stream, include_usage
    )


async def _generate(
    request: Request,
    state: AppState,
    principal: Principal,
    generation_request: GenerationRequest,
    endpoint: str,
    stream: bool,
    include_usage: bool,
) -> Response:
    if not stream:
        answered = await answer(request, state, principal, generation_request, endpoint, collect)
        if answered is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        answered_by, collected = answered
        build = adapter.chat_completion if generation_request.is_chat else adapter.text_completion
        body = build(answered_by.request_id, generation_request.model, int(time.time()), collected)
        return json_response(body)
    generation = await start_generation(request, state, principal, generation_request, endpoint)
    if generation is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    writer = ChunkWriter(
        generation.request_id,
        generation_request.model,
        int(time.time()),
        chat=generation_request.is_chat,
        include_usage=include_usage,
    )
    return EventStreamResponse(sse_stream(generation, writer, to_openai_error))
