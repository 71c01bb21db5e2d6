"""The userspace data plane, for real on loopback, on the default asyncio loop and on uvloop.

Real servers are tiny asyncio servers on 127.0.0.1 that answer with their own id; traffic
goes through the plane with httpx or raw sockets. Health is driven by the shared
:class:`dispatcher.backends.health.Prober` (TCP probes), as the daemon will do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Literal, cast

import httpx
import pytest

from dispatcher.backends.health import Health, Prober, Target
from dispatcher.proxyproto import decode
from farmnode.dataplane.userspace import UserspacePlane
from farmnode.errors import DataplaneError
from farmnode.spec import CheckSpec, PersistenceSpec, RealSpec, ServiceSpec
from farmnode.switch.schedulers import SCHEDULERS
from farmnode.switch.service import VirtualService
from tests.farmnode.realservers import IdServer
from tests.ports import free_port

pytestmark = pytest.mark.anyio

NO_CHECK = CheckSpec(kind="none")
TIMEOUT = 10.0  # generous bound of every wait in this file


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Every test runs on the default loop and on uvloop (the daemon's loop)."""
    return ("asyncio", {"use_uvloop": request.param == "uvloop"})


# --- real servers ----------------------------------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, IdServer]]:
    started = {ident: IdServer(ident) for ident in ("a", "b", "c")}
    for server in started.values():
        await server.start()
    try:
        yield started
    finally:
        for server in started.values():
            await server.kill()


class Echo(asyncio.Protocol):
    """Echoes every byte back (with flow control), and EOF after EOF."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.close()  # flushes what is left, then FIN
        return True

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class _Tracked(asyncio.Protocol):
    """Wraps a test server's protocol to remember its transport (aborted at the end)."""

    def __init__(self, inner: asyncio.Protocol, conns: set[asyncio.Transport]) -> None:
        self.inner = inner
        self.conns = conns
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conns.add(self.transport)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.conns.discard(self.transport)
        self.inner.connection_lost(exc)


@contextlib.asynccontextmanager
async def tcp_server(factory: Callable[[], asyncio.Protocol]) -> AsyncIterator[RealSpec]:
    """A real server on a free port running ``factory``'s protocol; all of it closed after."""
    loop = asyncio.get_running_loop()
    conns: set[asyncio.Transport] = set()
    server = await loop.create_server(lambda: _Tracked(factory(), conns), "127.0.0.1", 0)
    try:
        yield RealSpec("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for transport in list(conns):
            transport.abort()
        await asyncio.sleep(0)


class UdpEcho(asyncio.DatagramProtocol):
    """Answers each datagram with ``id:`` + the datagram; remembers who sent what."""

    def __init__(self, ident: str) -> None:
        self.ident = ident.encode()
        self.seen: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append(addr)
        assert self.transport is not None
        self.transport.sendto(self.ident + b":" + data, addr)


@contextlib.asynccontextmanager
async def udp_servers(*idents: str) -> AsyncIterator[list[tuple[UdpEcho, RealSpec]]]:
    loop = asyncio.get_running_loop()
    started: list[tuple[UdpEcho, RealSpec]] = []
    try:
        for ident in idents:
            transport, proto = await loop.create_datagram_endpoint(
                lambda i=ident: UdpEcho(i),  # type: ignore[misc]
                local_addr=("127.0.0.1", 0),
            )
            port = transport.get_extra_info("sockname")[1]
            started.append((proto, RealSpec("127.0.0.1", port)))
        yield started
    finally:
        for proto, _ in started:
            if proto.transport is not None:
                proto.transport.close()


# --- the plane -------------------------------------------------------------------------------


def tcp_spec(*real: RealSpec, **kwargs: object) -> ServiceSpec:
    base = ServiceSpec(
        name="web", protocol="tcp", host="127.0.0.1", port=0, scheduler="rr", real=real
    )
    return replace(base, check=NO_CHECK, **kwargs)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(spec: ServiceSpec) -> AsyncIterator[tuple[UserspacePlane, VirtualService]]:
    service = VirtualService(spec)
    plane = UserspacePlane(spec, service)
    await plane.start()
    try:
        yield plane, service
    finally:
        await plane.stop()


def url(plane: UserspacePlane) -> str:
    assert plane.address is not None
    return f"http://127.0.0.1:{plane.address[1]}/"


def fresh_client() -> httpx.AsyncClient:
    """An httpx client that opens a new connection for every request."""
    return httpx.AsyncClient(
        trust_env=False, timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def ids(plane: UserspacePlane, count: int) -> list[str]:
    async with fresh_client() as client:
        return [(await client.get(url(plane))).text for _ in range(count)]


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def health_checked(
    service: VirtualService, *, fall: int = 2, rise: int = 2
) -> AsyncIterator[dict[str, list[tuple[float, str]]]]:
    """The shared prober TCP-checks every real server; yields each server's state changes."""
    changes: dict[str, list[tuple[float, str]]] = {key: [] for key in service.servers}

    def listener(key: str, health: Health, changed: bool) -> None:
        if changed and service.set_health(key, health.state == "up"):
            changes[key].append((time.monotonic(), health.state))

    prober = Prober(listener)
    targets = [
        Target(
            key=s.key,
            url="",
            expect="",
            interval=0.05,
            timeout=0.5,
            rise=rise,
            fall=fall,
            kind="tcp",
            host=s.host,
            port=s.port,
        )
        for s in service.servers.values()
    ]
    await prober.sync(targets)
    try:
        yield changes
    finally:
        await prober.close()


# --- distribution and counters ---------------------------------------------------------------


async def test_round_robin_reaches_every_real_server_in_turn(
    servers: dict[str, IdServer],
) -> None:
    async with running(tcp_spec(*(s.real for s in servers.values()))) as (plane, service):
        answers = await ids(plane, 9)
        assert answers == ["a", "b", "c"] * 3
        await until(lambda: plane.connections == 0, "the connections to close")
        for server in service.servers.values():
            assert (server.total, server.active) == (3, 0)
            assert server.bytes_in > 0
            assert server.bytes_out == 3 * len(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
async def test_every_scheduler_serves_through_the_plane(
    servers: dict[str, IdServer], scheduler: str
) -> None:
    spec = tcp_spec(*(s.real for s in servers.values()), scheduler=scheduler)
    async with running(spec) as (plane, service):
        answers = await ids(plane, 12)
        assert set(answers) <= {"a", "b", "c"}
        await until(lambda: plane.connections == 0, "the connections to close")
        by_key = {s.real.key: s.ident for s in servers.values()}
        counted = Counter({by_key[k]: s.total for k, s in service.servers.items() if s.total})
        assert counted == Counter(answers)
        assert all(s.active == 0 for s in service.servers.values())


async def test_persistence_keeps_a_client_on_one_server(servers: dict[str, IdServer]) -> None:
    spec = tcp_spec(*(s.real for s in servers.values()), persistence=PersistenceSpec(60.0))
    async with running(spec) as (plane, _):
        assert len(set(await ids(plane, 6))) == 1


async def test_keep_alive_requests_stay_on_one_connection(servers: dict[str, IdServer]) -> None:
    async with running(tcp_spec(*(s.real for s in servers.values()))) as (plane, service):
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            answers = [(await client.get(url(plane))).text for _ in range(5)]
        assert answers == ["a"] * 5
        assert sum(s.total for s in service.servers.values()) == 1


# --- failure, health and the fallback --------------------------------------------------------


async def test_a_refused_connect_is_retried_on_another_server(
    servers: dict[str, IdServer],
) -> None:
    with socket.socket() as s:  # a port nobody listens on: connects are refused
        s.bind(("127.0.0.1", 0))
        dead = RealSpec("127.0.0.1", s.getsockname()[1])
    spec = tcp_spec(dead, servers["a"].real, servers["b"].real)
    async with running(spec) as (plane, service):
        answers = await ids(plane, 6)  # the dead server is "up": nobody checks it
        assert sorted(set(answers)) == ["a", "b"]
        await until(lambda: plane.connections == 0, "the connections to close")
        assert service.servers[dead.key].total >= 2  # attempts are counted...
        assert service.servers[dead.key].active == 0  # ...and released


async def test_a_connect_that_hangs_times_out_and_is_retried(
    servers: dict[str, IdServer],
) -> None:
    with socket.socket() as full:  # accept queue full: the kernel drops further SYNs
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        hung = RealSpec("127.0.0.1", full.getsockname()[1])
        fillers = [socket.create_connection(("127.0.0.1", hung.port), timeout=TIMEOUT)]
        try:
            spec = tcp_spec(hung, servers["a"].real, connect_timeout=0.3)
            async with running(spec) as (plane, service):
                started = time.monotonic()
                assert await ids(plane, 2) == ["a", "a"]
                assert time.monotonic() - started >= 0.3  # one attempt waited for the timeout
                assert service.servers[hung.key].active == 0
        finally:
            for filler in fillers:
                filler.close()


async def test_after_fall_checks_no_client_connection_fails(
    servers: dict[str, IdServer],
) -> None:
    spec = tcp_spec(*(s.real for s in servers.values()))
    async with running(spec) as (plane, service), health_checked(service) as changes:
        failures: list[float] = []
        answered: Counter[str] = Counter()
        killed_at = 0.0
        async with fresh_client() as client:
            for i in range(150):
                if i == 40:
                    await servers["b"].kill()
                    killed_at = time.monotonic()
                try:
                    answered[(await client.get(url(plane))).text] += 1
                except httpx.HTTPError:
                    failures.append(time.monotonic())
                await asyncio.sleep(0.005)
        down = changes[servers["b"].real.key]
        assert down, "the health checks never marked b down"
        assert down[0][1] == "down"
        assert down[0][0] >= killed_at
        assert [t for t in failures if t > down[0][0]] == []
        assert len(failures) <= 1  # refused connects are retried; at most one in flight
        assert answered["a"] > 40 and answered["c"] > 40  # noqa: PT018


async def test_the_fallback_answers_while_all_are_down_and_leaves_when_one_is_back(
    servers: dict[str, IdServer],
) -> None:
    sorry = IdServer("sorry")
    await sorry.start()
    try:
        spec = tcp_spec(*(s.real for s in servers.values()), fallback=sorry.real)
        async with running(spec) as (plane, service), health_checked(service) as changes:
            assert await ids(plane, 3) == ["a", "b", "c"]
            for server in servers.values():
                await server.kill()
            await until(lambda: all(not s.up for s in service.servers.values()), "all to be down")
            assert await ids(plane, 3) == ["sorry"] * 3
            await servers["a"].start()  # the same port again
            await until(lambda: service.servers[servers["a"].real.key].up, "a to come back")
            assert await ids(plane, 3) == ["a"] * 3
            assert [state for _, state in changes[servers["a"].real.key]] == ["down", "up"]
            assert service.fallback is not None
            assert service.fallback.total == 3
    finally:
        await sorry.kill()


async def test_with_no_server_at_all_the_client_connection_is_closed(
    servers: dict[str, IdServer],
) -> None:
    spec = replace(tcp_spec(servers["a"].real), check=CheckSpec(kind="tcp"))
    async with running(spec) as (plane, service):  # never checked: down
        assert plane.address is not None
        reader, writer = await asyncio.open_connection(*plane.address)
        try:
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        finally:
            writer.close()
        assert service.servers[servers["a"].real.key].total == 0


# --- drain ------------------------------------------------------------------------------------


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """One keep-alive request on an open connection; the answering id."""
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return (await asyncio.wait_for(reader.readexactly(length), TIMEOUT)).decode()


async def test_weight_0_drains_established_connections_go_on_new_ones_go_elsewhere(
    servers: dict[str, IdServer],
) -> None:
    a, b = servers["a"], servers["b"]
    spec = tcp_spec(a.real, b.real)
    async with running(spec) as (plane, service):
        assert plane.address is not None
        reader, writer = await asyncio.open_connection(*plane.address)
        try:
            assert await raw_get(reader, writer) == "a"
            service.reload(replace(spec, real=(replace(a.real, weight=0), b.real)))
            await plane.refresh()
            assert await ids(plane, 4) == ["b"] * 4
            assert await raw_get(reader, writer) == "a"  # still the same connection to a
            assert service.servers[a.real.key].active == 1
            assert a.accepted == 1
        finally:
            writer.close()
            await writer.wait_closed()
        await until(lambda: service.servers[a.real.key].active == 0, "a to be released")


async def test_stop_waits_for_established_connections_within_the_drain_time(
    servers: dict[str, IdServer],
) -> None:
    async with running(tcp_spec(servers["a"].real)) as (plane, service):
        assert plane.address is not None
        address = plane.address
        reader, writer = await asyncio.open_connection(*address)
        assert await raw_get(reader, writer) == "a"
        stopping = asyncio.create_task(plane.stop(drain=TIMEOUT))
        await asyncio.sleep(0.1)  # stop() has closed the listener and is waiting
        assert not stopping.done()
        with pytest.raises(OSError):  # the listener is closed at once
            await asyncio.open_connection(*address)
        assert await raw_get(reader, writer) == "a"  # the established one still works
        writer.close()
        await writer.wait_closed()
        started = time.monotonic()
        await asyncio.wait_for(stopping, TIMEOUT)
        assert time.monotonic() - started < TIMEOUT / 2  # returned when it closed, not later
        assert service.servers[servers["a"].real.key].active == 0


async def test_stop_cuts_what_outlives_the_drain_time(servers: dict[str, IdServer]) -> None:
    async with running(tcp_spec(servers["a"].real)) as (plane, service):
        assert plane.address is not None
        reader, writer = await asyncio.open_connection(*plane.address)
        try:
            assert await raw_get(reader, writer) == "a"
            await plane.stop(drain=0.2)
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            assert plane.connections == 0
            assert service.servers[servers["a"].real.key].active == 0
            await plane.stop(drain=1.0)  # twice is harmless
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --- byte streams -----------------------------------------------------------------------------


async def test_twenty_megabytes_cross_both_ways_intact() -> None:
    payload = os.urandom(20 * 1024 * 1024)
    async with tcp_server(Echo) as echo, running(tcp_spec(echo)) as (plane, service):
        assert plane.address is not None
        reader, writer = await asyncio.open_connection(*plane.address)

        async def send() -> None:
            view = memoryview(payload)
            for offset in range(0, len(payload), 1 << 20):
                writer.write(view[offset : offset + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.read(-1), 60)
        await sender
        writer.close()
        await writer.wait_closed()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        await until(lambda: plane.connections == 0, "the connection to close")
        server = service.servers[echo.key]
        assert (server.bytes_in, server.bytes_out) == (len(payload), len(payload))
        assert (server.total, server.active) == (1, 0)


class _ReadAllThenCount(asyncio.Protocol):
    """Reads until the client's EOF, then answers how many bytes and their hash, and closes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)

    def eof_received(self) -> bool:
        self.transport.write(b"%d %s" % (self.count, self.digest.hexdigest().encode()))
        self.transport.close()
        return True


async def test_client_half_close_keeps_the_way_back_open() -> None:
    data = os.urandom(300_000)
    async with tcp_server(_ReadAllThenCount) as real, running(tcp_spec(real)) as (plane, _):
        assert plane.address is not None
        reader, writer = await asyncio.open_connection(*plane.address)
        writer.write(data)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
        assert answer == b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())


class _BannerThenListen(asyncio.Protocol):
    """Sends a banner and its EOF at once, then reads what the client sends until EOF."""

    received: list[bytes]

    def __init__(self, got: asyncio.Future[bytes]) -> None:
        self.got = got
        self.received = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.write(b"banner")
        t.write_eof()
        self.transport = t

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def eof_received(self) -> bool:
        if not self.got.done():
            self.got.set_result(b"".join(self.received))
        self.transport.close()
        return True


async def test_server_half_close_keeps_the_way_in_open() -> None:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    async with (
        tcp_server(lambda: _BannerThenListen(got)) as real,
        running(tcp_spec(real)) as (plane, service),
    ):
        assert plane.address is not None
        reader, writer = await asyncio.open_connection(*plane.address)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"banner"  # then EOF
        writer.write(b"after the server's EOF")
        writer.write_eof()
        assert await asyncio.wait_for(got, TIMEOUT) == b"after the server's EOF"
        writer.close()
        await writer.wait_closed()
        await until(lambda: plane.connections == 0, "both ways to close")
        assert service.servers[real.key].active == 0


async def test_a_client_reset_closes_the_server_side_and_releases(
    servers: dict[str, IdServer],
) -> None:
    async with running(tcp_spec(servers["a"].real)) as (plane, service):
        assert plane.address is not None
        reader, writer = await asyncio.open_connection(*plane.address)
        assert await raw_get(reader, writer) == "a"
        assert len(servers["a"].conns) == 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closing with a zero linger time sends a reset
        await until(lambda: not servers["a"].conns, "the server side to go")
        await until(lambda: plane.connections == 0, "the plane to forget it")
        assert service.servers[servers["a"].real.key].active == 0


# --- UDP ---------------------------------------------------------------------------------------


def udp_spec(*real: RealSpec, **kwargs: object) -> ServiceSpec:
    base = ServiceSpec(
        name="dns", protocol="udp", host="127.0.0.1", port=0, scheduler="rr", real=real
    )
    return replace(base, check=NO_CHECK, **kwargs)  # type: ignore[arg-type]


class UdpClient(asyncio.DatagramProtocol):
    """A client socket of its own (its own flow), with the datagrams it got and from where."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait((data, addr))


@contextlib.asynccontextmanager
async def udp_clients(count: int) -> AsyncIterator[list[UdpClient]]:
    loop = asyncio.get_running_loop()
    clients: list[UdpClient] = []
    try:
        for _ in range(count):
            _, client = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
            clients.append(client)
        yield clients
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()


async def exchange(client: UdpClient, plane: UserspacePlane, data: bytes) -> bytes:
    """Send one datagram to the plane; the reply (which must come from the plane's address)."""
    assert plane.address is not None
    assert client.transport is not None
    client.transport.sendto(data, plane.address)
    reply, source = await asyncio.wait_for(client.replies.get(), TIMEOUT)
    assert source == plane.address
    return reply


async def test_udp_flows_stick_to_one_server_and_idle_out() -> None:
    async with udp_servers("x", "y") as echoes:
        spec = udp_spec(*(real for _, real in echoes), udp_idle=0.3)
        async with running(spec) as (plane, service):
            async with udp_clients(2) as (one, two):
                first = [await exchange(one, plane, b"%d" % i) for i in range(5)]
                second = [await exchange(two, plane, b"%d" % i) for i in range(5)]
                assert first == [b"x:%d" % i for i in range(5)]
                assert second == [b"y:%d" % i for i in range(5)]
                assert plane.flows == 2
                assert all(s.active == 1 for s in service.servers.values())
                await until(lambda: plane.flows == 0, "the flows to idle out")
                assert all(s.active == 0 for s in service.servers.values())
                assert await exchange(one, plane, b"again") == b"x:again"  # a new flow
            x = service.servers[echoes[0][1].key]
            assert (x.total, x.bytes_in, x.bytes_out) == (2, 10, 5 * len(b"x:0") + len(b"x:again"))


async def test_udp_flows_of_a_failed_server_move_at_once() -> None:
    async with udp_servers("x", "y") as echoes:
        spec = udp_spec(*(real for _, real in echoes))
        async with running(spec) as (plane, service), udp_clients(1) as (client,):
            assert await exchange(client, plane, b"1") == b"x:1"
            service.set_health(echoes[0][1].key, False)
            await plane.refresh()
            assert await exchange(client, plane, b"2") == b"y:2"


async def test_udp_quiescent_server_keeps_its_flows() -> None:
    async with udp_servers("x", "y") as echoes:
        spec = udp_spec(*(real for _, real in echoes))
        async with running(spec) as (plane, service), udp_clients(2) as (one, two):
            assert await exchange(one, plane, b"1") == b"x:1"
            x, y = (real for _, real in echoes)
            service.reload(replace(spec, real=(replace(x, weight=0), y)))
            await plane.refresh()
            assert await exchange(one, plane, b"2") == b"x:2"
            assert await exchange(two, plane, b"3") == b"y:3"


async def test_udp_flow_table_is_bounded() -> None:
    async with udp_servers("x") as echoes:
        spec = udp_spec(echoes[0][1])
        service = VirtualService(spec)
        plane = UserspacePlane(spec, service, max_udp_flows=3)
        await plane.start()
        try:
            async with udp_clients(5) as clients:
                for client in clients:
                    assert await exchange(client, plane, b"hi") == b"x:hi"
                assert plane.flows == 3
                assert service.servers[echoes[0][1].key].active == 3
                assert service.servers[echoes[0][1].key].total == 5
        finally:
            await plane.stop()
        assert service.servers[echoes[0][1].key].active == 0


# --- send_proxy --------------------------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """Keeps every byte of each connection; answers ``ok`` at the client's EOF."""

    def __init__(self, received: list[bytearray]) -> None:
        self.data = bytearray()
        received.append(self.data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.transport.write(b"ok")
        self.transport.close()
        return True


@pytest.mark.parametrize("version", [1, 2])
async def test_send_proxy_names_the_client_before_its_bytes(version: Literal[1, 2]) -> None:
    """The real server reads a PROXY header with the client's own address (a distinct
    loopback address here) and port, then exactly the client's bytes, on every connection,
    also after a failed connect to another server."""
    received: list[bytearray] = []
    dead = RealSpec("127.0.0.1", free_port())
    async with tcp_server(lambda: Recorder(received)) as real:
        spec = tcp_spec(dead, real, send_proxy=version)
        async with running(spec) as (plane, _):
            assert plane.address is not None
            vip = plane.address
            clients = []
            for _ in range(2):  # round robin: one of them tries the dead server first
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", plane.address[1], local_addr=("127.0.0.23", 0)
                )
                writer.write(b"GET / HTTP/1.0\r\n\r\n")  # before the server is connected
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"ok"
                clients.append(writer.get_extra_info("sockname"))
                writer.close()
    assert len(received) == 2
    for data, (host, port) in zip(received, clients, strict=True):
        header = decode(bytes(data))
        assert header is not None
        assert header.version == version
        assert header.source == (host, port) == ("127.0.0.23", port)
        assert header.destination == vip
        assert bytes(data[header.length :]) == b"GET / HTTP/1.0\r\n\r\n"


async def test_without_send_proxy_the_bytes_are_the_clients_alone() -> None:
    received: list[bytearray] = []
    async with (
        tcp_server(lambda: Recorder(received)) as real,
        running(tcp_spec(real)) as (plane, _),
    ):
        assert plane.address is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", plane.address[1])
        writer.write(b"hello")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"ok"
        writer.close()
    assert received == [bytearray(b"hello")]


# --- errors ------------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
async def test_a_busy_address_is_a_dataplane_error_leaving_nothing_open(
    protocol: Literal["tcp", "udp"],
) -> None:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if protocol == "tcp":
            busy.listen()
        port = busy.getsockname()[1]
        spec = replace(tcp_spec(RealSpec("127.0.0.1", 9)), protocol=protocol, port=port)
        plane = UserspacePlane(spec, VirtualService(spec))
        before = open_fds()
        with pytest.raises(DataplaneError) as caught:
            await plane.start()
        assert open_fds() == before
        assert f"{protocol} 127.0.0.1:{port}" in str(caught.value)
        assert "Address already in use" in str(caught.value)
        assert caught.value.plane == "userspace"
        assert plane.address is None
        await plane.stop()
