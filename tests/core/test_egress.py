"""The egress policy for URLs sent by clients (core/egress.py): SSRF canaries, every
spelling of a blocked address, and the admin's overrides."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openmaas.core.egress import (
    DataUrl,
    EgressPolicy,
    HttpUrl,
    address_refusal,
    check_addresses,
    check_content_type,
    check_url,
    parse_ipv4_like,
    parse_url,
)
from openmaas.core.errors import ConfigurationError, InvalidRequest, UrlRefused

ON = EgressPolicy(enabled=True)
PARAM = "messages[0].content[1].image_url.url"

CANARIES = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0x7f.0.0.1/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "http://localhost/",
    "http://LOCALHOST:8000/",
    "http://foo.localhost/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://2852039166/",  # 169.254.169.254
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/",
    "http://100.100.100.200/",  # Alibaba metadata
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://１２７.０.０.１/",  # fullwidth digits, mapped by IDNA
    "http://127。0。0。1/",  # ideographic full stops
    "http://service.internal/",
    "http://printer.local/",
    "http://intranet/",
]


@pytest.mark.parametrize("url", CANARIES)
def test_every_canary_is_refused(url: str) -> None:
    with pytest.raises(UrlRefused) as caught:
        check_url(url, ON, param=PARAM)
    assert caught.value.param == PARAM
    assert "may not be fetched" in caught.value.message


def test_a_refusal_is_a_400_invalid_request_that_says_why() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_url("http://2130706433/", ON, param=PARAM)
    assert "127.0.0.1 is a loopback address" in caught.value.message
    with pytest.raises(UrlRefused, match="cloud metadata"):
        check_url("http://169.254.169.254/", ON)
    with pytest.raises(UrlRefused, match="NAT64 IPv6 address embedding a loopback"):
        check_url("http://[64:ff9b::127.0.0.1]/", ON)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://93.184.216.34:8443/a.png",
        "https://example.com/cat.png",
        "http://[2606:4700:4700::1111]/",
        "http://[64:ff9b::5db8:d822]/",  # NAT64 of a public address
        "http://1.1.1.1/",
        "https://bücher.de/",
    ],
)
def test_public_addresses_and_names_pass(url: str) -> None:
    assert isinstance(check_url(url, ON), HttpUrl)


def test_fetching_is_off_by_default() -> None:
    with pytest.raises(UrlRefused, match="does not fetch URLs sent by clients") as caught:
        check_url("https://example.com/cat.png", EgressPolicy(), param=PARAM)
    assert caught.value.param == PARAM


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher'"),
        ("ftp://example.com/", "scheme 'ftp'"),
        ("dict://example.com/", "scheme 'dict'"),
        ("data:image/png;base64,iVBORw0KGgo=", "data: URLs are not accepted"),
        ("//example.com/", "not an absolute URL"),
        ("http:example.com", "no '//'"),
        ("http://user:pass@example.com/", "user names and passwords"),
        ("http://example.com@127.0.0.1/", "user names and passwords"),
        ("http://evil.com\\@127.0.0.1/", "backslashes"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com\t/", "whitespace"),
        ("http://%6c%6f%63%61%6c%68%6f%73%74/", "percent-encoded"),
        ("http://example.com:0/", "out of range"),
        ("http://example.com:65536/", "out of range"),
        ("http://example.com:8o/", "invalid port"),
        ("http://[::1/", "unterminated"),
        ("http://[::1]x/", "after the IPv6"),
        ("http://[fe80::1%25eth0]/", "percent"),
        ("http://::1/", "without brackets"),
        ("http://256.0.0.1/", "not a valid IPv4"),
        ("http://1.2.3.4.5/", "not a valid IPv4"),
        ("http://08.0.0.1/", "not a valid IPv4"),
        ("http://0x100.0.0.1/", "not a valid IPv4"),
        ("http://example.123/", "not a valid IPv4"),
        ("http:///path", "no host"),
        ("http://exa_mple..com/", "invalid host name"),
        ("http://-bad-.com/", "invalid host name"),
        ("", "empty"),
    ],
)
def test_malformed_or_other_schemes_are_refused(url: str, why: str) -> None:
    with pytest.raises(UrlRefused, match=why):
        check_url(url, ON)


def test_numeric_hosts_are_read_as_inet_aton_reads_them() -> None:
    expected = ipaddress.IPv4Address("127.0.0.1")
    for host in [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0x7F.1",
        "0177.0.0.1",
        "0177.0.0.01",
        "017700000001",
        "0x7f.0.0x0.1",
        "127.0.0.1.",
    ]:
        assert parse_ipv4_like(host) == expected, host
    assert parse_ipv4_like("0") == ipaddress.IPv4Address("0.0.0.0")
    assert parse_ipv4_like("1.16777215") == ipaddress.IPv4Address("1.255.255.255")
    for host in ["1.16777216", "4294967296", "256.1", "09", "0xg", "1..1", "", "a.1"]:
        assert parse_ipv4_like(host) is None, host


def test_the_url_is_normalized_so_the_client_never_reinterprets_it() -> None:
    url = parse_url("HTTPS://Example.COM:443/a b?q=ä#frag".replace(" ", "%20"))
    assert isinstance(url, HttpUrl)
    assert url.url == "https://example.com/a%20b?q=%C3%A4"
    assert url.authority == "example.com" and url.port == 443 and url.ip is None
    assert parse_url("http://bücher.de:8080").url == "http://xn--bcher-kva.de:8080/"  # type: ignore[union-attr]
    spelled = parse_url("http://0x5d.0xb8.0xd8.0x22/x?y")
    assert isinstance(spelled, HttpUrl)
    assert spelled.host == "93.184.216.34" and spelled.ip == ipaddress.ip_address("93.184.216.34")
    v6 = parse_url("http://[2606:4700:4700:0::1111]:81/")
    assert isinstance(v6, HttpUrl)
    assert v6.authority == "[2606:4700:4700::1111]:81"
    assert v6.url_for(v6.ip) == "http://[2606:4700:4700::1111]:81/"  # type: ignore[arg-type]
    assert parse_url("http://example.com?x=1").target == "/?x=1"  # type: ignore[union-attr]


# -- the admin's overrides --------------------------------------------------------------
def test_an_allowed_network_lets_its_addresses_through_and_no_others() -> None:
    policy = EgressPolicy.build(enabled=True, allowed_networks=["10.8.0.0/16", "fd12::/16"])
    assert isinstance(check_url("http://10.8.3.4/img.png", policy), HttpUrl)
    assert isinstance(check_url("http://[::ffff:10.8.3.4]/", policy), HttpUrl)
    assert isinstance(check_url("http://[fd12::5]/", policy), HttpUrl)
    for url in ["http://10.9.0.1/", "http://127.0.0.1/", "http://169.254.169.254/"]:
        with pytest.raises(UrlRefused):
            check_url(url, policy)


def test_an_allowed_host_lifts_the_name_rule_but_not_the_address_rule() -> None:
    policy = EgressPolicy.build(
        enabled=True, allowed_hosts=["Images.Corp.Internal."], allowed_networks=["10.8.0.0/16"]
    )
    url = check_url("http://images.corp.internal/cat.png", policy)
    assert isinstance(url, HttpUrl)
    assert check_addresses(url, ["10.8.0.7"], policy) == (ipaddress.ip_address("10.8.0.7"),)
    with pytest.raises(UrlRefused, match="resolves to a private"):
        check_addresses(url, ["10.9.0.7"], policy)
    with pytest.raises(UrlRefused):
        check_url("http://other.corp.internal/", policy)


def test_bad_admin_values_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="10.1.2.3/16"):
        EgressPolicy.build(allowed_networks=["10.1.2.3/16"])
    with pytest.raises(ConfigurationError, match="not-a-network"):
        EgressPolicy.build(allowed_networks=["not-a-network"])
    with pytest.raises(ConfigurationError):
        EgressPolicy(max_bytes=0)
    with pytest.raises(ConfigurationError):
        EgressPolicy(timeout_seconds=0)


# -- resolved addresses -----------------------------------------------------------------
def test_one_private_answer_refuses_the_name_and_the_reason_does_not_leak_it() -> None:
    url = check_url("https://rebind.example.com/", ON)
    assert isinstance(url, HttpUrl)
    with pytest.raises(UrlRefused) as caught:
        check_addresses(url, ["93.184.216.34", "127.0.0.1"], ON)
    assert "loopback" in caught.value.message and "127.0.0.1" not in caught.value.message
    with pytest.raises(UrlRefused, match="no address"):
        check_addresses(url, [], ON)
    with pytest.raises(UrlRefused, match="scoped"):
        check_addresses(url, ["fe80::1%eth0"], ON)
    answers = ["93.184.216.34", "2606:4700:4700::1111", "93.184.216.34"]
    assert check_addresses(url, answers, ON) == (
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:4700:4700::1111"),
    )


# -- data: URLs and content types -------------------------------------------------------
def test_data_urls_only_when_allowed_and_under_the_cap() -> None:
    policy = EgressPolicy(allow_data_urls=True, max_bytes=8)
    decoded = check_url("data:image/png;base64,iVBORw0KGgo=", policy)
    assert isinstance(decoded, DataUrl)
    assert decoded.media_type == "image/png" and decoded.data == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UrlRefused, match="more than 8 bytes"):
        check_url("data:image/png;base64,iVBORw0KGgoA", policy)
    with pytest.raises(UrlRefused, match="more than 8 bytes"):
        check_url("data:image/png;base64," + "A" * 10_000_000, policy)
    with pytest.raises(UrlRefused, match="not valid base64"):
        check_url("data:image/png;base64,!!!!", policy)
    with pytest.raises(UrlRefused, match="content type 'text/html'"):
        check_url("data:text/html,<script>", policy)
    with pytest.raises(UrlRefused, match="data: URLs are not accepted"):
        check_url("data:image/png;base64,iVBORw0KGgo=", EgressPolicy(enabled=True))


def test_content_types() -> None:
    assert check_content_type("Image/PNG; charset=binary", ON) == "image/png"
    with pytest.raises(UrlRefused, match="'text/html'"):
        check_content_type("text/html", ON)
    with pytest.raises(UrlRefused, match="'none'"):
        check_content_type(None, ON)
    assert check_content_type("text/html", EgressPolicy(allowed_content_types=None)) == "text/html"


# -- properties: a blocked address is refused however it is spelled ---------------------
V4_BLOCKED = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
]
V6_BLOCKED = ["::1/128", "fe80::/10", "fc00::/7", "ff00::/8", "fec0::/10", "2001:db8::/32"]


def _in(network: str) -> st.SearchStrategy[int]:
    net = ipaddress.ip_network(network)
    return st.integers(int(net.network_address), int(net.broadcast_address))


blocked_v4 = st.sampled_from(V4_BLOCKED).flatmap(_in).map(ipaddress.IPv4Address)


def _part(value: int, style: str) -> str:
    if style == "hex":
        return hex(value)
    if style == "HEX":
        return "0X" + format(value, "X")
    if style == "oct":
        return "0" + format(value, "o")
    return str(value)


@st.composite
def ipv4_spellings(draw: st.DrawFn, addresses: st.SearchStrategy[ipaddress.IPv4Address]) -> str:
    address = draw(addresses)
    value = int(address)
    octets = list(address.packed)
    form = draw(
        st.sampled_from(
            [
                "dotted",
                "one",
                "two",
                "three",
                "mapped",
                "mapped-hex",
                "nat64",
                "sixtofour",
                "compat",
            ]
        )
    )
    styles = st.sampled_from(["dec", "hex", "HEX", "oct"])
    if form == "dotted":
        host = ".".join(_part(o, draw(styles)) for o in octets)
    elif form == "one":
        host = _part(value, draw(styles))
    elif form == "two":
        host = f"{_part(octets[0], draw(styles))}.{_part(value & 0xFFFFFF, draw(styles))}"
    elif form == "three":
        host = ".".join(
            [
                _part(octets[0], draw(styles)),
                _part(octets[1], draw(styles)),
                _part(value & 0xFFFF, draw(styles)),
            ]
        )
    elif form == "mapped":
        return f"[::ffff:{address}]"
    elif form == "mapped-hex":
        return f"[::ffff:{value >> 16:x}:{value & 0xFFFF:x}]"
    elif form == "nat64":
        return f"[64:ff9b::{address}]"
    elif form == "sixtofour":
        return f"[2002:{value >> 16:x}:{value & 0xFFFF:x}::1]"
    else:
        return f"[::{address}]"
    if draw(st.booleans()):
        host += "."
    return host


def _refused(host: str, policy: EgressPolicy = ON) -> bool:
    try:
        check_url(f"http://{host}:8080/x", policy)
    except UrlRefused:
        return True
    return False


@given(ipv4_spellings(blocked_v4))
def test_a_blocked_ipv4_address_is_refused_however_it_is_spelled(host: str) -> None:
    assert _refused(host)


@given(st.sampled_from(V6_BLOCKED).flatmap(_in).map(ipaddress.IPv6Address), st.booleans())
def test_a_blocked_ipv6_address_is_refused_however_it_is_spelled(
    address: ipaddress.IPv6Address, exploded: bool
) -> None:
    text = address.exploded if exploded else address.compressed
    assert _refused(f"[{text.upper() if exploded else text}]")
    assert address_refusal(address) is not None


def _public(address: ipaddress.IPv4Address) -> bool:
    return not any(
        address in ipaddress.ip_network(n)
        for n in V4_BLOCKED
        + [
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "192.88.99.0/24",
        ]
    )


public_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(_public)


@given(public_v4, st.data())
def test_a_public_ipv4_address_passes_in_every_inet_aton_spelling(
    address: ipaddress.IPv4Address, data: st.DataObject
) -> None:
    host = data.draw(ipv4_spellings(st.just(address)))
    url = None if host.startswith("[") else check_url(f"http://{host}/", ON)
    if url is not None:
        assert isinstance(url, HttpUrl) and url.ip == address and url.host == str(address)


@given(blocked_v4)
def test_an_allowed_network_is_the_only_way_through(address: ipaddress.IPv4Address) -> None:
    network = ipaddress.ip_network(f"{address}/32")
    assert address_refusal(address) is not None
    assert address_refusal(address, EgressPolicy(allowed_networks=(network,))) is None
    assert not _refused(str(address), EgressPolicy(enabled=True, allowed_networks=(network,)))
