"""Fetch a URL sent by a client, under the egress policy (``core/egress.py``).

``SafeFetcher.fetch`` is the one way OpenMaaS reads a client's URL. Per hop:

1. ``check_url`` judges the URL as written (fetching on, http(s), the host's name, a
   literal address) before anything touches the network.
2. The host is resolved **once** (an injectable resolver; by default the event loop's
   ``getaddrinfo``) and **every** address is judged: one private answer refuses the URL.
3. The request goes to a checked address, never to the name: the URL handed to httpx's
   transport carries the IP itself, with the original ``Host`` header and, for https, the
   original name as SNI and as the name the certificate must match (httpcore's
   ``sni_hostname`` request extension). No second DNS lookup happens, so a rebinding DNS
   server that answers a public address to the check and ``127.0.0.1`` to the connect has
   nothing to rebind. The transport is used without an ``AsyncClient``: no proxy from the
   environment (a proxy would resolve the name again) and no parsing of ``Location``
   headers behind our back.
4. Redirects are followed by hand, at most ``policy.max_redirects``, each hop judged from
   scratch (steps 1-3); a redirect to ``data:``, ``file:`` or a private address is refused.
5. The body is streamed raw (``Accept-Encoding: identity``; a compressed answer is refused,
   so a small gzip bomb cannot expand past the cap) up to ``policy.max_bytes``, and the
   whole fetch, resolution included, runs under ``policy.timeout_seconds``.

Every refusal is ``UrlRefused`` (HTTP 400 in every protocol) with a message that says why
and never includes fetched content. No credential is ever attached to these requests.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

from openmaas.core.egress import (
    DataUrl,
    EgressPolicy,
    HttpUrl,
    IPAddress,
    check_addresses,
    check_content_type,
    check_url,
)
from openmaas.core.errors import UrlRefused

Resolver = Callable[[str, int], Awaitable[Sequence[str | IPAddress]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "OpenMaaS-fetch/1"


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (TCP), in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Fetched:
    url: str  # the normalized URL the content came from (after redirects)
    media_type: str
    content: bytes = field(repr=False)


class SafeFetcher:
    """Fetches client URLs under ``policy``; see the module's description.

    ``resolver`` is injectable for tests (``async (host, port) -> [address, …]``);
    ``verify`` is passed to httpx (an ``ssl.SSLContext`` to trust a private CA).
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy
        self._resolver = resolver or system_resolver
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context() if verify is True else verify
        )

    async def fetch(self, url: str, *, param: str | None = None) -> Fetched:
        """The content at ``url``, or ``UrlRefused`` naming ``param`` and saying why."""
        target = check_url(url, self.policy, param=param)
        if isinstance(target, DataUrl):
            return Fetched(url="data:", media_type=target.media_type, content=target.data)
        seconds = self.policy.timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                return await self._follow(target, param)
        except TimeoutError:
            raise UrlRefused(
                f"URL refused: it could not be fetched within {seconds:g} s.", param=param
            ) from None

    async def _follow(self, target: HttpUrl, param: str | None) -> Fetched:
        policy = self.policy
        # The transport, not a client: a client would read proxies from the environment
        # and parse the Location of every redirect itself (even one it does not follow).
        async with httpx.AsyncHTTPTransport(
            verify=self._verify,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as transport:
            hop = 0
            while True:
                context = "URL refused" if hop == 0 else f"URL refused at redirect {hop}"
                addresses = await self._addresses(target, param, context)
                response = await self._connect(transport, target, addresses, param, context)
                try:
                    if response.status_code not in _REDIRECTS:
                        return await self._read(target, response, param, context)
                    location = response.headers.get("location")
                finally:
                    await response.aclose()
                if not location:
                    raise UrlRefused(f"{context}: a redirect without a Location.", param=param)
                if hop >= policy.max_redirects:
                    raise UrlRefused(
                        f"{context}: more than {policy.max_redirects} redirects.", param=param
                    )
                hop += 1
                next_url = check_url(
                    urljoin(target.url, location),
                    policy,
                    param=param,
                    allow_data=False,
                    context=f"URL refused at redirect {hop}",
                )
                assert isinstance(next_url, HttpUrl)  # allow_data=False
                target = next_url

    async def _addresses(
        self, target: HttpUrl, param: str | None, context: str
    ) -> tuple[IPAddress, ...]:
        """The checked addresses to connect to: the literal one, or every answer of one
        resolution, each judged."""
        if target.ip is not None:
            return (target.ip,)
        try:
            answers = await self._resolver(target.host, target.port)
        except (OSError, UnicodeError):
            raise UrlRefused(
                f"{context}: the host {target.host} could not be resolved.", param=param
            ) from None
        return check_addresses(target, answers, self.policy, param=param, context=context)

    async def _connect(
        self,
        transport: httpx.AsyncHTTPTransport,
        target: HttpUrl,
        addresses: tuple[IPAddress, ...],
        param: str | None,
        context: str,
    ) -> httpx.Response:
        """Send the GET to the first checked address that accepts a connection."""
        headers = {
            "Host": target.authority,
            "User-Agent": _USER_AGENT,
            "Accept": ", ".join(sorted(self.policy.allowed_content_types or {"*/*"})),
            "Accept-Encoding": "identity",
        }
        extensions: dict[str, object] = {
            "timeout": httpx.Timeout(self.policy.timeout_seconds).as_dict()
        }
        if target.scheme == "https" and target.ip is None:
            extensions["sni_hostname"] = target.host
        for address in addresses:
            request = httpx.Request(
                "GET", target.url_for(address), headers=headers, extensions=extensions
            )
            try:
                response = await transport.handle_async_request(request)
                response.request = request
                return response
            except httpx.ConnectError:
                continue
            except httpx.TimeoutException:
                raise UrlRefused(
                    f"{context}: the host did not answer in time.", param=param
                ) from None
            except httpx.HTTPError:
                raise UrlRefused(
                    f"{context}: the host sent an invalid HTTP answer.", param=param
                ) from None
        raise UrlRefused(
            f"{context}: could not connect to {target.host} (or its TLS certificate "
            "is not valid for it).",
            param=param,
        )

    async def _read(
        self, target: HttpUrl, response: httpx.Response, param: str | None, context: str
    ) -> Fetched:
        policy = self.policy
        if not 200 <= response.status_code < 300:
            raise UrlRefused(
                f"{context}: the host answered HTTP {response.status_code}.", param=param
            )
        media_type = check_content_type(
            response.headers.get("content-type"), policy, param=param, context=context
        )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UrlRefused(f"{context}: the answer is compressed ({encoding}).", param=param)
        too_large = f"{context}: the answer is larger than {policy.max_bytes} bytes."
        length = response.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
            raise UrlRefused(too_large, param=param)
        chunks: list[bytes] = []
        received = 0
        try:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > policy.max_bytes:
                    raise UrlRefused(too_large, param=param)
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise UrlRefused(f"{context}: the host stopped sending.", param=param) from None
        except httpx.HTTPError:
            raise UrlRefused(
                f"{context}: the answer was cut off or malformed.", param=param
            ) from None
        return Fetched(url=target.url, media_type=media_type, content=b"".join(chunks))
