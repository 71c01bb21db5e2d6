"""The UDP readers on real loopback sockets, both of them (``recvmmsg``/``sendmmsg`` and
``recvfrom``/``sendto``): a batch is bounded, every datagram of it answered to its sender,
garbage and oversized datagrams not, IPv6 and IPv4-mapped peers seen as they are; and the
HTTP edge on the same event loop keeps answering while the DNS port is flooded."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import dns.message
import pytest
import uvloop

from dispatcher.addresses import bind
from dispatcher.app import DispatchCore
from dispatcher.dns.server import DnsFront, bind_pair
from dispatcher.dns.service import DnsService
from dispatcher.dns.udp import (
    HAS_MMSG,
    MAX_QUERY,
    UDP_BATCH,
    MmsgReader,
    RecvfromReader,
    UdpReader,
)
from dispatcher.edge import PublicEdge
from tests.conftest import skip_or_fail
from tests.dns.helpers import WWW, Source, addresses, make_config, query
from tests.test_app import farm
from tests.test_http1 import EU, GET, read_response

Reader = Callable[[DnsService, socket.socket], UdpReader]


def _mmsg(service: DnsService, sock: socket.socket) -> UdpReader:
    if not HAS_MMSG:
        skip_or_fail("recvmmsg/sendmmsg are not available here")
    return MmsgReader(service, sock)


READERS = pytest.mark.parametrize("reader", [_mmsg, RecvfromReader], ids=["mmsg", "recvfrom"])


class Recording(DnsService):
    """A service that notes the client addresses it was handed."""

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        self.seen: list[str] = []

    def answer_datagrams(
        self, datagrams: Sequence[bytes], addresses: Sequence[str]
    ) -> list[bytes | None]:
        self.seen.extend(addresses)
        return super().answer_datagrams(datagrams, addresses)


@contextmanager
def reading(reader: Reader, host: str = "127.0.0.1") -> Iterator[tuple[UdpReader, Recording]]:
    service = Recording(Source(make_config()))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    try:
        yield reader(service, sock), service
    finally:
        sock.close()


def client(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(0.2)  # (the answers are sent before readable() returns)
    return sock


def received(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            return got


@READERS
def test_a_batch_is_bounded_and_every_query_answered_to_its_sender(reader: Reader) -> None:
    with reading(reader) as (udp, service):
        target = udp.sock.getsockname()
        one, two = client(), client()
        with one, two:
            for i in range(UDP_BATCH + 36):  # (in the socket's buffer: a few KiB)
                message = dns.message.from_wire(query(WWW, "A", subnet="198.51.100.0/24"))
                message.id = i
                (one if i % 2 else two).sendto(message.to_wire(), target)
            udp.readable()
            first = received(one) + received(two)
            assert len(first) == UDP_BATCH  # one wake-up, one batch: the loop runs between
            udp.readable()
            rest = received(one) + received(two)
            assert len(rest) == 36
        ids = sorted(dns.message.from_wire(a).id for a in first + rest)
        assert ids == list(range(UDP_BATCH + 36))
        for answer in first + rest:
            assert len(addresses(dns.message.from_wire(answer))) == 2
        assert service.counts["udp"] == UDP_BATCH + 36
        assert service.report().counts["noerror"] == UDP_BATCH + 36


@READERS
def test_garbage_and_oversized_datagrams_are_not_answered(reader: Reader) -> None:
    wire = query(WWW, "A", edns=0)
    padding = MAX_QUERY - len(wire) - 4  # an EDNS padding option (RFC 7830): unknown to us
    largest = wire[:-2] + (padding + 4).to_bytes(2, "big") + b"\x00\x0c"
    largest += padding.to_bytes(2, "big") + bytes(padding)
    assert len(largest) == MAX_QUERY
    with reading(reader) as (udp, service), client() as sock:
        target = udp.sock.getsockname()
        for datagram in (b"", b"\x00" * 11, largest + b"\x00", largest):
            sock.sendto(datagram, target)
        udp.readable()
        answers = received(sock)
        assert len(answers) == 1  # the largest query there may be
        assert len(addresses(dns.message.from_wire(answers[0]))) == 2
        assert service.counts["udp_oversized"] == 1
        assert service.counts["silent"] == 2


@READERS
def test_ipv6_and_ipv4_mapped_peers(reader: Reader) -> None:
    if not socket.has_ipv6:
        skip_or_fail("no IPv6 here")
    with reading(reader, "::") as (udp, service):
        port = udp.sock.getsockname()[1]
        with client(socket.AF_INET6, "::1") as six, client() as four:
            six.sendto(query(WWW, "A"), ("::1", port))
            four.sendto(query(WWW, "A"), ("127.0.0.1", port))
            udp.readable()
            assert len(received(six)) == 1
            assert len(received(four)) == 1
        assert sorted(service.seen) == ["127.0.0.1", "::1"]


#: SO_RCVBUFFORCE (root: past net.core.rmem_max), else SO_RCVBUF
BUFFER_FORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

FLOOD = """
import socket, sys, time
port, wire, seconds = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
sent, deadline = 0, time.monotonic() + seconds
while sent < 5_000_000 and time.monotonic() < deadline:
    for _ in range(256):
        try:
            sock.sendto(wire, ("127.0.0.1", port))
        except OSError:
            pass
    sent += 256
print(sent)
"""


def test_the_http_edge_on_the_same_loop_answers_while_the_dns_port_is_flooded() -> None:
    loop = uvloop.new_event_loop()
    edge = PublicEdge(DispatchCore(farm([EU], {"eu"})), bind("127.0.0.1:0"))
    pair = bind_pair("127.0.0.1:0", reuseport=False)
    # a deep receive queue: a reader that drained it to the end would be stuck in it for
    # seconds (the flood fills it faster than it is answered)
    try:
        pair[1].setsockopt(socket.SOL_SOCKET, BUFFER_FORCE, 16 << 20)
    except PermissionError:  # (not root: as deep as net.core.rmem_max allows)
        pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    front = DnsFront(DnsService(Source(make_config())), [pair])
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    for started in (edge.start(), front.start()):
        asyncio.run_coroutine_threadsafe(started, loop).result(timeout=5)
    wire = query(WWW, "A", subnet="198.51.100.0/24")
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, str(front.ports[0]), wire.hex(), "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the flood under way
        slowest = 0.0
        for _ in range(5):
            began = time.monotonic()
            with socket.create_connection(("127.0.0.1", edge.port), timeout=3) as sock:
                sock.sendall(GET)
                assert read_response(sock, bytearray()).status == 302
            slowest = max(slowest, time.monotonic() - began)
        answered = front.service.report().counts["noerror"]
        assert flood.poll() is None, "the flood ended before the requests did"
    finally:
        out, _ = flood.communicate(timeout=30)
        for stopped in (front.stop(), edge.stop()):
            asyncio.run_coroutine_threadsafe(stopped, loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
    assert answered > 1000, (answered, out)  # the DNS front was busy meanwhile
    assert slowest < 1.0, slowest
