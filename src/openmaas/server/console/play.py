"""The console's playground and SDK page (``/console/orgs/{org}/playground``, ``.../sdk``).

No back door: the playground's page is served here, but its chat goes from the browser to
the public ``POST /v1/chat/completions`` with an API key, as any client's does, metered and
billed as theirs. The key is either one the person pastes, or one made for them on demand
(``POST .../playground/key``, a member's right): restricted to the chosen model, expiring
within the hour, created by them (audited as ``user:<id>``, listed among the
organization's keys), and revoked when they sign out. The page's script
(``static/console.js``) reads the stream (``fetch`` and the SSE frames): reasoning apart
from the answer, tool calls shown, temperature and max tokens; the same request is shown
as curl, Python (``openai``) and Python (Zhipu's SDK), rendered here, so the page shows
them without JavaScript too.

The SDK page shows how to point the OpenAI, Zhipu and Anthropic SDKs and Claude Code at this
server, with the base URLs taken from the request's origin (the scheme and host the browser
used; behind a proxy, uvicorn's trusted ``X-Forwarded-*`` headers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from openmaas.accounts.people import PLAYGROUND_KEY_MS
from openmaas.core.admin_fields import iso_ms
from openmaas.engines.base import ModelKind
from openmaas.server.console.pages import HEADERS, PREFIX, enter, page
from openmaas.server.state import app_state

router = APIRouter(prefix=PREFIX, include_in_schema=False)

EXAMPLE_PROMPT = "Hello! Who are you?"
EXAMPLE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@dataclass(frozen=True)
class BaseUrls:
    """Where each protocol's SDK finds this server, from the request's origin."""

    origin: str

    @classmethod
    def of(cls, request: Request) -> BaseUrls:
        return cls(str(request.base_url).rstrip("/"))

    @property
    def openai(self) -> str:
        return f"{self.origin}/v1"

    @property
    def zhipu(self) -> str:
        return f"{self.origin}/api/paas/v4/"

    @property
    def anthropic(self) -> str:
        return self.origin


def _chat_models(request: Request) -> list[str]:
    """The models a person may chat with: every served chat model (an organization may use
    each; a key may narrow that)."""
    catalog = app_state(request).catalog
    return sorted(m.name for m in catalog.list() if m.kind is ModelKind.CHAT)


def snippets(urls: BaseUrls, model: str, prompt: str = EXAMPLE_PROMPT) -> dict[str, str]:
    """The playground's request as curl, Python (openai) and Python (Zhipu's SDK), with the
    key read from ``OPENMAAS_API_KEY``; the page's script rewrites them as the form changes."""
    messages = [{"role": "user", "content": prompt}]
    body = json.dumps({"model": model, "messages": messages, "stream": True}, ensure_ascii=False)
    python_messages = json.dumps(messages, ensure_ascii=False)
    return {
        "curl": (
            f"curl {urls.openai}/chat/completions \\\n"
            '  -H "Authorization: Bearer $OPENMAAS_API_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"  -d '{body}'"
        ),
        "openai": (
            "import os\n"
            "from openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{urls.openai}", api_key=os.environ["OPENMAAS_API_KEY"])\n'
            "stream = client.chat.completions.create(\n"
            f'    model="{model}",\n'
            f"    messages={python_messages},\n"
            "    stream=True,\n"
            ")\n"
            "for chunk in stream:\n"
            '    print(chunk.choices[0].delta.content or "", end="")\n'
        ),
        "zhipu": (
            "import os\n"
            "from zai import ZhipuAiClient  # pip install zai-sdk"
            " (or: from zhipuai import ZhipuAI)\n\n"
            "client = ZhipuAiClient(\n"
            f'    api_key=os.environ["OPENMAAS_API_KEY"], base_url="{urls.zhipu}"\n'
            ")\n"
            "stream = client.chat.completions.create(\n"
            f'    model="{model}",\n'
            f"    messages={python_messages},\n"
            "    stream=True,\n"
            ")\n"
            "for chunk in stream:\n"
            '    print(chunk.choices[0].delta.content or "", end="")\n'
        ),
    }


@router.get("/orgs/{org}/playground")
@page
async def playground(request: Request, org: str) -> Response:
    visit = await enter(request, org)
    assert visit.org is not None and visit.user is not None
    models = _chat_models(request)
    chosen = request.query_params.get("model", "")
    model = chosen if chosen in models else (models[0] if models else "")
    urls = BaseUrls.of(request)
    return visit.render(
        "playground.html",
        page="playground",
        orgs=await visit.people().organizations(visit.user),
        models=models,
        model=model,
        prompt=EXAMPLE_PROMPT,
        urls=urls,
        snippets=snippets(urls, model),
        tool=json.dumps(EXAMPLE_TOOL),
        key_minutes=PLAYGROUND_KEY_MS // 60_000,
    )


@router.post("/orgs/{org}/playground/key")
@page
async def playground_key(request: Request, org: str) -> Response:
    """A key for the playground: for the form's model only, for an hour at most, revoked at
    sign-out. JSON: ``{"key", "id", "model", "expires_at"}``; a model not served: 400."""
    visit = await enter(request, org)
    assert visit.org is not None and visit.session is not None
    model = visit.form.get("model", "")
    if model not in _chat_models(request):
        body = {"error": visit.t("key_model_unknown", model=model)}
        return JSONResponse(body, 400, headers=HEADERS)
    issued = await visit.people().issue_playground_key(visit.org, model, visit.session.token)
    assert issued.key.expires_at_ms is not None
    body = {
        "key": issued.token,
        "id": issued.key.id,
        "model": model,
        "expires_at": iso_ms(issued.key.expires_at_ms),
    }
    return JSONResponse(body, 201, headers=HEADERS)


@router.get("/orgs/{org}/sdk")
@page
async def sdk(request: Request, org: str) -> Response:
    visit = await enter(request, org)
    assert visit.org is not None and visit.user is not None
    models = _chat_models(request)
    return visit.render(
        "sdk.html",
        page="sdk",
        orgs=await visit.people().organizations(visit.user),
        urls=BaseUrls.of(request),
        model=models[0] if models else "MODEL",
    )
