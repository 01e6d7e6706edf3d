"""Which URLs sent by clients may be fetched: parsing, normalizing and judging, no I/O.

The only outbound URLs OpenMaaS calls on its own are the admin's catalog. A URL that comes
from a client (an ``image_url`` in a vision message, a file URL) is fetched only under an
``EgressPolicy``, which is off by default. This module decides; ``serving/fetch.py``
resolves, connects (to the address judged here, never to a fresh DNS answer) and reads.

The checks, in order:

1. ``parse_url``: http or https only (``data:`` only when the policy allows it, decoded
   under a size cap); no user info; no whitespace, control characters, backslashes or
   percent signs in the host; an IDNA host (IDNA 2003, as Python's codec does); an IPv6
   literal in brackets; a host that ends in a number is an IPv4 address spelled as libc's
   ``inet_aton`` reads it (``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1``) or is
   refused. The result carries a normalized URL, so the HTTP client never re-interprets the
   client's spelling.
2. ``check_url``: the policy is on; the host is not a name that resolves inside a network
   (``localhost``, ``metadata.google.internal``, ``*.internal``, single labels, …) unless the
   admin allows that host; a literal address passes ``address_refusal``.
3. ``check_addresses``: after resolution, *every* address the name resolves to passes
   ``address_refusal``; one bad answer refuses the URL.

``address_refusal`` refuses what is not global unicast: loopback, RFC 1918, CGNAT,
link-local (with the cloud metadata addresses), unique-local, unspecified, multicast,
broadcast, reserved, documentation and benchmarking ranges, and IPv4 addresses embedded in
IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4) when the embedded address is one of those.
Networks the admin lists in ``allowed_networks`` pass.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from openmaas.core.errors import ConfigurationError, UrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_URL_CHARS = 8192


# -- the policy -------------------------------------------------------------------------
@dataclass(frozen=True)
class EgressPolicy:
    """What the admin allows for URLs that come from clients. The default refuses them all.

    ``allowed_networks`` lifts the address rules for those networks (e.g. an internal image
    store at ``10.8.0.0/16``); ``allowed_hosts`` lifts the *name* rules for those exact
    hosts (e.g. ``images.corp.internal``) but not the address rules: an allowed host must
    still resolve to public addresses or to addresses in ``allowed_networks``.
    ``allowed_content_types`` of ``None`` accepts any media type.
    """

    enabled: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 3
    timeout_seconds: float = 10.0
    allowed_content_types: frozenset[str] | None = DEFAULT_CONTENT_TYPES
    allow_data_urls: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ConfigurationError("The egress byte cap must be at least 1 byte.")
        if self.max_redirects < 0:
            raise ConfigurationError("The egress redirect limit cannot be negative.")
        if not self.timeout_seconds > 0:
            raise ConfigurationError("The egress timeout must be positive.")
        hosts = frozenset(_normalize_allowed_host(host) for host in self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", hosts)
        if self.allowed_content_types is not None:
            types = frozenset(t.strip().lower() for t in self.allowed_content_types)
            object.__setattr__(self, "allowed_content_types", types)

    @classmethod
    def build(
        cls,
        *,
        enabled: bool = False,
        allowed_networks: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        **options: object,
    ) -> EgressPolicy:
        """A policy from an admin's strings (CIDRs, host names); bad values raise
        ``ConfigurationError`` naming them."""
        return cls(
            enabled=enabled,
            allowed_networks=parse_networks(allowed_networks),
            allowed_hosts=frozenset(allowed_hosts),
            **options,  # type: ignore[arg-type]
        )

    def allows_network(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings as networks; host bits set (``10.1.2.3/16``) is a configuration error,
    as it usually means a typo."""
    out: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=True))
        except ValueError as exc:
            raise ConfigurationError(f"Invalid allowed network {cidr!r}: {exc}.") from None
    return tuple(out)


def _normalize_allowed_host(host: str) -> str:
    try:
        return _idna_host(host.strip().rstrip("."))
    except ValueError:
        raise ConfigurationError(f"Invalid allowed host {host!r}.") from None


# -- addresses --------------------------------------------------------------------------
def _v4(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _v6(cidr: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(cidr)


# Cloud metadata services: named first so the refusal says what it protects.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack…
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.0.23",  # Tencent Cloud
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)

# The first match names the reason; more specific entries come first.
_V4_BLOCKED: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_v4("0.0.0.0/8"), "an unspecified ('this network', 0.0.0.0/8)"),
    (_v4("10.0.0.0/8"), "a private (RFC 1918)"),
    (_v4("100.64.0.0/10"), "a shared carrier-grade NAT (100.64.0.0/10)"),
    (_v4("127.0.0.0/8"), "a loopback"),
    (_v4("169.254.0.0/16"), "a link-local"),
    (_v4("172.16.0.0/12"), "a private (RFC 1918)"),
    (_v4("192.0.0.0/24"), "an IETF protocol-assignment (192.0.0.0/24)"),
    (_v4("192.0.2.0/24"), "a documentation"),
    (_v4("192.88.99.0/24"), "a 6to4 relay anycast"),
    (_v4("192.168.0.0/16"), "a private (RFC 1918)"),
    (_v4("198.18.0.0/15"), "a benchmarking"),
    (_v4("198.51.100.0/24"), "a documentation"),
    (_v4("203.0.113.0/24"), "a documentation"),
    (_v4("224.0.0.0/4"), "a multicast"),
    (_v4("255.255.255.255/32"), "the broadcast"),
    (_v4("240.0.0.0/4"), "a reserved (240.0.0.0/4)"),
)

_MAPPED = _v6("::ffff:0:0/96")
_COMPATIBLE = _v6("::/96")
_NAT64 = _v6("64:ff9b::/96")
_SIX_TO_FOUR = _v6("2002::/16")
_GLOBAL_UNICAST = _v6("2000::/3")
_V6_BLOCKED: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("::/128"), "an unspecified"),
    (_v6("::1/128"), "a loopback"),
    (_v6("64:ff9b:1::/48"), "a local-use NAT64 (64:ff9b:1::/48)"),
    (_v6("100::/64"), "a discard-only (100::/64)"),
    (_v6("2001::/23"), "an IETF protocol-assignment (2001::/23, incl. Teredo)"),
    (_v6("2001:db8::/32"), "a documentation"),
    (_v6("3fff::/20"), "a documentation"),
    (_v6("fc00::/7"), "a unique-local (fc00::/7)"),
    (_v6("fe80::/10"), "a link-local"),
    (_v6("fec0::/10"), "a site-local (deprecated)"),
    (_v6("ff00::/8"), "a multicast"),
)


def address_refusal(address: IPAddress, policy: EgressPolicy | None = None) -> str | None:
    """Why ``address`` may not be fetched, as a phrase ("a loopback address"), or ``None``
    when it may: a global unicast address, or one in the policy's allowed networks."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped IPv6 address"
        mapped = address.ipv4_mapped
        if mapped is not None:  # ::ffff:a.b.c.d connects to a.b.c.d itself
            address = mapped
    if policy is not None and policy.allows_network(address):
        return None
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv4Address):
        for network, reason in _V4_BLOCKED:
            if address in network:
                return f"{reason} address"
        return None
    return _v6_refusal(address)


def _v6_refusal(address: ipaddress.IPv6Address) -> str | None:
    for network, reason in _V6_BLOCKED:
        if address in network:
            return f"{reason} address"
    embedded: ipaddress.IPv4Address | None = None
    kind = ""
    if address in _COMPATIBLE:
        embedded, kind = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-compatible"
    elif address in _NAT64:
        embedded, kind = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    elif address in _SIX_TO_FOUR:
        embedded, kind = address.sixtofour, "6to4"
    if embedded is not None:
        inner = address_refusal(embedded)
        if inner is not None:
            article = "an" if kind[0] in "AEIOU" else "a"
            return f"{article} {kind} IPv6 address embedding {inner}"
        if kind == "NAT64":  # the translator reaches a public IPv4 host
            return None
        return f"a deprecated {kind} IPv6 address"
    if address not in _GLOBAL_UNICAST:
        return "a reserved IPv6 address (outside 2000::/3)"
    return None


# -- host names -------------------------------------------------------------------------
_BLOCKED_NAMES = frozenset(
    {
        "localhost",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "kubernetes.default",
    }
)
# Special-use and private-use suffixes that resolve inside a network, not on the internet.
_BLOCKED_SUFFIXES = (
    ".localhost",
    ".local",
    ".localdomain",
    ".internal",
    ".home.arpa",
    ".lan",
    ".intranet",
    ".corp",
    ".in-addr.arpa",
    ".ip6.arpa",
)


def name_refusal(host: str) -> str | None:
    """Why a (normalized, non-numeric) host name may not be fetched, or ``None``."""
    if host in _BLOCKED_NAMES:
        return "a local or metadata host name"
    if host.endswith(_BLOCKED_SUFFIXES):
        return "a host name reserved for local networks"
    if "." not in host:
        return "a single-label host name (resolved through local search domains)"
    return None


# -- parsing ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpUrl:
    """A parsed, normalized http(s) URL. ``host`` is lowercase ASCII (an IPv6 literal
    without brackets); ``ip`` is set when the host is an address in any spelling, and
    ``host`` is then its canonical form."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, starting with "/"; the fragment dropped
    ip: IPAddress | None = None

    @property
    def authority(self) -> str:
        """``host[:port]``, the port omitted when it is the scheme's default: the Host
        header to send."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"

    def url_for(self, address: IPAddress) -> str:
        """The same URL aimed at ``address``: what the fetcher connects to."""
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{host}:{self.port}{self.target}"


@dataclass(frozen=True)
class DataUrl:
    media_type: str
    data: bytes = field(repr=False)


_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC = re.compile(r"0x[0-9a-f]*|[0-9]+")
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))


def _refuse(message: str, param: str | None, context: str) -> UrlRefused:
    return UrlRefused(f"{context}: {message}", param=param)


def parse_url(
    raw: str,
    *,
    param: str | None = None,
    allow_data: bool = False,
    max_data_bytes: int = 0,
    context: str = "URL refused",
) -> HttpUrl | DataUrl:
    """Parse and normalize a URL sent by a client, or raise ``UrlRefused`` saying why.

    Only http and https (and ``data:`` when ``allow_data``, decoded to at most
    ``max_data_bytes``). No policy is applied here beyond the syntax: see ``check_url``.
    """
    if not isinstance(raw, str) or not raw:
        raise _refuse("it is empty or not a string.", param, context)
    match = _SCHEME.match(raw)
    if match is None:
        raise _refuse("it is not an absolute URL.", param, context)
    scheme = match.group(1).lower()
    if scheme == "data":
        if not allow_data:
            raise _refuse("data: URLs are not accepted here.", param, context)
        return parse_data_url(raw, max_data_bytes, param=param, context=context)
    if scheme not in _DEFAULT_PORTS:
        raise _refuse(f"the scheme '{scheme}' is not allowed; only http and https.", param, context)
    if len(raw) > MAX_URL_CHARS:
        raise _refuse(f"it is longer than {MAX_URL_CHARS} characters.", param, context)
    if _FORBIDDEN.search(raw):
        raise _refuse("it contains whitespace, control characters or backslashes.", param, context)
    rest = raw[match.end() :]
    if not rest.startswith("//"):
        raise _refuse("it has no '//' and host after the scheme.", param, context)
    rest = rest[2:]
    end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1:
            end = min(end, index)
    authority, remainder = rest[:end], rest[end:]
    if "@" in authority:
        raise _refuse("user names and passwords in URLs are not allowed.", param, context)
    host_text, port = _split_port(authority, scheme, param, context)
    if not host_text:
        raise _refuse("it has no host.", param, context)
    if "%" in host_text:
        raise _refuse("percent-encoded hosts are not allowed.", param, context)
    ip: IPAddress | None
    if host_text.startswith("["):
        if not host_text.endswith("]"):
            raise _refuse("it has an unterminated IPv6 address.", param, context)
        try:
            ip = ipaddress.IPv6Address(host_text[1:-1])
        except ValueError:
            raise _refuse("it has an invalid IPv6 address.", param, context) from None
        host = str(ip)
    else:
        try:
            host = _idna_host(host_text)
        except ValueError as exc:
            raise _refuse(f"it has an invalid host name ({exc}).", param, context) from None
        labels = host.split(".")
        if _NUMERIC.fullmatch(labels[-1]):
            ip = parse_ipv4_like(host)
            if ip is None:
                raise _refuse(
                    "its host ends in a number but is not a valid IPv4 address.",
                    param,
                    context,
                )
            host = str(ip)
        else:
            ip = None
    fragment = remainder.find("#")
    if fragment != -1:
        remainder = remainder[:fragment]
    if not remainder.startswith("/"):
        remainder = "/" + remainder
    target = quote(remainder, safe=_PRINTABLE_ASCII)
    return HttpUrl(scheme=scheme, host=host, port=port, target=target, ip=ip)


def _split_port(authority: str, scheme: str, param: str | None, context: str) -> tuple[str, int]:
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise _refuse("it has an unterminated IPv6 address.", param, context)
        host, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise _refuse("it has characters after the IPv6 address.", param, context)
        port_text = after[1:]
    else:
        host, _, port_text = authority.partition(":")
        if ":" in port_text:
            raise _refuse("it has an IPv6 address without brackets.", param, context)
    if not port_text:
        return host, _DEFAULT_PORTS[scheme]
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise _refuse("it has an invalid port.", param, context)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _refuse("its port is out of range.", param, context)
    return host, port


def _idna_host(text: str) -> str:
    """Lowercase ASCII host: IDNA-encoded when it is not ASCII, one trailing dot dropped.
    Raises ``ValueError`` for an invalid name."""
    host = text.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise ValueError("not a valid internationalized name") from exc
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        raise ValueError("empty or too long")
    labels = host.split(".")
    if _NUMERIC.fullmatch(labels[-1]):
        return host  # judged as an IPv4 address by the caller
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"invalid label {label!r}")
    return host


def parse_ipv4_like(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address spelled as ``inet_aton`` (and the WHATWG URL parser) read it: one
    to four parts, each decimal, octal (leading ``0``) or hex (``0x``), the last part
    filling the remaining bytes (``127.1`` is 127.0.0.1, ``2130706433`` too). ``None`` when
    ``host`` is not such an address."""
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int | None:
    part = part.lower()
    if not part or not part.isascii():
        return None
    if part.startswith("0x"):
        digits = part[2:]
        if not digits:
            return 0
        if not all(c in "0123456789abcdef" for c in digits):
            return None
        return int(digits, 16)
    if not part.isdigit():
        return None
    if len(part) > 1 and part[0] == "0":
        if any(c in "89" for c in part):
            return None
        return int(part, 8)
    return int(part)


def parse_data_url(
    raw: str, max_bytes: int, *, param: str | None = None, context: str = "URL refused"
) -> DataUrl:
    """Decode ``data:[<media type>][;base64],<data>`` to at most ``max_bytes`` bytes; the
    size is checked before decoding."""
    header, comma, payload = raw[5:].partition(",")
    if not comma:
        raise _refuse("it is a data: URL without a ','.", param, context)
    fields = [f.strip() for f in header.split(";")]
    is_base64 = fields[-1].lower() == "base64"
    if is_base64:
        fields = fields[:-1]
    media_type = (fields[0] if fields and fields[0] else "text/plain").lower()
    if is_base64:
        payload = re.sub(r"\s+", "", payload)
        if len(payload) // 4 * 3 > max_bytes + 2:
            raise _refuse(f"the data: URL holds more than {max_bytes} bytes.", param, context)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _refuse("the data: URL is not valid base64.", param, context) from None
    else:
        if len(payload.encode()) > 3 * max_bytes + 3:  # "%xx" per byte at most
            raise _refuse(f"the data: URL holds more than {max_bytes} bytes.", param, context)
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise _refuse(f"the data: URL holds more than {max_bytes} bytes.", param, context)
    return DataUrl(media_type=media_type, data=data)


# -- the policy applied -----------------------------------------------------------------
def check_url(
    raw: str,
    policy: EgressPolicy,
    *,
    param: str | None = None,
    allow_data: bool | None = None,
    context: str = "URL refused",
) -> HttpUrl | DataUrl:
    """Parse ``raw`` and apply everything that can be judged before resolution.

    Refuses (``UrlRefused``) when fetching client URLs is off, for a bad or disallowed
    scheme, a name reserved for local networks, or a literal address ``address_refusal``
    refuses. ``data:`` URLs need ``policy.allow_data_urls`` (and ``allow_data`` not False:
    a redirect may never lead to one); they involve no network and are accepted with
    fetching off. The host of a name still has to pass ``check_addresses``.
    """
    data_ok = policy.allow_data_urls if allow_data is None else allow_data
    data_ok = data_ok and policy.allow_data_urls
    is_data = isinstance(raw, str) and raw[:5].lower() == "data:"
    if not policy.enabled and not (is_data and data_ok):
        raise _refuse("this server does not fetch URLs sent by clients.", param, context)
    url = parse_url(
        raw, param=param, allow_data=data_ok, max_data_bytes=policy.max_bytes, context=context
    )
    if isinstance(url, DataUrl):
        check_content_type(url.media_type, policy, param=param, context=context)
        return url
    if url.ip is not None:
        reason = address_refusal(url.ip, policy)
        if reason is not None:
            raise _refuse(
                f"the host {url.host} is {reason}; it may not be fetched.", param, context
            )
    elif url.host not in policy.allowed_hosts:
        reason = name_refusal(url.host)
        if reason is not None:
            raise _refuse(
                f"the host {url.host} is {reason}; it may not be fetched.", param, context
            )
    return url


def check_addresses(
    url: HttpUrl,
    addresses: Iterable[str | IPAddress],
    policy: EgressPolicy,
    *,
    param: str | None = None,
    context: str = "URL refused",
) -> tuple[IPAddress, ...]:
    """Every address ``url``'s host resolved to, judged; one refused address refuses the
    URL (an attacker's DNS may answer a public and a private address together). Returns
    the addresses to connect to, in the resolver's order, without duplicates. The
    refusal names the kind of address, not the address, so internal DNS answers do not
    leak to the client."""
    checked: list[IPAddress] = []
    for entry in addresses:
        try:
            address = entry if not isinstance(entry, str) else ipaddress.ip_address(entry)
        except ValueError:
            raise _refuse(
                f"the host {url.host} resolved to an invalid address.", param, context
            ) from None
        reason = address_refusal(address, policy)
        if reason is not None:
            raise _refuse(
                f"the host {url.host} resolves to {reason}; it may not be fetched.",
                param,
                context,
            )
        if address not in checked:
            checked.append(address)
    if not checked:
        raise _refuse(f"the host {url.host} resolves to no address.", param, context)
    return tuple(checked)


def check_content_type(
    content_type: str | None,
    policy: EgressPolicy,
    *,
    param: str | None = None,
    context: str = "URL refused",
) -> str:
    """The media type (lowercase, parameters dropped) if the policy accepts it."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    allowed = policy.allowed_content_types
    if allowed is not None and media_type not in allowed:
        shown = media_type or "none"
        raise _refuse(
            f"the content type {shown!r} is not accepted (allowed: {', '.join(sorted(allowed))}).",
            param,
            context,
        )
    return media_type
