"""Learned latency on the switch: the RTT table (pure, with hypothesis), ``TCP_INFO`` parsing,
and a real userspace switch sampling real connections, on loopback and, in a lab of network
namespaces, across a link whose round trip is 40 ms.

The lab needs root and ``/dev/net/tun``: without them that test skips with the reason (under
CI=true that is a failure).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.placement.rtt import RttEntry, RttReport, build_view, client_network, is_network
from farmnode.dataplane.userspace import UserspacePlane
from farmnode.rtt import (
    MAX_SAMPLE,
    TCPI_RTT_OFFSET,
    RttTable,
    parse_tcp_rtt,
    socket_rtt,
)
from farmnode.spec import CheckSpec, RealSpec, ServiceSpec
from farmnode.switch.service import VirtualService
from tests.conftest import skip_or_fail
from tests.farmnode.delayline import DelayLine
from tests.farmnode.netns import Lab, unavailable_reason

TIMEOUT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the table (pure) --------------------------------------------------------------------------

CLIENTS = st.one_of(
    st.builds("10.{}.{}.{}".format, st.integers(0, 3), st.integers(0, 255), st.integers(0, 255)),
    st.builds("2001:db8:{:x}::{:x}".format, st.integers(0, 40), st.integers(1, 9)),
    st.builds("::ffff:10.0.{}.1".format, st.integers(0, 255)),
    st.text(max_size=12),  # junk: never kept, never raised on
)
SAMPLES = st.one_of(
    st.floats(min_value=1e-6, max_value=MAX_SAMPLE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 61.0, True]),
)
STEPS = st.lists(st.tuples(CLIENTS, SAMPLES, st.floats(0, 900)), max_size=120)


@given(STEPS, st.integers(1, 20))
def test_memory_is_bounded_and_values_stay_sane(
    steps: list[tuple[str, float, float]], max_networks: int
) -> None:
    clock = Clock()
    table = RttTable(max_networks=max_networks, half_life=60, forget_after=600, clock=clock)
    seen: dict[str, list[float]] = {}
    for client, sample, advance in steps:
        clock.now += advance
        kept = table.add(client, sample)
        assert kept == (
            client_network(client) is not None
            and not isinstance(sample, bool)
            and 0 < sample <= MAX_SAMPLE
        )
        if kept:
            network = client_network(client)
            assert network is not None
            seen.setdefault(network, []).append(sample)
        assert len(table) <= max_networks
    for network, rtt, samples in table.top(10_000):
        assert is_network(network)
        assert math.isfinite(rtt)
        assert rtt >= 0
        assert samples >= 1
        assert min(seen[network]) - 1e-6 <= rtt <= max(seen[network]) + 1e-6  # a mean of them


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=20), st.lists(st.floats(0, 5000)))
def test_the_count_decays_monotonically(samples: list[float], waits: list[float]) -> None:
    clock = Clock()
    table = RttTable(half_life=60, forget_after=10**9, clock=clock)
    for sample in samples:
        table.add("192.0.2.1", sample)
    before = table.get("192.0.2.0/24")
    assert before is not None
    rtt, count = before
    assert count == pytest.approx(len(samples))
    for wait in waits:
        clock.now += wait
        now = table.get("192.0.2.0/24")
        assert now is not None
        assert now[0] == rtt  # the mean does not move without samples
        assert 0 <= now[1] <= count
        count = now[1]


def test_smoothing_follows_a_change_within_half_lives() -> None:
    clock = Clock()
    table = RttTable(half_life=60, clock=clock)
    for _ in range(50):
        table.add("192.0.2.1", 0.100)
    clock.now += 300  # five half-lives: the old 50 samples weigh 50/32
    for _ in range(10):
        table.add("192.0.2.1", 0.020)
    got = table.get("192.0.2.0/24")
    assert got is not None
    assert 0.020 < got[0] < 0.035
    assert got[1] == pytest.approx(50 / 32 + 10)


def test_a_flood_of_new_networks_does_not_push_out_well_sampled_ones() -> None:
    clock = Clock()
    table = RttTable(max_networks=64, clock=clock)
    for _ in range(20):
        table.add("192.0.2.1", 0.01)
    for i in range(5000):
        clock.now += 0.01
        table.add(f"10.{i // 256 % 256}.{i % 256}.1", 0.05)
        assert len(table) <= 64
    assert table.get("192.0.2.0/24") is not None
    top = table.top(3)
    assert top[0] == ("192.0.2.0/24", 0.01, round(20 * 2 ** (-50 / 600)))  # 50 s later
    assert len(top) == 3


def test_networks_not_seen_for_a_while_are_forgotten() -> None:
    clock = Clock()
    table = RttTable(half_life=3600, forget_after=3600, clock=clock)
    table.add("192.0.2.1", 0.01)
    table.add("2001:db8:1::1", 0.02)
    clock.now += 3000
    table.add("2001:db8:1::2", 0.02)
    clock.now += 1000
    assert [network for network, _, _ in table.top(10)] == ["2001:db8:1::/48"]
    assert len(table) == 1


def test_top_rounds_and_leaves_out_what_decayed_away() -> None:
    clock = Clock()
    table = RttTable(half_life=10, forget_after=10**6, clock=clock)
    table.add("192.0.2.1", 0.0123456789)
    assert table.top(5) == [("192.0.2.0/24", 0.012346, 1)]
    clock.now += 10.1  # a count of 1 halves to just below 0.5
    assert table.top(5) == []
    assert table.top(0) == []


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"max_networks": 0}, {"half_life": 0.0}, {"forget_after": math.nan}):
        with pytest.raises(ValueError, match="must be"):
            RttTable(**kwargs)


# --- TCP_INFO -----------------------------------------------------------------------------------


def tcp_info(rtt_micros: int, size: int = 104) -> bytes:
    info = bytearray(size)
    struct.pack_into("=I", info, TCPI_RTT_OFFSET, rtt_micros)
    return bytes(info)


@given(st.binary(max_size=300))
def test_parsing_any_bytes_never_raises(info: bytes) -> None:
    rtt = parse_tcp_rtt(info)
    assert rtt is None or 0 < rtt <= MAX_SAMPLE


def test_parsing_examples() -> None:
    assert parse_tcp_rtt(tcp_info(40_000)) == 0.04
    assert parse_tcp_rtt(tcp_info(40_000, size=72)) == 0.04
    assert parse_tcp_rtt(tcp_info(40_000)[:71]) is None  # short: an old or odd kernel
    assert parse_tcp_rtt(tcp_info(0)) is None  # no estimate yet
    assert parse_tcp_rtt(tcp_info(61_000_000)) is None
    assert parse_tcp_rtt(b"") is None


def test_socket_rtt_of_real_sockets() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        client.sendall(b"ping")
        accepted.recv(4)
        accepted.sendall(b"pong")
        client.recv(4)
        rtt = socket_rtt(accepted)
        assert rtt is not None
        assert 0 < rtt < 0.2  # loopback
        client.close()
        accepted.close()
        assert socket_rtt(accepted) is None  # closed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert socket_rtt(udp) is None
    assert socket_rtt(None) is None


# --- a real switch ------------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        self.transport.close()
        return True


async def round_trips(host: str, port: int, count: int, *, source: str | None = None) -> None:
    """One connection from ``source``: ``count`` request/answer pairs, then a clean close."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, 0) if source else None), TIMEOUT
    )
    try:
        for i in range(count):
            writer.write(b"ping %d\n" % i)
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"ping %d\n" % i
    finally:
        writer.close()
        await writer.wait_closed()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {TIMEOUT}s: {what}"
        await asyncio.sleep(0.01)


async def switch_run(
    host: str, clients: Callable[[int], object], table: RttTable
) -> list[tuple[str, float, int]]:
    """A userspace switch on ``host`` before a real echo server; ``clients(port)`` makes
    the traffic; the table once every connection has ended."""
    loop = asyncio.get_running_loop()
    real = await loop.create_server(Echo, "127.0.0.1", 0)
    real_port = real.sockets[0].getsockname()[1]
    spec = ServiceSpec(
        "web", "tcp", host, 0, scheduler="rr", real=(RealSpec("127.0.0.1", real_port),)
    )
    spec = replace(spec, check=CheckSpec(kind="none"))
    plane = UserspacePlane(spec, VirtualService(spec, rtt=table))
    await plane.start()
    try:
        assert plane.address is not None
        await clients(plane.address[1])  # type: ignore[misc]
        await until(lambda: plane.connections == 0, "every proxied connection ended")
    finally:
        await plane.stop()
        real.close()
    return table.top(100)


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": request.param == "uvloop"})


@pytest.mark.anyio
async def test_a_real_switch_samples_each_client_network() -> None:
    table = RttTable()

    async def clients(port: int) -> None:
        await asyncio.gather(
            *(round_trips("127.0.0.1", port, 3, source="127.0.5.9") for _ in range(4)),
            *(round_trips("127.0.0.1", port, 3, source="127.0.6.1") for _ in range(2)),
        )

    top = await switch_run("127.0.0.1", clients, table)
    by_network = {network: (rtt, samples) for network, rtt, samples in top}
    assert set(by_network) == {"127.0.5.0/24", "127.0.6.0/24"}
    assert by_network["127.0.5.0/24"][1] == 4
    assert by_network["127.0.6.0/24"][1] == 2
    for rtt, _ in by_network.values():
        assert 0 < rtt < 0.2  # loopback: microseconds, a loaded machine allowing
    # what the dispatcher makes of it: the client's address finds its network's figures
    at = dt.datetime.now(dt.UTC)
    view = build_view([RttReport("eu", tuple(RttEntry(*entry) for entry in top), at)])
    assert view.lookup("127.0.5.200") == {"eu": by_network["127.0.5.0/24"]}
    assert view.lookup("::ffff:127.0.6.7") == {"eu": by_network["127.0.6.0/24"]}


DELAY = 0.020  # one way: the round trip is 40 ms


def test_the_sampled_rtt_is_the_links_round_trip() -> None:
    """Client and switch in two namespaces joined by a link that holds every packet 20 ms
    each way (netem's ``delay 20ms``; see :mod:`tests.farmnode.delayline`): the switch
    learns about 40 ms for the client's /24."""
    reason = unavailable_reason()
    if reason is None and not os.path.exists("/dev/net/tun"):
        reason = "/dev/net/tun is missing (the delay line needs TUN devices)"
    if reason is not None:
        skip_or_fail(reason)
    with Lab() as lab:
        client_ns, switch_ns = lab.namespace("client"), lab.namespace("switch")
        with DelayLine(client_ns, "10.213.77.2/24", switch_ns, "10.213.77.1/24", delay=DELAY):
            sockets = [client_ns.new_socket() for _ in range(3)]
            table = RttTable()

            async def clients(port: int) -> None:
                loop = asyncio.get_running_loop()
                for sock in sockets:
                    sock.setblocking(False)
                    await asyncio.wait_for(loop.sock_connect(sock, ("10.213.77.1", port)), 5)
                    reader, writer = await asyncio.open_connection(sock=sock)
                    for i in range(5):
                        writer.write(b"ping %d\n" % i)
                        assert await asyncio.wait_for(reader.readline(), 5) == b"ping %d\n" % i
                    writer.close()
                    await writer.wait_closed()

            top = switch_ns.call(lambda: asyncio.run(switch_run("10.213.77.1", clients, table)))
    print(f"learned over a 2 x {DELAY * 1000:g} ms link: {top}")
    [(network, rtt, samples)] = top
    assert (network, samples) == ("10.213.77.0/24", 3)
    assert 0.035 <= rtt <= 0.075, rtt
