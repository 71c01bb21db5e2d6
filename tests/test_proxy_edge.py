"""The public edge behind proxies, over real loopback sockets: the PROXY protocol on the
listener (dispatcher.proxied) and X-Forwarded-For / Forwarded from trusted peers
(dispatcher.clientaddr), seen through a rule that echoes ``%{REMOTE_ADDR}`` and ``%{HTTPS}``.

Clients bind distinct loopback addresses (127.0.0.x) so that "who is the peer" is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.addresses import bind
from dispatcher.app import dispatch_core
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.edge import PublicEdge
from dispatcher.proxyproto import V2_SIGNATURE, encode, encode_local
from dispatcher.redirect import compile_rules
from dispatcher.snapshot import build_snapshot
from tests.conftest import run_cli
from tests.test_app import FakeFarm
from tests.test_http1 import closed, read_response

EU = SiteSpec("eu", "http://127.0.0.2:9001", weight=1)
RULES = """RewriteEngine On
RewriteRule ^/whoami$ http://echo.example/%{REMOTE_ADDR}/%{REMOTE_PORT}/%{HTTPS} [R=302,L]
"""
WHOAMI = b"GET /whoami HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
CLIENT = ("203.0.113.9", 40123)
VIP = ("198.51.100.80", 80)


@dataclass
class Served:
    edge: PublicEdge
    farm: FakeFarm
    core: Any
    loop: asyncio.AbstractEventLoop
    sockets: list[socket.socket] = field(default_factory=list)

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(3)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.edge.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sockets.append(sock)
        return sock

    def whoami(self, data: bytes, source: str = "127.0.0.1") -> bytes:
        """Send ``data`` (a PROXY header and/or a request) and return the Location."""
        sock = self.connect(source)
        sock.sendall(data)
        response = read_response(sock, bytearray())
        assert response.status == 302, response
        return response.headers[b"location"]


@contextmanager
def serve(head_timeout: float = 0.5, **dispatcher: Any) -> Iterator[Served]:
    """A real edge built from these ``[dispatcher]`` settings, with the echo rule."""
    config = build_config(
        {"dispatcher": {"admin_tokens": ["t"], "head_timeout": head_timeout, **dispatcher}},
        environ={},
    )
    snapshot = build_snapshot(
        config,
        revision=1,
        sites=[EU],
        health=lambda name: Health("up", None),
        loads={},
        rules=compile_rules(RULES),
    )
    fake = FakeFarm(snapshot)
    core = dispatch_core(fake, config.dispatcher)
    loop = uvloop.new_event_loop()
    edge = PublicEdge.for_settings(core, bind("127.0.0.1:0"), config.dispatcher)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(edge.start(), loop).result(timeout=5)
    served = Served(edge, fake, core, loop)
    try:
        yield served
    finally:
        for sock in served.sockets:
            sock.close()
        asyncio.run_coroutine_threadsafe(edge.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def v2_ssl(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v2 header with a PP2_TYPE_SSL TLV whose client-SSL bit is set."""
    plain = encode(2, source, destination)
    ssl = b"\x20" + struct.pack("!H", 5) + b"\x01\x00\x00\x00\x00"
    return plain[:14] + struct.pack("!H", len(plain) - 16 + len(ssl)) + plain[16:] + ssl


# --- the PROXY protocol ---------------------------------------------------------------------


def test_a_v1_header_names_the_client_the_rules_see() -> None:
    with serve(proxy_protocol=True) as served:
        assert served.whoami(encode(1, CLIENT, VIP) + WHOAMI) == (
            b"http://echo.example/203.0.113.9/40123/off"
        )


def test_a_v2_header_with_the_ssl_flag_is_https() -> None:
    with serve(proxy_protocol=True) as served:
        assert served.whoami(v2_ssl(CLIENT, VIP) + WHOAMI).endswith(b"/203.0.113.9/40123/on")
        assert served.whoami(encode(2, ("2001:db8::9", 7), ("2001:db8::1", 80)) + WHOAMI) == (
            b"http://echo.example/2001:db8::9/7/off"
        )


def test_v2_local_and_v1_unknown_keep_the_peer() -> None:
    with serve(proxy_protocol=True) as served:
        location = served.whoami(encode_local() + WHOAMI, source="127.0.0.23")
        assert location.startswith(b"http://echo.example/127.0.0.23/")
        location = served.whoami(b"PROXY UNKNOWN\r\n" + WHOAMI, source="127.0.0.24")
        assert location.startswith(b"http://echo.example/127.0.0.24/")


@pytest.mark.parametrize("header", [encode(1, CLIENT, VIP), v2_ssl(CLIENT, VIP)])
def test_a_header_in_pieces_then_keep_alive(header: bytes) -> None:
    """The header may come a byte at a time; the connection keeps its client afterwards."""
    with serve(proxy_protocol=True) as served:
        sock = served.connect()
        for byte in header:
            sock.send(bytes([byte]))
            time.sleep(0.002)
        buffer = bytearray()
        sock.sendall(WHOAMI[:7])
        time.sleep(0.01)
        sock.sendall(WHOAMI[7:] + WHOAMI)
        for _ in range(2):
            response = read_response(sock, buffer)
            assert b"/203.0.113.9/40123/" in response.headers[b"location"]


def test_the_access_log_names_the_proxied_client(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, "webfarm.access"),
        serve(proxy_protocol=True, access_log=True) as served,
    ):
        served.whoami(encode(1, CLIENT, VIP) + WHOAMI)
    assert '203.0.113.9:40123 - "GET /whoami HTTP/1.1" 302' in caplog.text


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (WHOAMI, "signature"),  # plain HTTP where a PROXY header is required
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + WHOAMI, "v1"),
        (b"PROXY " + b"9" * 200, "too long"),
        (V2_SIGNATURE + b"\x21\x11\x40\x00" + b"\x00" * 100, "too long"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c", "v2"),
    ],
)
def test_a_missing_or_bad_header_closes_with_no_answer(
    data: bytes, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "webfarm.edge"), serve(proxy_protocol=True) as served:
        sock = served.connect()
        sock.sendall(data)
        assert closed(sock)
        wait_for(lambda: served.edge.proxy_refusals.counts[cause] == 1)
        assert not served.edge.connections
    assert "closed a connection from 127.0.0.1: " in caplog.text


def test_a_slow_header_is_closed_at_head_timeout_without_a_408(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.WARNING, "webfarm.edge"),
        serve(head_timeout=0.3, proxy_protocol=True) as served,
    ):
        sock = served.connect()
        sock.sendall(b"PROXY TCP4 1.2.3.4")
        started = time.monotonic()
        assert closed(sock)
        assert 0.2 < time.monotonic() - started < 2.0
        assert served.edge.proxy_refusals.counts["timeout"] == 1
        silent = served.connect()  # nothing at all: closed too
        assert closed(silent)
        wait_for(lambda: served.edge.proxy_refusals.counts["timeout"] == 2)
    assert "no complete PROXY header within head_timeout" in caplog.text


def test_a_connection_closed_before_a_byte_is_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A layer-4 health check (connect, close) is no attack: no warning line."""
    with caplog.at_level(logging.WARNING, "webfarm.edge"), serve(proxy_protocol=True) as served:
        for _ in range(3):
            served.connect().close()
        wait_for(lambda: served.edge.proxy_refusals.counts["empty"] == 3)
        sock = served.connect()
        sock.sendall(b"PROXY TCP4 ")
        sock.shutdown(socket.SHUT_WR)
        wait_for(lambda: served.edge.proxy_refusals.counts["cut"] == 1)
    assert "closed before sending anything" not in caplog.text
    assert "ended inside its PROXY header" in caplog.text


def test_warnings_are_throttled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "webfarm.edge"), serve(proxy_protocol=True) as served:
        for _ in range(20):
            sock = served.connect()
            sock.sendall(WHOAMI)
            assert closed(sock)
        wait_for(lambda: served.edge.proxy_refusals.counts["signature"] == 20)
    assert caplog.text.count("no PROXY protocol header") == 1


def test_with_trusted_proxies_only_they_may_send_the_header() -> None:
    with serve(proxy_protocol=True, trusted_proxies=["127.0.0.5/32"]) as served:
        sock = served.connect("127.0.0.6")
        sock.sendall(encode(1, CLIENT, VIP) + WHOAMI)
        assert closed(sock)
        wait_for(lambda: served.edge.proxy_refusals.counts["untrusted"] == 1)
        location = served.whoami(encode(1, CLIENT, VIP) + WHOAMI, source="127.0.0.5")
        assert location.startswith(b"http://echo.example/203.0.113.9/")


def test_a_proxy_header_and_x_forwarded_for_chain() -> None:
    """The PROXY header's client is the peer the X-Forwarded-For walk starts from: a
    trusted HTTP proxy behind a layer-4 switch names the client."""
    with serve(proxy_protocol=True, trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"]) as served:
        request = WHOAMI.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 203.0.113.77\r\n\r\n")
        inner = encode(1, ("10.1.2.3", 999), VIP)
        assert served.whoami(inner + request).startswith(b"http://echo.example/203.0.113.77/0/")
        outer = encode(1, ("192.0.2.50", 999), VIP)  # an untrusted client: its header ignored
        assert served.whoami(outer + request).startswith(b"http://echo.example/192.0.2.50/999/")


# --- X-Forwarded-For and Forwarded without the PROXY protocol ----------------------------------


def forwarded_request(name: bytes, value: bytes, proto: bytes | None = None) -> bytes:
    extra = name + b": " + value + b"\r\n"
    if proto is not None:
        extra += b"X-Forwarded-Proto: " + proto + b"\r\n"
    return WHOAMI.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n")


def test_x_forwarded_for_from_a_trusted_peer_only() -> None:
    with serve(trusted_proxies=["127.0.0.7/32"]) as served:
        request = forwarded_request(b"X-Forwarded-For", b"6.6.6.6, 203.0.113.9", b"https")
        assert served.whoami(request, source="127.0.0.7") == b"http://echo.example/203.0.113.9/0/on"
        location = served.whoami(request, source="127.0.0.8")
        assert location.startswith(b"http://echo.example/127.0.0.8/")
        assert location.endswith(b"/off")
        bad = forwarded_request(b"X-Forwarded-For", b"not-an-address")  # ignored: the peer
        assert served.whoami(bad, source="127.0.0.7").startswith(b"http://echo.example/127.0.0.7/")


def test_forwarded_when_the_proxies_write_it() -> None:
    with serve(trusted_proxies=["127.0.0.7/32"], forwarded_header="forwarded") as served:
        request = forwarded_request(b"Forwarded", b'for="[2001:db8::9]:4711";proto=https')
        request = request.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        assert served.whoami(request, source="127.0.0.7") == (
            b"http://echo.example/2001:db8::9/4711/on"
        )


def test_the_plain_edge_ignores_forwarding_headers_and_proxy_headers() -> None:
    """Neither setting: the peer is the client, whatever the request says."""
    with serve() as served:
        request = forwarded_request(b"X-Forwarded-For", b"203.0.113.9", b"https")
        location = served.whoami(request, source="127.0.0.9")
        assert location.startswith(b"http://echo.example/127.0.0.9/")
        assert location.endswith(b"/off")
        assert served.edge.core is served.core  # nothing in front of the core
        sock = served.connect()
        sock.sendall(encode(1, CLIENT, VIP) + WHOAMI)
        assert read_response(sock, bytearray()).status == 400


def test_configure_applies_new_trusted_proxies_to_the_next_request() -> None:
    """A reload (``PublicEdge.configure``, as the workers and the runner call it) puts new
    trusted proxies in force at once, on open connections too."""
    with serve() as served:
        request = forwarded_request(b"X-Forwarded-For", b"203.0.113.9")
        sock = served.connect("127.0.0.7")
        buffer = bytearray()
        sock.sendall(request)
        assert b"/127.0.0.7/" in read_response(sock, buffer).headers[b"location"]
        new = build_config(
            {"dispatcher": {"admin_tokens": ["t"], "trusted_proxies": ["127.0.0.7"]}},
            environ={},
        ).dispatcher
        done = asyncio.run_coroutine_threadsafe(
            _configure(served.edge, served.core, new), served.loop
        )
        done.result(timeout=5)
        sock.sendall(request)
        assert b"/203.0.113.9/" in read_response(sock, buffer).headers[b"location"]
        assert served.edge.trusted is not None


async def _configure(edge: PublicEdge, core: Any, settings: Any) -> None:
    edge.configure(core, settings)


def test_network_affinity_keys_on_the_trusted_client() -> None:
    with serve(trusted_proxies=["127.0.0.7/32"], affinity="network") as served:
        request = GET_ROOT.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
        sock = served.connect("127.0.0.7")
        sock.sendall(request)
        assert read_response(sock, bytearray()).status == 302
        ring = served.core.farm.snapshot.default_pool.ring
        assert ring is not None  # network affinity: the pool's consistent hash, keyed by client
        wait_for(lambda: "203.0.113.9" in ring.memo)
        assert "127.0.0.7" not in ring.memo


GET_ROOT = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"


# --- hostile headers never hurt others ------------------------------------------------------

hostile = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.builds(lambda b: b"PROXY " + b, st.binary(max_size=150)),
    st.builds(lambda b: V2_SIGNATURE + b, st.binary(max_size=300)),
    st.builds(
        lambda h, cut, tail: h[:cut] + tail,
        st.sampled_from([encode(1, CLIENT, VIP), v2_ssl(CLIENT, VIP)]),
        st.integers(0, 60),
        st.binary(max_size=40),
    ),
)


@pytest.fixture(scope="module")
def shared() -> Iterator[Served]:
    with serve(head_timeout=0.3, proxy_protocol=True) as served:
        yield served


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hostile)
def test_hostile_headers_never_hurt_other_clients(shared: Served, data: bytes) -> None:
    attacker = shared.connect("127.0.0.66")
    with contextlib.suppress(OSError):  # (already cut)
        attacker.sendall(data)
    started = time.monotonic()
    assert shared.whoami(encode(1, CLIENT, VIP) + WHOAMI).startswith(
        b"http://echo.example/203.0.113.9/"
    )
    assert time.monotonic() - started < 1.0
    attacker.settimeout(2.0)
    try:
        answer = attacker.recv(65536)
    except (ConnectionResetError, TimeoutError):
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer  # closed, or HTTP
    assert not answer.startswith(b"HTTP/1.1 500"), answer
    attacker.close()


def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- explain gives the same answer ------------------------------------------------------------


def test_explain_follows_the_trusted_proxies(tmp_path: Path) -> None:
    """``farm-dispatcher explain --remote-addr PROXY -H 'X-Forwarded-For: ...'`` answers as
    the listener would: the client the trusted proxy names; an untrusted one's header
    changes nothing."""
    (tmp_path / "rules.conf").write_text(RULES)
    config = tmp_path / "farm.toml"
    config.write_text(
        '[dispatcher]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
        'admin_tokens = ["t"]\nrules = "rules.conf"\ntrusted_proxies = ["10.0.0.0/8"]\n'
    )

    def explained(remote: str) -> str:
        result = run_cli(
            "explain",
            "-c",
            str(config),
            "--remote-addr",
            remote,
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "-H",
            "X-Forwarded-Proto: https",
            "http://www.example.com/whoami",
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "Location: http://echo.example/203.0.113.9/0/on" in explained("10.0.0.2")
    assert "Location: http://echo.example/198.51.100.7/0/off" in explained("198.51.100.7")
