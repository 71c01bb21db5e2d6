"""The UDP side of the ``userspace`` data plane: the listening socket and its flow table.

A flow is a client ``(address, port)``. Its first datagram chooses a real server and opens
a connected UDP socket to it; the flow's later datagrams go the same way and the server's
replies are sent back to the client from the listening socket. A flow ends after
``spec.udp_idle`` seconds without a datagram either way, when the real server refuses (ICMP
port unreachable), or when :meth:`~farmnode.dataplane.userspace.UserspacePlane.refresh`
finds its server down, removed, or (for the fallback) no longer needed — unlike TCP, a UDP
flow has no state to lose, so it is rescheduled at once (IPVS's ``expire_nodest_conn``). A
quiescent server keeps its flows. The flow table is bounded: at most ``max_udp_flows``
flows (default :data:`~farmnode.dataplane.userspace.MAX_UDP_FLOWS`, each holds one socket);
when full, the least recently active flow is closed to make room.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import TYPE_CHECKING, cast

from farmnode.switch.schedulers import RealServer

if TYPE_CHECKING:
    from farmnode.dataplane.userspace import UserspacePlane

log = logging.getLogger("webfarm.farmnode.userspace")

#: Largest datagram read from a real server.
MAX_DATAGRAM = 65535
#: Replies read from one flow's socket per readiness callback (fairness between flows).
UDP_BURST = 32


class _Flow:
    """One client ``(address, port)`` and its connected socket to the chosen real server."""

    __slots__ = ("addr", "client", "last", "server", "sock")

    def __init__(
        self, addr: tuple[str, int], server: RealServer, sock: socket.socket, now: float
    ) -> None:
        self.addr = addr
        self.client = str(addr[0])
        self.server = server
        self.sock = sock
        self.last = now


class UdpListener(asyncio.DatagramProtocol):
    """The virtual service's UDP socket and its flow table (least recently active first)."""

    def __init__(self, plane: UserspacePlane, loop: asyncio.AbstractEventLoop) -> None:
        self.plane = plane
        self.service = plane.service
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: collections.OrderedDict[tuple[str, int], _Flow] = collections.OrderedDict()
        self.accepting = True
        self.paused = False
        self.sweeper: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._schedule_sweep()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self._open(addr)
            if flow is None:
                return
        else:
            self.flows.move_to_end(addr)
        flow.last = self.loop.time()
        try:
            flow.sock.send(data)
        except BlockingIOError:
            return  # the socket buffer is full: drop, as a router would
        except OSError as exc:  # refused (an earlier ICMP), unreachable...
            log.debug("%s: flow %s -> %s: %r", self.plane.spec.name, addr, flow.server.key, exc)
            self._close_flow(flow)
            return
        self.service.add_bytes(flow.server, len(data), 0)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: listener error: %r", self.plane.spec.name, exc)

    # flows ---------------------------------------------------------------------------------

    def _open(self, addr: tuple[str, int]) -> _Flow | None:
        """A new flow for ``addr`` (evicting the stalest when full), or ``None``."""
        if not self.accepting:
            return None
        if len(self.flows) >= self.plane.max_udp_flows:
            self._close_flow(next(iter(self.flows.values())))
        service, client = self.service, str(addr[0])
        exclude: list[str] = []
        while True:
            server = service.choose(client, exclude)
            if server is None:
                log.debug("%s: no real server for %s", self.plane.spec.name, addr)
                return None
            try:
                sock = _connected_udp(server)
            except OSError as exc:
                log.debug("%s: udp to %s: %r", self.plane.spec.name, server.key, exc)
                exclude.append(server.key)
                continue
            break
        service.connected(server, client)
        flow = _Flow(addr, server, sock, self.loop.time())
        self.flows[addr] = flow
        self.loop.add_reader(sock.fileno(), self._replies, flow)
        return flow

    def _replies(self, flow: _Flow) -> None:
        """Relay what the real server sent back to the client, from the listening socket."""
        transport = self.transport
        for _ in range(UDP_BURST):
            try:
                data = flow.sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                log.debug("%s: flow %s: %r", self.plane.spec.name, flow.addr, exc)
                self._close_flow(flow)
                return
            if transport is None or self.paused:
                continue  # the listening socket's send queue is full: drop
            transport.sendto(data, flow.addr)
            self.service.add_bytes(flow.server, 0, len(data))
        flow.last = self.loop.time()
        if self.flows.get(flow.addr) is flow:
            self.flows.move_to_end(flow.addr)

    def _close_flow(self, flow: _Flow) -> None:
        if self.flows.get(flow.addr) is not flow:
            return
        del self.flows[flow.addr]
        self.loop.remove_reader(flow.sock.fileno())
        flow.sock.close()
        self.service.released(flow.server, flow.client)

    def reschedule_stale(self) -> None:
        """Close flows whose server is down or gone, and fallback flows no longer needed."""
        service = self.service
        servers, fallback = service.servers, service.fallback
        fallback_needed = any(s is fallback for s in service.eligible())
        for flow in list(self.flows.values()):
            server = flow.server
            if server is fallback:
                stale = not fallback_needed
            else:
                stale = not server.up or servers.get(server.key) is not server
            if stale:
                self._close_flow(flow)

    # idle timeout ----------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        idle = self.service.spec.udp_idle
        period = min(max(idle / 4, 0.05), 5.0)
        self.sweeper = self.loop.call_later(period, self._sweep)

    def _sweep(self) -> None:
        """Close flows idle for ``udp_idle`` s (the oldest are first in the table)."""
        deadline = self.loop.time() - self.service.spec.udp_idle
        while self.flows:
            flow = next(iter(self.flows.values()))
            if flow.last > deadline:
                break
            self._close_flow(flow)
        self._schedule_sweep()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for flow in list(self.flows.values()):
            self._close_flow(flow)
        if self.transport is not None:
            self.transport.close()


def _connected_udp(server: RealServer) -> socket.socket:
    """A non-blocking UDP socket connected to ``server`` (no packet is sent by connecting)."""
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((server.host, server.port))
    except OSError:
        sock.close()
        raise
    return sock


__all__ = ["MAX_DATAGRAM", "UDP_BURST", "UdpListener"]
