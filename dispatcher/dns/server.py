"""The DNS front's sockets in one process: UDP and TCP on every ``[dns] listen`` address.

API (what the worker processes and the one-process runner call)::

    front = DnsFront(service, [bind_pair("127.0.0.1:5353", reuseport=True)])
    await front.start()
    front.ports          # the bound ports, one per address (UDP and TCP share it)
    await front.stop()   # stop accepting; open TCP connections get their answers, then close

UDP: read and answered in bounded batches by :mod:`dispatcher.dns.udp` (``recvmmsg`` and
``sendmmsg`` on Linux); an answer the kernel will not take now is dropped (counted
``udp_backlog``), never queued. IPv4-mapped IPv6 clients (a dual-stack ``[::]`` listener)
are seen as the IPv4 address they are.

TCP (RFC 7766): two-byte length-prefixed messages, pipelined queries answered in order.
Per connection: a query larger than ``tcp_max_message`` closes it; after
``tcp_max_queries`` answers it is closed (once they are written); idle for
``tcp_idle_timeout`` (no query, and no answer taken by the peer) it is closed. A peer that
does not read: beyond ``tcp_write_buffer`` bytes of unsent answers the connection stops
reading queries until the peer catches up (what it holds meanwhile: those answers, and
the queries of the one read that was under way, at most 256 KiB), and the idle timeout
ends it if it never does.
At ``tcp_max_connections`` a new connection first makes room by closing the connection
idle the longest (as the HTTP edge does with idle keep-alive connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

from dispatcher.addresses import bind, parse_address
from dispatcher.dns.config import DnsConfig
from dispatcher.dns.service import DnsService
from dispatcher.dns.udp import UdpReader, udp_reader
from dispatcher.errors import ListenError

log = logging.getLogger("webfarm.dns")

LENGTH = struct.Struct("!H")
#: Attempts at finding a port free for both UDP and TCP when port 0 is configured.
PORT_ATTEMPTS = 32

SocketPair = tuple[socket.socket, socket.socket]


def bind_udp(host: str, port: int, *, reuseport: bool) -> socket.socket:
    """A UDP socket bound to ``host:port`` (non-blocking)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"udp {host}:{port}", exc.strerror or str(exc)) from None
    sock.setblocking(False)
    return sock


def bind_pair(address: str, *, reuseport: bool, listen: bool = True) -> SocketPair:
    """TCP and UDP sockets on one ``host:port`` (port 0: one port free for both)."""
    host, port = parse_address(address)
    shown = f"[{host}]" if ":" in host else host
    for _ in range(PORT_ATTEMPTS):
        tcp = bind(f"{shown}:{port}", reuseport=reuseport, listen=listen)
        picked = int(tcp.getsockname()[1])
        try:
            udp = bind_udp(host, picked, reuseport=reuseport)
        except ListenError:
            tcp.close()
            if port:
                raise
            continue
        return tcp, udp
    raise ListenError(address, "no port free for both UDP and TCP")


def client_host(peer: Any) -> str:
    """The client's address from a socket peer tuple (IPv4-mapped IPv6 unmapped)."""
    host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class _Tcp(asyncio.Protocol):
    """One TCP connection (see the module)."""

    def __init__(self, front: DnsFront) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.answered = 0
        self.paused = False
        self.closing = False
        self.last = front.now()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's is not one)
        self.peer = client_host(transport.get_extra_info("peername"))
        self.front.service.counts["tcp_connections"] += 1  # (metrics)
        settings = self.front.settings()
        transport.set_write_buffer_limits(high=settings.tcp_write_buffer)
        self.front.admit(self, settings.tcp_max_connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.pop(self, None)

    def data_received(self, data: bytes) -> None:
        self.last = self.front.now()
        self.buffer += data
        self._answer()

    def _answer(self) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        settings = self.front.settings()
        buffer = self.buffer
        while len(buffer) >= 2 and not self.paused and not self.closing:
            (size,) = LENGTH.unpack_from(buffer)
            if size > settings.tcp_max_message:
                self.front.service.counts["tcp_too_large"] += 1
                self.abort()
                return
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            response = self.front.service.answer_tcp(message, self.peer)
            if response is None:
                self.abort()
                return
            transport.write(LENGTH.pack(len(response)) + response)
            self.answered += 1
            if self.answered >= settings.tcp_max_queries:
                self.front.service.counts["tcp_query_limit"] += 1
                self.closing = True
                transport.close()  # after what is written has gone
                return
        if len(buffer) > 2 + settings.tcp_max_message:  # (only while paused)
            transport.pause_reading()

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.last = self.front.now()
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self._answer()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
        self.front.connections.pop(self, None)


class DnsFront:
    """UDP and TCP on each socket pair, served by ``service``, in this process."""

    def __init__(
        self,
        service: DnsService,
        pairs: Sequence[SocketPair],
        reader: Callable[[DnsService, socket.socket], UdpReader] = udp_reader,
    ) -> None:
        self.service = service
        self.pairs = list(pairs)
        self.reader = reader
        self.connections: dict[_Tcp, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: list[socket.socket] = []
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def ports(self) -> list[int]:
        return [int(tcp.getsockname()[1]) for tcp, _ in self.pairs]

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def settings(self) -> DnsConfig:
        """The limits in force: the running configuration's (a reload changes them)."""
        table = self.service.table()
        if table is not None:
            return table.config
        config = self.service.source.config.dns
        assert config is not None  # a front is only started with [dns] configured
        return config

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for tcp, udp in self.pairs:
            loop.add_reader(udp.fileno(), self.reader(self.service, udp).readable)
            self._udp.append(udp)
            self._servers.append(
                await loop.create_server(lambda: _Tcp(self), sock=tcp, backlog=1024)
            )
        self._sweeper = asyncio.create_task(self._sweep(), name="dns tcp sweeper")

    async def stop(self) -> None:
        """Stop accepting; what is written to open connections goes out, then they close."""
        for server in self._servers:
            server.close()
        if self._loop is not None:
            for udp in self._udp:
                self._loop.remove_reader(udp.fileno())
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for tcp, udp in self.pairs:
            tcp.close()
            udp.close()

    def admit(self, conn: _Tcp, limit: int) -> None:
        """Take ``conn``; at ``limit`` open ones, first close the one idle the longest."""
        if len(self.connections) >= limit:
            idlest = min(self.connections, key=lambda c: c.last)
            self.service.counts["tcp_evicted"] += 1
            idlest.abort()
        self.connections[conn] = None

    async def _sweep(self) -> None:
        """Close connections idle for longer than ``tcp_idle_timeout``."""
        while True:
            timeout = self.settings().tcp_idle_timeout
            await asyncio.sleep(min(1.0, timeout / 4))
            oldest = self.now() - timeout
            for conn in [c for c in self.connections if c.last <= oldest]:
                self.service.counts["tcp_idle_closed"] += 1
                conn.abort()
