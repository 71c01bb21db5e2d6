"""Heartbeat transports for real: UDP on loopback, serial over a pty pair, multicast in netns.

The serial tests drive the transport (opened on the pty's slave device, set raw) from the
pty's master end, so garbage and frames split across writes reach it exactly as written.
The multicast test builds two network namespaces joined by a veth pair (10.213.x.y only)
and removes them afterwards; without root it skips with the reason (a failure under CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import termios
import tty
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmnode.cluster.protocol import Heartbeat, Receiver, TransportError, encode
from farmnode.cluster.transports import (
    END,
    TRANSPORTS,
    Serial,
    SlipDecoder,
    Transport,
    UdpMulticast,
    UdpUnicast,
    parse_address,
    slip_frame,
)
from tests.conftest import skip_or_fail
from tests.farmnode import netns

pytestmark = pytest.mark.anyio

KEY = b"cluster-key-for-tests-0123456789"
CLUSTER = "eu-front"
WAIT = 5.0


def heartbeat(sequence: int, node: str = "n1") -> bytes:
    hb = Heartbeat(CLUSTER, node, 1, sequence, 0, "active", 100, ("front",))
    return encode(hb, KEY)


class Inbox:
    """Collects (datagram, transport) pairs; waits for them with a bounded timeout."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, str]] = []
        self.changed = asyncio.Event()

    def __call__(self, data: bytes, transport: str) -> None:
        self.items.append((data, transport))
        self.changed.set()

    async def wait_for(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                self.changed.clear()
                await self.changed.wait()

    def payloads(self) -> list[bytes]:
        return [data for data, _ in self.items]


@contextlib.asynccontextmanager
async def started(transport: Transport, inbox: Inbox) -> AsyncIterator[Transport]:
    await transport.start(inbox)
    try:
        yield transport
    finally:
        await transport.stop()


# --- UDP unicast ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_udp_unicast_both_ways_on_loopback(host: str) -> None:
    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    inbox_a, inbox_b = Inbox(), Inbox()
    a, b = UdpUnicast(bind), UdpUnicast(bind)
    async with started(a, inbox_a), started(b, inbox_b):
        assert a.local_address is not None
        assert b.local_address is not None
        a.set_peers([b.local_address])
        b.set_peers([bind.replace(":0", f":{a.local_address[1]}")])
        a.send(heartbeat(1))
        b.send(heartbeat(1, node="n2"))
        await inbox_b.wait_for(lambda: len(inbox_b.items) == 1)
        await inbox_a.wait_for(lambda: len(inbox_a.items) == 1)
    assert inbox_b.items == [(heartbeat(1), f"udp:{bind}")]
    assert inbox_a.payloads() == [heartbeat(1, node="n2")]
    assert a.stats["sent"] == 1
    assert b.stats["received"] == 1


async def test_udp_sends_every_heartbeat_to_every_peer() -> None:
    inboxes = [Inbox() for _ in range(3)]
    peers = [UdpUnicast(f"127.0.0.{i + 2}:0") for i in range(3)]
    sender = UdpUnicast("127.0.0.1:0")
    async with contextlib.AsyncExitStack() as stack:
        for peer, inbox in zip(peers, inboxes, strict=True):
            await stack.enter_async_context(started(peer, inbox))
        await stack.enter_async_context(started(sender, Inbox()))
        sender.set_peers([peer.local_address for peer in peers if peer.local_address])
        for sequence in range(1, 4):
            sender.send(heartbeat(sequence))
        for inbox in inboxes:
            await inbox.wait_for(lambda inbox=inbox: len(inbox.items) == 3)  # type: ignore[misc]
            assert inbox.payloads() == [heartbeat(s) for s in (1, 2, 3)]
    assert sender.stats["sent"] == 9


async def test_udp_send_never_raises_and_counts() -> None:
    transport = UdpUnicast("127.0.0.1:0", ["127.0.0.1:9"])
    transport.send(b"before start")
    async with started(transport, Inbox()):
        transport.send(b"x" * 70_000)  # larger than any datagram: an error, counted
        transport.send(b"to a closed port")
    transport.send(b"after stop")
    await transport.stop()  # idempotent
    assert transport.stats["not_running"] == 2
    assert transport.stats["send_errors"] >= 1
    assert transport.stats["sent"] >= 1


async def test_udp_start_failures_are_typed() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        busy = UdpUnicast(f"127.0.0.1:{port}")
        with pytest.raises(TransportError, match=f"udp:127.0.0.1:{port}"):
            await busy.start(Inbox())
    transport = UdpUnicast("127.0.0.1:0")
    async with started(transport, Inbox()):
        with pytest.raises(TransportError, match="already started"):
            await transport.start(Inbox())


def test_addresses_and_registry() -> None:
    assert parse_address("10.213.0.11:6940") == ("10.213.0.11", 6940)
    assert parse_address("10.213.0.11") == ("10.213.0.11", 6940)
    assert parse_address("[fd00::1]:7") == ("fd00::1", 7)
    assert parse_address("fd00::1") == ("fd00::1", 6940)
    for bad in ("eth0:1", "10.213.0.1:70000", "[fd00::1", "10.213.0.1:x"):
        with pytest.raises(ValueError):
            parse_address(bad)
    assert UdpUnicast("[::1]:0").name == "udp:[::1]:0"
    assert TRANSPORTS["udp"] is UdpUnicast
    assert TRANSPORTS["multicast"] is UdpMulticast
    assert TRANSPORTS["serial"] is Serial
    with pytest.raises(ValueError, match="multicast"):
        UdpMulticast("10.213.0.1", 6940, "eth0")
    with pytest.raises(ValueError, match="ttl"):
        UdpMulticast("239.213.0.1", 6940, "eth0", ttl=0)
    with pytest.raises(ValueError, match="interface"):
        UdpMulticast("239.213.0.1", 6940, "a/b")
    assert UdpMulticast("239.1.2.3", 7, "eth0").name == "multicast:239.1.2.3:7%eth0"
    with pytest.raises(ValueError, match="baudrate"):
        Serial("/dev/ttyS1", baudrate=1234)


# --- serial over a pty pair -----------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """(master fd, slave device path); the master is raw, both ends closed afterwards."""
    master, slave = os.openpty()
    tty.setraw(master, termios.TCSANOW)
    os.set_blocking(master, False)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(slave)
        with contextlib.suppress(OSError):
            os.close(master)


async def read_frames(master: int, count: int) -> list[bytes]:
    """``count`` SLIP frames read from the pty master (bounded wait)."""
    decoder, frames = SlipDecoder(), list[bytes]()
    async with asyncio.timeout(WAIT):
        while len(frames) < count:
            try:
                frames += decoder.feed(os.read(master, 4096))
            except BlockingIOError:
                await asyncio.sleep(0.01)
    return frames


async def test_serial_survives_garbage_and_split_frames(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    inbox = Inbox()
    serial = Serial(device)
    receiver = Receiver(KEY, CLUSTER, "me")
    expected = [heartbeat(s) for s in range(1, 5)]
    frames = [slip_frame(payload) for payload in expected]
    async with started(serial, inbox):
        os.write(master, b"line noise \xdb\xdb\x00" + frames[0] + b"\xff" * 50)
        os.write(master, frames[1][:20])  # one frame in three writes
        await asyncio.sleep(0.05)
        os.write(master, frames[1][20:41])
        await asyncio.sleep(0.05)
        os.write(master, frames[1][41:] + b"\xdb" + frames[2] + bytes(range(256)) + frames[3])
        await inbox.wait_for(lambda: all(p in inbox.payloads() for p in expected))
    for data, transport in inbox.items:
        receiver.accept(data, transport)
    assert list(receiver.latest.values()) == [
        Heartbeat(CLUSTER, "n1", 1, 4, 0, "active", 100, ("front",))
    ]
    assert receiver.stats["accepted"] == 4
    assert set(receiver.stats) <= {"accepted", "magic", "short"}  # the garbage, rejected
    assert receiver.last_heard.keys() == {("n1", f"serial:{device}")}


async def test_serial_sends_framed_heartbeats(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    serial = Serial(device, baudrate=9600)
    payloads = [heartbeat(s) for s in range(1, 4)] + [b"\xc0\xdb\xc0"]  # escapes survive
    async with started(serial, Inbox()):
        probe = os.open(device, os.O_RDWR | os.O_NOCTTY)
        try:
            attrs = termios.tcgetattr(probe)
        finally:
            os.close(probe)
        for payload in payloads:
            serial.send(payload)
        assert await read_frames(master, len(payloads)) == payloads
    assert attrs[3] & termios.ECHO == 0  # raw: no echo, no line editing
    assert attrs[3] & termios.ICANON == 0
    assert attrs[4] == termios.B9600
    assert serial.stats["sent"] == 4


async def test_serial_link_loss_is_counted_not_raised(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    serial = Serial(device, retry_after=0.05)
    async with started(serial, Inbox()):
        os.close(master)  # the cable is pulled: reads and writes fail (EIO)
        async with asyncio.timeout(WAIT):
            while not serial.stats["reopen_errors"]:
                serial.send(heartbeat(1))
                await asyncio.sleep(0.02)
    serial.send(heartbeat(2))
    assert serial.stats["read_errors"] + serial.stats["send_errors"] >= 1
    assert serial.stats["not_running"] >= 1


async def test_serial_never_blocks_on_a_stalled_line(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    serial = Serial(device)
    async with started(serial, Inbox()):
        for sequence in range(1, 1001):  # nobody reads the other end: the pty buffer fills
            serial.send(heartbeat(sequence))
        assert serial.stats["overflow"] > 0
        frames = await read_frames(master, 40)
    assert frames[:40] == [heartbeat(s) for s in range(1, 41)]  # whole, in order


async def test_serial_start_failure_is_typed(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(TransportError, match="cannot open"):
        await Serial(f"{tmp_path}/ttyNONE").start(Inbox())
    regular = f"{tmp_path}/file"
    with open(regular, "w") as file:
        file.write("not a tty")
    with pytest.raises(TransportError, match="serial:"):
        await Serial(regular).start(Inbox())


PAYLOADS = st.lists(st.binary(min_size=1, max_size=80), max_size=6)


@given(PAYLOADS, st.lists(st.binary(max_size=1500), min_size=7, max_size=7), st.data())
def test_slip_recovers_every_intact_frame(
    payloads: list[bytes], junk: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(junk[i] + slip_frame(p) for i, p in enumerate(payloads)) + junk[-1]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder, frames = SlipDecoder(), []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += decoder.feed(stream[start:stop])
        assert len(decoder._buffer) <= decoder.max_frame
    found = iter(frames)
    assert all(any(frame == p for frame in found) for p in payloads)  # in order
    assert all(len(frame) <= decoder.max_frame for frame in frames)


def test_slip_drops_bad_escapes_and_oversize_frames() -> None:
    decoder = SlipDecoder(max_frame=8)
    frames = decoder.feed(b"\xc0ab\xdbxcd\xc0" + b"\xc0" + b"z" * 9 + b"\xc0ok\xc0")
    assert frames == [b"ok"]
    assert decoder.stats == {"bad_escape": 1, "oversize": 1, "frames": 1}
    assert bytes((END,)) == b"\xc0"


# --- redundant paths into one receiver ------------------------------------------------------


async def test_one_heartbeat_over_udp_and_serial(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    inbox, receiver = Inbox(), Receiver(KEY, CLUSTER, "me")
    listener, sender = UdpUnicast("127.0.0.1:0"), UdpUnicast("127.0.0.1:0")
    serial = Serial(device)
    async with started(listener, inbox), started(sender, Inbox()), started(serial, inbox):
        assert listener.local_address is not None
        sender.set_peers([listener.local_address])
        sender.send(heartbeat(7))
        os.write(master, slip_frame(heartbeat(7)))  # the peer's serial end
        await inbox.wait_for(lambda: len(inbox.items) == 2)
    results = [receiver.accept(data, name) for data, name in inbox.items]
    assert sum(result is not None for result in results) == 1
    assert receiver.stats == {"accepted": 1, "duplicate": 1}
    assert set(receiver.heard("n1")) == {"udp:127.0.0.1:0", f"serial:{device}"}


# --- multicast in network namespaces --------------------------------------------------------


def _in(ns: netns.Namespace) -> Callable[[int, int], socket.socket]:
    return lambda family, kind: ns.call(lambda: socket.socket(family, kind))


async def test_multicast_between_two_namespaces() -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    group, other_group, port = "239.213.0.1", "239.213.0.2", 6940
    with netns.Lab() as lab:
        n1, n2 = lab.namespace("n1"), lab.namespace("n2")
        lab.link(n1, "10.213.40.1/24", n2, "10.213.40.2/24")
        one = UdpMulticast(group, port, "10.213.40.1", socket_factory=_in(n1))
        two = UdpMulticast(group, port, "v-n1", socket_factory=_in(n2))  # n2's veth, by name
        elsewhere = UdpMulticast(other_group, port, "10.213.40.2", socket_factory=_in(n2))
        stranger = UdpMulticast(other_group, port, "v-n2", socket_factory=_in(n1))
        missing = UdpMulticast(group, port, "nosuch0", socket_factory=_in(n1))
        with pytest.raises(TransportError, match="nosuch0"):
            await missing.start(Inbox())
        inboxes = Inbox(), Inbox(), Inbox()
        async with (
            started(one, inboxes[0]),
            started(two, inboxes[1]),
            started(elsewhere, inboxes[2]),
            started(stranger, Inbox()),
        ):
            async with asyncio.timeout(WAIT):  # the first datagrams may race the IGMP join
                while not (inboxes[0].items and inboxes[1].items and inboxes[2].items):
                    one.send(heartbeat(1))
                    two.send(heartbeat(1, node="n2"))
                    stranger.send(heartbeat(1, node="n3"))  # another group, the same port
                    await asyncio.sleep(0.05)
            one.send(heartbeat(2))
            await inboxes[1].wait_for(lambda: heartbeat(2) in inboxes[1].payloads())
        assert set(inboxes[1].payloads()) == {heartbeat(1), heartbeat(2)}  # loop=False
        assert set(inboxes[0].payloads()) == {heartbeat(1, node="n2")}
        assert set(inboxes[2].payloads()) == {heartbeat(1, node="n3")}
        assert {name for _, name in inboxes[1].items} == {f"multicast:{group}:{port}%v-n1"}
