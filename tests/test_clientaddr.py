"""Who the client is behind trusted proxies (dispatcher.clientaddr), without sockets: worked
examples of X-Forwarded-For and RFC 7239 Forwarded, properties over arbitrary bytes, the
settings, and the ASGI app behind its middleware."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import MutableMapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.app import DispatchApp
from dispatcher.backends.sites import SiteSpec
from dispatcher.clientaddr import (
    ForwardedFront,
    Hop,
    TrustedProxies,
    TrustedProxyMiddleware,
    forwarded_client,
    resolve,
    trusted_proxies,
)
from dispatcher.config import build_config
from dispatcher.errors import ConfigError
from dispatcher.reload import plan_reload
from tests.test_app import farm

TRUSTED = TrustedProxies.parse(("10.0.0.0/8", "192.168.0.0/16", "2001:db8:ff::/48", "::1/128"))
XFF, FWD = "x-forwarded-for", "forwarded"


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]


def xff(*values: str, proto: tuple[str, ...] = ()) -> Hop:
    pairs = [("x-forwarded-for", v) for v in values] + [("x-forwarded-proto", p) for p in proto]
    return forwarded_client(headers(*pairs), TRUSTED, XFF)


def fwd(*values: str) -> Hop:
    return forwarded_client(headers(*[("forwarded", v) for v in values]), TRUSTED, FWD)


# --- X-Forwarded-For --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (("203.0.113.9",), Hop("203.0.113.9")),
        # the right-most address that is not a trusted proxy
        (("203.0.113.9, 10.0.0.2",), Hop("203.0.113.9")),
        (("198.51.100.1, 203.0.113.9, 10.0.0.2, 10.0.0.3",), Hop("203.0.113.9")),
        # what the client wrote on the left is not read
        (("6.6.6.6, 203.0.113.9",), Hop("203.0.113.9")),
        (("garbage, 203.0.113.9",), Hop("203.0.113.9")),
        # every hop trusted: the left-most
        (("10.1.1.1, 10.0.0.2",), Hop("10.1.1.1")),
        # several header lines are one list, in order
        (("198.51.100.1", "203.0.113.9", "10.0.0.2"), Hop("203.0.113.9")),
        # ports, brackets, IPv6, IPv4-mapped
        (("203.0.113.9:4711",), Hop("203.0.113.9", 4711)),
        (("[2001:db8::1]:443, 10.0.0.2",), Hop("2001:db8::1", 443)),
        (("2001:db8::1",), Hop("2001:db8::1")),
        (("[2001:DB8::1]",), Hop("2001:db8::1")),
        (("::ffff:203.0.113.9",), Hop("203.0.113.9")),
        (("203.0.113.9, ::ffff:10.0.0.2",), Hop("203.0.113.9")),  # a mapped proxy is trusted
        (("203.0.113.9, 2001:db8:ff::7",), Hop("203.0.113.9")),
        # malformed where the walk stops: nothing (the peer stays the client)
        (("203.0.113.9, garbage, 10.0.0.2",), Hop(None)),
        (("203.0.113.9, , 10.0.0.2",), Hop(None)),
        (("",), Hop(None)),
        (("203.0.113.9:99999",), Hop(None)),
        (("203.0.113.9:",), Hop(None)),
        (("fe80::1%eth0",), Hop(None)),
        (("[2001:db8::1",), Hop(None)),
        (("1.2.3.4.5",), Hop(None)),
        (("203.0.113.9:\u00b2",), Hop(None)),  # a port of a digit that is not ASCII
        # unknown or obfuscated where the walk stops: no address either
        (("203.0.113.9, unknown, 10.0.0.2",), Hop(None)),
        (("_hidden",), Hop(None)),
    ],
)
def test_x_forwarded_for(values: tuple[str, ...], expected: Hop) -> None:
    assert xff(*values) == expected


@pytest.mark.parametrize(
    ("values", "proto", "scheme"),
    [
        (("203.0.113.9",), ("https",), "https"),
        (("203.0.113.9",), ("HTTPS",), "https"),
        (("203.0.113.9",), (" http ",), "http"),
        (("203.0.113.9",), ("ftp",), None),
        # one value per hop: the one aligned with the client
        (("203.0.113.9, 10.0.0.2",), ("https, http",), "https"),
        (("6.6.6.6, 203.0.113.9, 10.0.0.2",), ("http, https, http",), "https"),
        # one value: the proxies overwrite it; it is theirs
        (("6.6.6.6, 203.0.113.9",), ("https",), "https"),
        # neither: not read (a client's value with a proxy's appended)
        (("203.0.113.9",), ("https, http",), None),
        (("203.0.113.9",), ("https", "http"), None),
    ],
)
def test_x_forwarded_proto(values: tuple[str, ...], proto: tuple[str, ...], scheme: str) -> None:
    assert xff(*values, proto=proto).scheme == scheme


def test_the_other_header_is_never_read() -> None:
    """A proxy that writes one header passes the other on from the client untouched."""
    forged = headers(("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.9"))
    assert forwarded_client(forged, TRUSTED, XFF) == Hop("203.0.113.9")
    forged = headers(("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=203.0.113.9"))
    assert forwarded_client(forged, TRUSTED, FWD) == Hop("203.0.113.9")
    assert forwarded_client(headers(("x-forwarded-for", "6.6.6.6")), TRUSTED, FWD) == Hop(None)


# --- Forwarded (RFC 7239) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (("for=203.0.113.9",), Hop("203.0.113.9")),
        (("for=203.0.113.9;proto=https;by=10.0.0.2",), Hop("203.0.113.9", 0, "https")),
        (("For=203.0.113.9; Proto=HTTPS",), Hop("203.0.113.9", 0, "https")),
        (('for="203.0.113.9:4711"',), Hop("203.0.113.9", 4711)),
        (('for="[2001:db8::1]:4711"',), Hop("2001:db8::1", 4711)),
        (('for="[2001:db8::1]"',), Hop("2001:db8::1")),
        (('for="[2001:db8::1]:_port"',), Hop("2001:db8::1")),  # an obfuscated port
        (("for=192.0.2.60;proto=http;by=203.0.113.43",), Hop("192.0.2.60", 0, "http")),
        # the RFC's examples of a chain
        (("for=192.0.2.43, for=198.51.100.17",), Hop("198.51.100.17")),
        (("for=192.0.2.43, for=10.0.0.9",), Hop("192.0.2.43")),
        (("for=192.0.2.43", "for=10.0.0.9;proto=https"), Hop("192.0.2.43")),
        (("for=192.0.2.43;proto=https, for=10.0.0.9;proto=http",), Hop("192.0.2.43", 0, "https")),
        (("for=10.1.1.1, for=10.0.0.9",), Hop("10.1.1.1")),
        # obfuscated or unknown where the walk stops: no address, the scheme is still known
        (("for=_hidden;proto=https, for=10.0.0.9",), Hop(None, 0, "https")),
        (("for=unknown, for=10.0.0.9",), Hop(None)),
        (('for="_gazonk"',), Hop(None)),
        # an element without for=: nothing to walk on
        (("proto=https",), Hop(None, 0, "https")),
        # quoted strings: commas and semicolons inside do not split; escapes
        (('for=192.0.2.43;ext="a,b;c", for=10.0.0.9',), Hop("192.0.2.43")),
        (('for="\\"quoted\\"", for=203.0.113.9',), Hop("203.0.113.9")),
        # what a client wrote on the left cannot change how the right is read
        (('for="6.6.6.6, for=203.0.113.9;proto=https',), Hop("203.0.113.9", 0, "https")),
        (('for=6.6.6.6;x="unclosed', "for=203.0.113.9"), Hop("203.0.113.9")),
        (("garbage;;;==", "for=203.0.113.9"), Hop("203.0.113.9")),
        # malformed where the walk stops
        (("for=203.0.113.9;for=6.6.6.6",), Hop(None)),  # a repeated parameter
        (("for=203.0.113.9, nonsense",), Hop(None)),
        (('for="203.0.113.9',), Hop(None)),
        (("for=",), Hop(None)),
        (("for=2001:db8::1:80:80:80:80:80:80",), Hop(None)),
        (("for=203.0.113.9, for=garbage, for=10.0.0.9",), Hop(None)),
    ],
)
def test_forwarded(values: tuple[str, ...], expected: Hop) -> None:
    assert fwd(*values) == expected


# --- properties -----------------------------------------------------------------------------

header_names = st.sampled_from(
    [b"x-forwarded-for", b"x-forwarded-proto", b"forwarded", b"host", b"x-other"]
)
hostile = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.sampled_from(["unknown", "_x", '"', ",", ";", "=", "[", "]", ":", " ", "for="]),
            st.text(max_size=8),
        ),
        max_size=12,
    ).map(lambda parts: "".join(parts).encode("utf-8")),
)


@given(st.lists(st.tuples(header_names, hostile), max_size=6), st.sampled_from([XFF, FWD]))
def test_any_bytes_give_an_address_or_none(pairs: list[tuple[bytes, bytes]], kind: str) -> None:
    hop = forwarded_client(pairs, TRUSTED, kind)
    assert hop.scheme in (None, "http", "https")
    assert 0 <= hop.port <= 65535
    if hop.address is not None:
        assert str(ipaddress.ip_address(hop.address)) == hop.address


@given(st.lists(st.ip_addresses().map(str), min_size=1, max_size=10), st.binary(max_size=60))
def test_the_client_is_the_rightmost_untrusted_hop(chain: list[str], junk: bytes) -> None:
    """Whatever a client prepends, a chain of trusted hops decides: the right-most
    untrusted address (the left-most when all are trusted)."""
    untrusted = [a for a in chain if a not in TRUSTED]
    ip = ipaddress.ip_address(untrusted[-1] if untrusted else chain[0])
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    expected = str(mapped or ip)
    value = ", ".join(chain).encode()
    assert forwarded_client([(b"x-forwarded-for", value)], TRUSTED, XFF).address == expected
    if untrusted:
        forged = junk.replace(b",", b"") + b"," + value
        assert forwarded_client([(b"x-forwarded-for", forged)], TRUSTED, XFF).address == expected


# --- trust --------------------------------------------------------------------------------


def test_trusted_proxies_membership() -> None:
    assert "10.20.30.40" in TRUSTED
    assert "::ffff:10.20.30.40" in TRUSTED  # a dual-stack listener's view of an IPv4 peer
    assert "::1" in TRUSTED
    assert "11.0.0.1" not in TRUSTED
    assert "not an address" not in TRUSTED
    assert "fe80::1%eth0" not in TRUSTED
    assert None not in TRUSTED
    assert trusted_proxies(()) is None
    assert trusted_proxies(("127.0.0.0/8",)) is trusted_proxies(("127.0.0.0/8",))


def test_resolve_only_for_a_trusted_peer() -> None:
    pairs = headers(("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https"))
    scope: dict[str, Any] = {"client": ("10.0.0.2", 5555), "scheme": "http", "headers": pairs}
    assert resolve(scope, TRUSTED, XFF)
    assert (scope["client"], scope["scheme"]) == (("203.0.113.9", 0), "https")
    scope = {"client": ("11.0.0.2", 5555), "scheme": "http", "headers": pairs}
    assert not resolve(scope, TRUSTED, XFF)
    assert (scope["client"], scope["scheme"]) == (("11.0.0.2", 5555), "http")
    scope = {"client": None, "scheme": "http", "headers": pairs}
    assert not resolve(scope, TRUSTED, XFF)


# --- settings -----------------------------------------------------------------------------


def settings(env: dict[str, str] | None = None, **dispatcher: Any) -> Any:
    raw = {"dispatcher": {"admin_tokens": ["t"], **dispatcher}}
    return build_config(raw, source="farm.toml", environ=env or {})


def test_settings_and_their_defaults() -> None:
    d = settings().dispatcher
    assert (d.trusted_proxies, d.forwarded_header, d.proxy_protocol) == ((), XFF, False)
    d = settings(
        trusted_proxies=["10.0.0.0/8", "::1", " 192.168.1.7 "],
        forwarded_header="forwarded",
        proxy_protocol=True,
    ).dispatcher
    assert d.trusted_proxies == ("10.0.0.0/8", "::1/128", "192.168.1.7/32")
    assert (d.forwarded_header, d.proxy_protocol) == (FWD, True)


def test_the_environment_overrides_the_list() -> None:
    env = {"FARM_TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32"}
    d = settings(env, trusted_proxies=["192.168.0.0/16"]).dispatcher
    assert d.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32")
    assert (
        settings({"FARM_TRUSTED_PROXIES": ""}, trusted_proxies=["::1"]).dispatcher.trusted_proxies
        == ()
    )


@pytest.mark.parametrize(
    ("env", "values", "message"),
    [
        ({}, {"trusted_proxies": "10.0.0.0/8"}, "dispatcher.trusted_proxies: a list of networks"),
        ({}, {"trusted_proxies": ["10.0.0.1/8"]}, "trusted_proxies[0]: a network in CIDR"),
        ({}, {"trusted_proxies": ["::1", "nope"]}, "trusted_proxies[1]: a network in CIDR"),
        ({}, {"trusted_proxies": [""]}, "trusted_proxies[0]: a network such as"),
        ({}, {"trusted_proxies": [10]}, "trusted_proxies[0]: a network such as"),
        ({}, {"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies[0]: a network in CIDR"),
        ({}, {"trusted_proxies": ["10.0.0.0/8"] * 5000}, "at most 4096 networks"),
        ({"FARM_TRUSTED_PROXIES": "10.0.0.0/8,bad"}, {}, "FARM_TRUSTED_PROXIES[1]: a network"),
        ({}, {"forwarded_header": "x-real-ip"}, "forwarded_header: one of x-forwarded-for"),
        ({}, {"proxy_protocol": "yes"}, "proxy_protocol: true or false"),
    ],
)
def test_bad_settings_are_refused_with_their_key_path(
    env: dict[str, str], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings(env, **values)


def test_host_bits_are_named() -> None:
    with pytest.raises(ConfigError, match=re.escape("host bits set: got '10.0.0.1/8'")):
        settings(trusted_proxies=["10.0.0.1/8"])


def test_a_reload_applies_trusted_proxies_but_not_proxy_protocol() -> None:
    old = settings()
    new = settings(trusted_proxies=["10.0.0.0/8"], forwarded_header=FWD, proxy_protocol=True)
    plan = plan_reload(old, new)
    assert "dispatcher.trusted_proxies" in plan.applied
    assert "dispatcher.forwarded_header" in plan.applied
    assert plan.needs_restart == ("dispatcher.proxy_protocol",)
    assert plan.config.dispatcher.proxy_protocol is False
    assert plan.config.dispatcher.trusted_proxies == ("10.0.0.0/8",)


# --- in front of the core and of the ASGI app ------------------------------------------------

EU = SiteSpec("eu", "http://127.0.0.2:9001", weight=1)


async def asgi(client: tuple[str, int], pairs: list[tuple[bytes, bytes]]) -> Any:
    """One request through TrustedProxyMiddleware to a DispatchApp; the scope the app saw."""
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await DispatchApp(farm([EU], {"eu"}))(scope, receive, send)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"www.example.com"), *pairs],
        "client": client,
        "scheme": "http",
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await TrustedProxyMiddleware(inner, TRUSTED)(scope, receive, send)
    assert scope["client"] == client  # the caller's scope is not changed
    assert sent[0]["status"] == 302
    return seen[0]


@pytest.mark.anyio
async def test_the_middleware_rewrites_the_scope_of_a_trusted_peer_only() -> None:
    pairs = [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")]
    seen = await asgi(("10.0.0.2", 1234), pairs)
    assert (seen["client"], seen["scheme"]) == (("203.0.113.9", 0), "https")
    seen = await asgi(("203.0.113.50", 1234), pairs)
    assert (seen["client"], seen["scheme"]) == (("203.0.113.50", 1234), "http")


def test_the_front_puts_the_client_in_the_scope_the_core_reads() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.scopes: list[Any] = []

        def answer(self, scope: Any) -> Any:
            self.scopes.append(scope)
            return 200, [], b""

        def answer_wire(self, scope: Any, url: bytes, host: bytes | None) -> Any:
            return self.answer(scope)

    recorder = Recorder()
    front = ForwardedFront(recorder, TRUSTED, XFF)
    pairs = headers(("x-forwarded-for", "203.0.113.9"))
    front.answer({"client": ("10.0.0.2", 1), "headers": pairs})
    front.answer_wire({"client": ("10.0.0.2", 1), "headers": pairs}, b"/", None)
    front.answer_wire({"client": ("8.8.8.8", 1), "headers": pairs}, b"/", None)
    assert [s["client"] for s in recorder.scopes] == [
        ("203.0.113.9", 0),
        ("203.0.113.9", 0),
        ("8.8.8.8", 1),
    ]


networks = st.one_of(
    st.builds(
        lambda ip, bits: ipaddress.ip_network(f"{ip}/{bits}", strict=False),
        st.ip_addresses(v=4),
        st.integers(0, 32),
    ),
    st.builds(
        lambda ip, bits: ipaddress.ip_network(f"{ip}/{bits}", strict=False),
        st.ip_addresses(v=6),
        st.integers(0, 128),
    ),
)


@given(
    st.lists(networks, max_size=20),
    st.lists(st.ip_addresses(), min_size=1, max_size=20),
)
def test_trust_is_membership_of_some_listed_network(
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    trusted = TrustedProxies(networks)
    for ip in addresses:
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        plain = mapped or ip
        assert (str(ip) in trusted) == any(plain in n for n in networks)
