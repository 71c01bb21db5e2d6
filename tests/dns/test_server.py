"""The DNS front's sockets, for real on loopback: UDP, TCP with pipelined queries, and every
TCP limit hit by a real client (idle timeout, connection count, message size, queries per
connection, a peer that never reads)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from dispatcher.dns.server import DnsFront, bind_pair
from dispatcher.dns.service import DnsService
from tests.dns.helpers import WWW, Source, addresses, make_config, query

pytestmark = pytest.mark.anyio

LENGTH = struct.Struct("!H")
LONG = ".".join(["a" * 60] * 3) + ".farm.example."


def _many(count: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"s{i}",
            "base_url": f"http://192.0.2.{i + 1}",
            "addresses": [f"2001:db8::{i + 1:x}", f"192.0.2.{i + 1}"],
        }
        for i in range(count)
    ]


async def start(**limits: Any) -> DnsFront:
    names = [
        {"name": WWW, "pool": "default", "answers": 2},
        {"name": LONG, "pool": "default", "answers": 16},
    ]
    config = make_config({"names": names, **limits}, _many(16))
    front = DnsFront(DnsService(Source(config)), [bind_pair("127.0.0.1:0", reuseport=False)])
    await front.start()
    return front


@pytest.fixture
async def front() -> AsyncIterator[DnsFront]:
    running = await start(tcp_idle_timeout=0.5, tcp_max_queries=5, tcp_max_message=512)
    try:
        yield running
    finally:
        await running.stop()


async def test_udp_and_tcp_answer(front: DnsFront) -> None:
    port = front.ports[0]
    message = dns.message.make_query(WWW, "A")
    udp = await dns.asyncquery.udp(message, "127.0.0.1", port=port, timeout=2)
    tcp = await dns.asyncquery.tcp(message, "127.0.0.1", port=port, timeout=2)
    assert len(addresses(udp)) == len(addresses(tcp)) == 2  # (the rotation moves on)
    assert front.service.counts["udp"] == 1
    assert front.service.counts["tcp"] == 1


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _read_answer(reader: asyncio.StreamReader) -> dns.message.Message:
    (size,) = LENGTH.unpack(await asyncio.wait_for(reader.readexactly(2), 2))
    return dns.message.from_wire(await asyncio.wait_for(reader.readexactly(size), 2))


def _framed(wire: bytes) -> bytes:
    return LENGTH.pack(len(wire)) + wire


async def _closed(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closed the connection (reading whatever is left)."""
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(65536), within):
        pass
    return time.monotonic() - started


async def test_pipelined_queries_are_answered_in_order(front: DnsFront) -> None:
    reader, writer = await _connect(front.ports[0])
    sent = [dns.message.make_query(WWW, "A"), dns.message.make_query("nope.farm.example.", "A")]
    sent.append(dns.message.make_query(WWW, "AAAA"))
    writer.write(b"".join(_framed(m.to_wire()) for m in sent))  # one write: pipelined
    answers = [await _read_answer(reader) for _ in sent]
    assert [a.id for a in answers] == [m.id for m in sent]
    assert [a.rcode() for a in answers] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, 0]
    writer.close()


async def test_a_query_split_across_segments_is_answered(front: DnsFront) -> None:
    reader, writer = await _connect(front.ports[0])
    wire = _framed(query(WWW, "A"))
    for byte in wire:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.001)
    assert len(addresses(await _read_answer(reader))) == 2
    writer.close()


async def test_an_idle_connection_is_closed_after_the_timeout(front: DnsFront) -> None:
    reader, writer = await _connect(front.ports[0])
    writer.write(_framed(query(WWW, "A")))
    await _read_answer(reader)
    took = await _closed(reader, 5)
    assert 0.3 < took < 2.5  # tcp_idle_timeout 0.5 s, swept every 0.125 s
    assert front.service.counts["tcp_idle_closed"] == 1
    writer.close()


async def test_the_query_limit_per_connection(front: DnsFront) -> None:
    reader, writer = await _connect(front.ports[0])
    writer.write(b"".join(_framed(query(WWW, "A")) for _ in range(8)))
    answers = [await _read_answer(reader) for _ in range(5)]
    assert all(a.rcode() == dns.rcode.NOERROR for a in answers)
    assert await _closed(reader, 2) < 1  # closed after the 5th answer: no 6th
    writer.close()


async def test_a_message_over_the_size_limit_closes_the_connection(front: DnsFront) -> None:
    reader, writer = await _connect(front.ports[0])
    writer.write(LENGTH.pack(513) + bytes(100))
    assert await _closed(reader, 2) < 1
    assert front.service.counts["tcp_too_large"] == 1
    writer.close()


async def test_garbage_over_tcp_closes_the_connection(front: DnsFront) -> None:
    reader, writer = await _connect(front.ports[0])
    writer.write(_framed(b"\x00" * 5))  # shorter than a header: not DNS
    assert await _closed(reader, 2) < 1
    writer.close()


async def test_at_the_connection_limit_the_idlest_connection_makes_room() -> None:
    front = await start(tcp_max_connections=2, tcp_idle_timeout=30)
    try:
        port = front.ports[0]
        first = await _connect(port)
        await asyncio.sleep(0.05)
        second = await _connect(port)
        second[1].write(_framed(query(WWW, "A")))
        await _read_answer(second[0])
        third = await _connect(port)
        third[1].write(_framed(query(WWW, "A")))
        assert len(addresses(await _read_answer(third[0]))) == 2
        assert await _closed(first[0], 2) < 1  # the idlest went
        second[1].write(_framed(query(WWW, "A")))
        assert len(addresses(await _read_answer(second[0]))) == 2  # the others stay
        assert len(front.connections) == 2
        for _, writer in (first, second, third):
            writer.close()
    finally:
        await front.stop()


async def test_a_peer_that_never_reads_cannot_grow_our_buffers() -> None:
    front = await start(tcp_write_buffer=4096, tcp_max_queries=1_000_000, tcp_idle_timeout=1.0)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", front.ports[0]))
        frame = _framed(query(LONG, "AAAA"))  # ~500-byte answers to 200-byte queries
        burst = frame * 20_000  # ~4 MB of queries; ~10 MB of answers, never read
        sent = 0
        deadline = time.monotonic() + 3
        while sent < len(burst) and time.monotonic() < deadline:
            try:
                sent += sock.send(burst[sent : sent + 65536])
            except BlockingIOError:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        (conn,) = front.connections
        assert conn.transport is not None
        # the server stopped reading: its buffers hold at most the limit plus an answer
        assert conn.transport.get_write_buffer_size() <= 4096 + 1024
        assert len(conn.buffer) <= 2 + 4096 + 256 * 1024  # (and one read in flight)
        answered = front.service.counts["tcp"]
        assert answered < 20_000
        await asyncio.sleep(1.8)  # no progress for the idle timeout: closed
        assert not front.connections
        assert front.service.counts["tcp_idle_closed"] == 1
        sock.close()
    finally:
        await front.stop()


async def test_udp_answers_every_datagram_and_stays_silent_on_garbage(front: DnsFront) -> None:
    port = front.ports[0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        for junk in (b"", b"\x00" * 11, bytes(query(WWW, "A")[:2]) + b"\x80" + bytes(9)):
            sock.sendto(junk, ("127.0.0.1", port))
        sock.sendto(query(WWW, "A"), ("127.0.0.1", port))
        reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
        assert len(addresses(dns.message.from_wire(reply))) == 2  # the only answer
        assert front.service.counts["silent"] == 3
    finally:
        sock.close()
