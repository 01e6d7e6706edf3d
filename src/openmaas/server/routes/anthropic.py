"""The Anthropic Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Callers authenticate with ``x-api-key: <key>`` (what the ``anthropic`` SDK sends) or
``Authorization: Bearer <key>`` (Claude Code with ``ANTHROPIC_AUTH_TOKEN``). The
``anthropic-version`` and ``anthropic-beta`` headers are accepted whatever their value, and so
is the query string (Claude Code posts to ``/v1/messages?beta=true``).
Model aliases (``OPENMAAS_MODEL_ALIASES``) are resolved before the gateway is called, so the
request, its usage record and the response all carry the served model's name.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from openmaas.accounts.auth import Principal
from openmaas.core.types import GenerationRequest
from openmaas.protocols.anthropic import adapter
from openmaas.protocols.anthropic.errors import to_anthropic_error
from openmaas.protocols.anthropic.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
)
from openmaas.protocols.anthropic.sse import MessageStreamWriter
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

router = APIRouter(prefix="/v1/messages", tags=["Anthropic-compatible"])
BODY_MODELS: list[type[BaseModel]] = [AnthropicMessagesRequest, AnthropicCountTokensRequest]
ENDPOINT = "messages"


@router.post(
    "",
    summary="Create a message (Anthropic Messages API; streaming with SSE when stream=true)",
    openapi_extra=json_body(AnthropicMessagesRequest),
)
async def create_message(request: Request) -> Response:
    state = app_state(request)
    principal = await authenticate(request, state)
    body = adapter.parse_body(await request.body(), AnthropicMessagesRequest)
    model = state.catalog.resolve(body.model)
    generation_request = adapter.messages_request(body, request_id(request), model)
    return await _generate(request, state, principal, generation_request, body)


@router.post(
    "/count_tokens",
    summary="Count the input tokens of a message request (exact; nothing is generated)",
    openapi_extra=json_body(AnthropicCountTokensRequest),
)
async def count_tokens(request: Request) -> Response:
    """Admitted like a request (it costs engine work): it counts against the caller's request
    limits (RPM, concurrency; a 429 over them), but holds no money, is never charged and
    writes no usage record."""
    state = app_state(request)
    principal = await authenticate(request, state)
    body = adapter.parse_body(await request.body(), AnthropicCountTokensRequest)
    model = state.catalog.resolve(body.model)
    state.catalog.check_allowed(principal.models, model)
    core = adapter.count_request(body, request_id(request), model)
    async with state.accountant.counting(principal, model) as admission:
        if admission is not None:
            response_headers(request).update(admission.headers)
        tokens = await state.gateway.count_prompt_tokens(core)
    return json_response({"input_tokens": tokens})


async def _generate(
    request: Request,
    state: AppState,
    principal: Principal,
    generation_request: GenerationRequest,
    body: AnthropicMessagesRequest,
) -> Response:
    omit_thinking = adapter.omits_thinking(body)
    if body.stream:
        generation = await start_generation(request, state, principal, generation_request, ENDPOINT)
        if generation is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        writer = MessageStreamWriter(
            generation.request_id, generation_request.model, omit_thinking=omit_thinking
        )
        return EventStreamResponse(sse_stream(generation, writer, to_anthropic_error))
    answered = await answer(request, state, principal, generation_request, ENDPOINT, collect)
    if answered is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    generation, collected = answered
    message = adapter.message_response(
        generation.request_id, generation_request.model, collected, omit_thinking=omit_thinking
    )
    return json_response(message)
