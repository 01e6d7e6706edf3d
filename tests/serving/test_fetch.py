"""SafeFetcher (serving/fetch.py) against real HTTP servers on 127.0.0.x, the only place
these tests send traffic: refused before any connection unless the admin allows the
network, every redirect hop judged again, DNS answers pinned, bodies and time capped."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from openmaas.core.egress import EgressPolicy
from openmaas.core.errors import InvalidRequest, UrlRefused
from openmaas.protocols.anthropic import adapter as anthropic
from openmaas.protocols.anthropic.schemas import AnthropicMessagesRequest
from openmaas.protocols.openai import adapter as openai
from openmaas.protocols.openai.schemas import ChatCompletionRequest
from openmaas.protocols.zhipu import adapter as zhipu
from openmaas.protocols.zhipu.schemas import ZhipuChatRequest
from openmaas.serving.fetch import SafeFetcher, system_resolver

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PARAM = "messages[0].content[1].image_url.url"
LOOPBACK = ipaddress.ip_network("127.0.0.1/32")


# -- a tiny HTTP server that records what reaches it ------------------------------------
@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "image/png"})
    body: bytes = PNG
    chunked: bool = False  # no Content-Length: the body's size is unknown up front
    hang: bool = False  # accept the request, then never answer


class LocalServer:
    def __init__(self, host: str, routes: dict[str, Reply], tls: ssl.SSLContext | None = None):
        self.host = host
        self.routes = routes
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.sni: list[str | None] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._stop = asyncio.Event()
        self.port = 0

    async def start(self, port: int = 0) -> LocalServer:
        if self.tls is not None:
            self.tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
        self._server = await asyncio.start_server(self._handle, self.host, port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._stop.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        self.requests.append((target, headers))
        reply = self.routes.get(target, Reply(404, {"Content-Type": "text/plain"}, b"no"))
        if reply.hang:
            await self._stop.wait()
            writer.close()
            return
        out = [f"HTTP/1.1 {reply.status} X"]
        out += [f"{k}: {v}" for k, v in reply.headers.items()]
        if reply.chunked:
            out.append("Transfer-Encoding: chunked")
        else:
            out.append(f"Content-Length: {len(reply.body)}")
        out.append("Connection: close")
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode())
        if reply.chunked:
            for start in range(0, len(reply.body), 4096):
                piece = reply.body[start : start + 4096]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(reply.body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[LocalServer]]]:
    started: list[LocalServer] = []

    async def start(
        host: str = "127.0.0.1",
        routes: dict[str, Reply] | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> LocalServer:
        try:
            server = await LocalServer(host, routes or {}, tls).start(port)
        except OSError as exc:
            pytest.skip(f"cannot listen on {host}:{port}: {exc}")
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


class Resolver:
    """A scripted DNS: each call pops the next answer for the host (the last one sticks)."""

    def __init__(self, answers: dict[str, list[list[str]]] | None = None):
        self.answers = answers or {}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        script = self.answers.get(host)
        if not script:
            raise socket.gaierror(socket.EAI_NONAME, "unknown host")
        return script.pop(0) if len(script) > 1 else script[0]


def policy(**options: object) -> EgressPolicy:
    base: dict[str, object] = {"enabled": True, "timeout_seconds": 5.0}
    base.update(options)
    return EgressPolicy(**base)  # type: ignore[arg-type]


@pytest.fixture
def no_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP request at all fails the test."""

    async def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the fetcher sent a request")

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", refuse)


# -- off by default, and refused before any connection ----------------------------------
async def test_fetching_disabled_is_refused_without_any_resolution(no_sends: None) -> None:
    resolver = Resolver({"example.com": [["93.184.216.34"]]})
    fetcher = SafeFetcher(EgressPolicy(), resolver=resolver)
    with pytest.raises(UrlRefused, match="does not fetch URLs sent by clients") as caught:
        await fetcher.fetch("https://example.com/cat.png", param=PARAM)
    assert caught.value.param == PARAM
    assert resolver.calls == []


async def test_the_local_server_is_refused_before_any_connection(servers) -> None:
    server = await servers(routes={"/img.png": Reply()})
    resolver = Resolver({"images.example.com": [["127.0.0.1"]]})
    fetcher = SafeFetcher(policy(), resolver=resolver)
    for url in [
        f"{server.base}/img.png",
        f"http://127.1:{server.port}/img.png",
        f"http://2130706433:{server.port}/img.png",
        f"http://[::ffff:127.0.0.1]:{server.port}/img.png",
        f"http://localhost:{server.port}/img.png",
        f"http://images.example.com:{server.port}/img.png",
    ]:
        with pytest.raises(UrlRefused, match="loopback|local"):
            await fetcher.fetch(url, param=PARAM)
    assert resolver.calls == [("images.example.com", server.port)]
    assert server.connections == 0 and server.requests == []


async def test_with_the_loopback_address_allowed_the_fetch_succeeds(servers) -> None:
    server = await servers(routes={"/img.png": Reply()})
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,)))
    fetched = await fetcher.fetch(f"{server.base}/img.png#frag")
    assert fetched.content == PNG and fetched.media_type == "image/png"
    assert fetched.url == f"{server.base}/img.png"
    target, headers = server.requests[0]
    assert target == "/img.png"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["accept-encoding"] == "identity"
    assert "authorization" not in headers and "cookie" not in headers


async def test_a_name_is_connected_by_its_checked_address_with_its_own_host_header(
    servers,
) -> None:
    server = await servers(routes={"/img.png": Reply()})
    resolver = Resolver({"images.example.com": [["127.0.0.1"]]})
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,)), resolver=resolver)
    fetched = await fetcher.fetch(f"http://Images.Example.COM:{server.port}/img.png")
    assert fetched.content == PNG
    assert server.requests[0][1]["host"] == f"images.example.com:{server.port}"


# -- redirects: every hop judged from scratch -------------------------------------------
@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("http://127.0.0.2:{other}/img.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]:{other}/img.png", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://0x7f000002:{other}/img.png", "loopback"),
        ("http://localhost:{other}/img.png", "local"),
        ("http://10.0.0.1/", "private"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher'"),
        ("data:image/png;base64,iVBORw0KGgo=", "data: URLs are not accepted"),
    ],
)
async def test_a_redirect_to_a_blocked_place_is_refused_at_the_hop(
    servers, location: str, why: str
) -> None:
    other = await servers("127.0.0.2", {"/img.png": Reply()})
    target = location.format(other=other.port)
    server = await servers(routes={"/go": Reply(302, {"Location": target}, b"")})
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,), allow_data_urls=True))
    with pytest.raises(UrlRefused, match=why) as caught:
        await fetcher.fetch(f"{server.base}/go", param=PARAM)
    assert "at redirect 1" in caught.value.message and caught.value.param == PARAM
    assert len(server.requests) == 1
    assert other.connections == 0


async def test_redirects_within_the_policy_are_followed_and_bounded(servers) -> None:
    routes = {
        "/img.png": Reply(),
        "/relative": Reply(301, {"Location": "/img.png"}, b""),
        "/loop": Reply(307, {"Location": "/loop"}, b""),
        "/nowhere": Reply(302, {}, b""),
    }
    server = await servers(routes=routes)
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,), max_redirects=3))
    fetched = await fetcher.fetch(f"{server.base}/relative")
    assert fetched.content == PNG and fetched.url == f"{server.base}/img.png"
    server.requests.clear()
    with pytest.raises(UrlRefused, match="more than 3 redirects"):
        await fetcher.fetch(f"{server.base}/loop")
    assert len(server.requests) == 4
    with pytest.raises(UrlRefused, match="without a Location"):
        await fetcher.fetch(f"{server.base}/nowhere")


# -- DNS: every answer checked, the connection pinned to a checked one ------------------
async def test_a_name_with_one_private_answer_among_public_ones_is_refused(
    servers, no_sends: None
) -> None:
    server = await servers(routes={"/img.png": Reply()})
    resolver = Resolver({"mixed.example.com": [["93.184.216.34", "127.0.0.1"]]})
    fetcher = SafeFetcher(policy(), resolver=resolver)
    with pytest.raises(UrlRefused, match="resolves to a loopback address") as caught:
        await fetcher.fetch(f"http://mixed.example.com:{server.port}/img.png")
    assert "127.0.0.1" not in caught.value.message
    assert server.connections == 0


async def test_dns_rebinding_cannot_reach_the_second_answer(
    servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = await servers(routes={"/img.png": Reply(body=PNG + b"good")})
    evil = await servers("127.0.0.2", {"/img.png": Reply(body=PNG + b"evil")}, port=good.port)
    resolver = Resolver({"rebind.example.com": [["127.0.0.1"], ["127.0.0.2"]]})
    looked_up: list[object] = []
    real_getaddrinfo = socket.getaddrinfo

    def spy(host: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        looked_up.append(host)
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,)), resolver=resolver)
    fetched = await fetcher.fetch(f"http://rebind.example.com:{good.port}/img.png")
    assert fetched.content == PNG + b"good"
    assert len(resolver.calls) == 1  # resolved once; the connection used that answer
    assert "rebind.example.com" not in looked_up and b"rebind.example.com" not in looked_up
    assert good.requests[0][1]["host"] == f"rebind.example.com:{good.port}"
    assert evil.connections == 0
    # The next fetch resolves again, and the rebound answer is judged, not connected to.
    with pytest.raises(UrlRefused, match="resolves to a loopback"):
        await fetcher.fetch(f"http://rebind.example.com:{good.port}/img.png")
    assert evil.connections == 0


async def test_a_redirect_back_to_the_same_name_is_resolved_and_judged_again(servers) -> None:
    server = await servers(routes={"/go": Reply(302, {"Location": "/img.png"}, b"")})
    evil = await servers("127.0.0.2", {"/img.png": Reply()}, port=server.port)
    resolver = Resolver({"rebind.example.com": [["127.0.0.1"], ["127.0.0.2"]]})
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,)), resolver=resolver)
    with pytest.raises(UrlRefused, match="at redirect 1: the host rebind.example.com resolves"):
        await fetcher.fetch(f"http://rebind.example.com:{server.port}/go")
    assert len(resolver.calls) == 2 and evil.connections == 0


async def test_an_unknown_name_is_refused() -> None:
    fetcher = SafeFetcher(policy(), resolver=Resolver())
    with pytest.raises(UrlRefused, match="could not be resolved"):
        await fetcher.fetch("https://nx.example.com/cat.png")


async def test_the_default_resolver_uses_getaddrinfo_without_the_network() -> None:
    answers = await system_resolver("127.0.0.1", 80)
    assert answers == ["127.0.0.1"]


# -- caps on size, time and kind --------------------------------------------------------
async def test_the_byte_cap_is_enforced_with_and_without_a_content_length(servers) -> None:
    big = PNG + b"\x00" * 5000
    server = await servers(
        routes={"/sized": Reply(body=big), "/chunked": Reply(body=big, chunked=True)}
    )
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,), max_bytes=4096))
    for path in ["/sized", "/chunked"]:
        with pytest.raises(UrlRefused, match="larger than 4096 bytes"):
            await fetcher.fetch(f"{server.base}{path}")
    exact = SafeFetcher(policy(allowed_networks=(LOOPBACK,), max_bytes=len(big)))
    assert (await exact.fetch(f"{server.base}/chunked")).content == big


async def test_the_total_timeout_is_enforced(servers) -> None:
    server = await servers(routes={"/hang": Reply(hang=True)})
    resolver_started = asyncio.Event()

    async def slow_resolver(host: str, port: int) -> list[str]:
        resolver_started.set()
        await asyncio.sleep(60)  # a resolver that hangs: the total timeout must cut it
        return ["127.0.0.1"]

    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,), timeout_seconds=0.3))
    with pytest.raises(UrlRefused, match=r"within 0.3 s"):
        await asyncio.wait_for(fetcher.fetch(f"{server.base}/hang"), 5)
    assert len(server.requests) == 1
    slow = SafeFetcher(fetcher.policy, resolver=slow_resolver)
    with pytest.raises(UrlRefused, match=r"within 0.3 s"):
        await asyncio.wait_for(slow.fetch(f"http://slow.example.com:{server.port}/"), 5)
    assert resolver_started.is_set()


async def test_only_the_allowed_kinds_of_answer_are_accepted(servers) -> None:
    canary = b"SECRET-CANARY-1234"
    server = await servers(
        routes={
            "/html": Reply(headers={"Content-Type": "text/html"}, body=canary),
            "/gzip": Reply(headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}),
            "/missing": Reply(404, {"Content-Type": "image/png"}, canary),
            "/error": Reply(500, {"Content-Type": "text/plain"}, canary),
        }
    )
    fetcher = SafeFetcher(policy(allowed_networks=(LOOPBACK,)))
    for path, why in [
        ("/html", "content type 'text/html'"),
        ("/gzip", "compressed"),
        ("/missing", "HTTP 404"),
        ("/error", "HTTP 500"),
    ]:
        with pytest.raises(UrlRefused, match=why) as caught:
            await fetcher.fetch(f"{server.base}{path}")
        assert canary.decode() not in caught.value.message


async def test_a_data_url_needs_no_network_even_with_fetching_off(no_sends: None) -> None:
    resolver = Resolver()
    fetcher = SafeFetcher(EgressPolicy(allow_data_urls=True), resolver=resolver)
    fetched = await fetcher.fetch("data:image/png;base64,iVBORw0KGgo=")
    assert fetched.content == b"\x89PNG\r\n\x1a\n" and fetched.media_type == "image/png"
    with pytest.raises(UrlRefused, match="does not fetch"):
        await fetcher.fetch("https://example.com/a.png")
    assert resolver.calls == []


# -- https: the pinned address, the original name as SNI and for the certificate --------
@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=images.test",
            "-addext",
            "subjectAltName=DNS:images.test",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_is_pinned_and_verified_against_the_original_name(
    servers, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = await servers(routes={"/img.png": Reply()}, tls=server_tls)
    client_tls = ssl.create_default_context(cafile=str(cert))
    resolver = Resolver({"images.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    fetcher = SafeFetcher(
        policy(
            allowed_networks=(LOOPBACK,), allowed_hosts=frozenset({"images.test", "other.test"})
        ),
        resolver=resolver,
        verify=client_tls,
    )
    fetched = await fetcher.fetch(f"https://images.test:{server.port}/img.png")
    assert fetched.content == PNG
    assert server.sni == ["images.test"]
    assert server.requests[0][1]["host"] == f"images.test:{server.port}"
    # The certificate is checked against the name asked for, not the address connected to.
    with pytest.raises(UrlRefused, match="could not connect"):
        await fetcher.fetch(f"https://other.test:{server.port}/img.png")
    assert len(server.requests) == 1


# -- tripwire: no protocol accepts a client's image URL yet ------------------------------
async def test_no_protocol_adapter_accepts_an_image_url_yet(servers) -> None:
    """No engine takes images, so every adapter refuses image parts outright (400) and no
    URL reaches any fetcher. Whoever adds vision must route these URLs through
    SafeFetcher (with settings for its egress policy, off by default) and change this
    test."""
    canary = await servers(routes={"/img.png": Reply()})
    url = f"{canary.base}/img.png"
    image_url = {"type": "image_url", "image_url": {"url": url}}
    chat = {"model": "m", "messages": [{"role": "user", "content": [image_url]}]}
    image = {"type": "image", "source": {"type": "url", "url": url}}
    result = {"type": "tool_result", "tool_use_id": "t", "content": [image]}
    attempts = [
        lambda: openai.chat_request(
            openai.parse_body(orjson.dumps(chat), ChatCompletionRequest), "r"
        ),
        lambda: zhipu.chat_request(zhipu.parse_body(orjson.dumps(chat), ZhipuChatRequest), "r"),
    ]
    for content in ([image], [result]):
        body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": content}]}
        attempts.append(
            lambda body=body: anthropic.messages_request(
                anthropic.parse_body(orjson.dumps(body), AnthropicMessagesRequest), "r", "m"
            )
        )
    for attempt in attempts:
        with pytest.raises(InvalidRequest) as caught:
            attempt()
        assert (caught.value.param or "").startswith("messages[0].content[0]")
    assert canary.connections == 0
