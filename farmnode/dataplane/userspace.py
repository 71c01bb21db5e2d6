"""The ``userspace`` data plane: an asyncio layer-4 proxy for TCP and UDP (no root needed).

Full NAT from the client's view: the client talks to the virtual address, the real server
sees connections from this node. Every new TCP connection and every new UDP flow asks the
:class:`~farmnode.switch.service.VirtualService` where to go (scheduler, persistence,
fallback); what is established stays where it is until it ends, whatever the service's
membership, weights or health do meanwhile (so weight 0 drains: established connections go
on, new ones go elsewhere).

**TCP.** One pair of asyncio protocols per connection (transports, not streams): bytes are
written to the peer as they arrive, with flow control both ways (a transport whose write
buffer passes :data:`WRITE_HIGH` pauses reading on the other side until it drains) and
half-close (an EOF one way is passed on with ``write_eof`` and the other way stays open;
both ways closed ends the connection). An error or reset on one side closes the other at
once, dropping what it had not sent yet. As a connection ends, the kernel's smoothed RTT
of the client's socket goes to the service's RTT table, if it has one
(:meth:`VirtualService.observe_rtt`, see :mod:`farmnode.rtt`). Bytes are counted into the
service per chunk; :meth:`VirtualService.connected` is called when a server is chosen and
:meth:`VirtualService.released` exactly once when the connection ends (also when connecting
failed), so least-connection schedulers see connections being set up. ``total`` therefore
counts connection *attempts* per server.

A connect that fails or takes longer than ``spec.connect_timeout`` is retried on another
server (the failed ones excluded, each server at most once, the fallback last): a real
server that died but is not yet detected by its health checks costs the client latency,
not a failed connection. When no server is left the client's connection is closed.
Data the client sends before the real server answered is held (up to :data:`WRITE_HIGH`,
then reading pauses) and passed on, with an early EOF, once it has. With ``send_proxy``
the first bytes the real server gets are a PROXY protocol header (v1 or v2,
:mod:`dispatcher.proxyproto`) naming the client's address and port and the address it
connected to, so the real server (a dispatcher with ``proxy_protocol = true``, nginx,
HAProxy...) sees the client rather than this node.

**UDP** (:mod:`farmnode.dataplane.udpflows`). A flow is a client ``(address, port)``: its
first datagram chooses a real server, its later ones go the same way, and it ends when idle
for ``spec.udp_idle`` seconds, refused, or stale at :meth:`UserspacePlane.refresh`. At most
``max_udp_flows`` flows (default :data:`MAX_UDP_FLOWS`) are open at once.

The plane runs on the default asyncio loop and on uvloop alike.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Literal, cast

from dispatcher.proxyproto import encode, encode_unknown
from farmnode.dataplane.base import DataPlane
from farmnode.dataplane.udpflows import UdpListener
from farmnode.errors import DataplaneError
from farmnode.rtt import socket_rtt
from farmnode.spec import ServiceSpec
from farmnode.switch.schedulers import RealServer
from farmnode.switch.service import VirtualService

log = logging.getLogger("webfarm.farmnode.userspace")

PLANE = "userspace"
#: A transport whose write buffer holds more than this pauses reading on the other side.
WRITE_HIGH = 256 * 1024
#: Listen backlog of a TCP virtual service.
BACKLOG = 4096
#: Default bound of the UDP flow table (each flow holds one socket, so one file descriptor).
MAX_UDP_FLOWS = 4096
#: Seconds between checks of the established connections while :meth:`stop` drains.
DRAIN_POLL = 0.05


class UserspacePlane(DataPlane):
    """Proxies one virtual service (TCP or UDP) in this process's event loop.

    :attr:`address` is the bound ``(host, port)`` once started (useful with port 0).
    :attr:`connections` counts open TCP connections, :attr:`flows` open UDP flows.
    """

    name = PLANE

    def __init__(
        self, spec: ServiceSpec, service: VirtualService, *, max_udp_flows: int = MAX_UDP_FLOWS
    ) -> None:
        super().__init__(spec, service)
        if max_udp_flows < 1:
            raise DataplaneError(PLANE, f"service {spec.name}: max_udp_flows must be >= 1")
        self.max_udp_flows = max_udp_flows
        self.address: tuple[str, int] | None = None
        self.loop: asyncio.AbstractEventLoop  # the running loop, from start() on
        self._server: asyncio.AbstractServer | None = None
        self._links: set[_Link] = set()
        self._udp: UdpListener | None = None
        self._stopped = False

    @property
    def connections(self) -> int:
        return len(self._links)

    @property
    def flows(self) -> int:
        return len(self._udp.flows) if self._udp is not None else 0

    # -- DataPlane ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the listener; :class:`DataplaneError` (nothing left open) when it cannot."""
        if self._server is not None or self._udp is not None:
            raise DataplaneError(PLANE, f"service {self.spec.name}: already started")
        self._stopped = False
        self.loop = asyncio.get_running_loop()
        if self.spec.protocol == "tcp":
            await self._start_tcp()
        else:
            await self._start_udp()
        log.info("service %s: listening on %s %s", self.spec.name, self.spec.protocol, self.where)

    async def refresh(self) -> None:
        """New connections already ask the service each time; reschedule stale UDP flows."""
        if self._udp is not None:
            self._udp.reschedule_stale()

    async def stop(self, drain: float = 0.0) -> None:
        """Stop accepting; wait up to ``drain`` s for what is established, then cut it."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            await self._stop_tcp(drain)
        if self._udp is not None:
            await self._stop_udp(drain)
        self.address = None

    # -- TCP ------------------------------------------------------------------------------------

    async def _start_tcp(self) -> None:
        sock = self._bind(socket.SOCK_STREAM)
        try:
            self._server = await self.loop.create_server(
                lambda: _Link(self), sock=sock, backlog=BACKLOG
            )
        except OSError as exc:
            sock.close()
            self.address = None
            raise self._error("cannot listen", exc) from exc

    async def _stop_tcp(self, drain: float) -> None:
        server, self._server = self._server, None
        assert server is not None
        server.close()
        await self._wait(lambda: not self._links, drain)
        if self._links:
            log.info("service %s: cutting %d connections", self.spec.name, len(self._links))
        tasks = [link.task for link in self._links if link.task is not None]
        for link in list(self._links):
            link.close(abort=True)
        if tasks:  # connect attempts cancelled by close(): let them unwind
            await asyncio.wait(tasks, timeout=1.0)
        await asyncio.sleep(0)  # let the aborted transports finish closing

    # -- UDP ------------------------------------------------------------------------------------

    async def _start_udp(self) -> None:
        sock = self._bind(socket.SOCK_DGRAM)
        listener = UdpListener(self, self.loop)
        try:
            await self.loop.create_datagram_endpoint(lambda: listener, sock=sock)
        except OSError as exc:
            sock.close()
            self.address = None
            raise self._error("cannot listen", exc) from exc
        self._udp = listener

    async def _stop_udp(self, drain: float) -> None:
        udp = self._udp
        assert udp is not None
        udp.accepting = False
        await self._wait(lambda: not udp.flows, drain)
        udp.close()
        self._udp = None
        await asyncio.sleep(0)

    # -- helpers --------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The listening address as ``host:port`` (the bound port once started)."""
        if self.address is None:
            return self.spec.listen
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _bind(self, kind: socket.SocketKind) -> socket.socket:
        """A bound (and for TCP listening), non-blocking socket on the service's address."""
        host, port = self.spec.host, self.spec.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, kind)
        except OSError as exc:
            raise self._error("cannot create a socket", exc) from exc
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(BACKLOG)
            sock.setblocking(False)
            name = sock.getsockname()
        except OSError as exc:
            sock.close()
            raise self._error("cannot listen", exc) from exc
        self.address = (str(name[0]), int(name[1]))
        return sock

    def _error(self, what: str, exc: OSError) -> DataplaneError:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return DataplaneError(
            PLANE,
            f"service {self.spec.name}: {what} on {self.spec.protocol} {self.where}: {reason}",
        )

    @staticmethod
    async def _wait(done: Callable[[], bool], seconds: float) -> None:
        """Poll ``done`` every :data:`DRAIN_POLL` s for at most ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(seconds, 0.0)
        while not done() and loop.time() < deadline:
            await asyncio.sleep(min(DRAIN_POLL, max(deadline - loop.time(), 0.0)))


# --- TCP -----------------------------------------------------------------------------------


class _Link(asyncio.Protocol):
    """One proxied TCP connection: the client side's protocol, and the connection's state.

    Lifecycle: accepted -> connecting (a task chooses a server and connects, retrying on
    others) -> attached (bytes flow both ways) -> closed (:meth:`close`, exactly once:
    both transports closed or aborted, the server released, the plane forgets the link).
    """

    __slots__ = (
        "client",
        "client_eof",
        "closed",
        "held",
        "local",
        "peer",
        "pending",
        "plane",
        "server",
        "server_eof",
        "service",
        "task",
        "transport",
        "upstream",
    )

    def __init__(self, plane: UserspacePlane) -> None:
        self.plane = plane
        self.service = plane.service
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.server: RealServer | None = None
        self.client = ""
        self.peer: tuple[str, int] | None = None  # the client's (address, port)
        self.local: tuple[str, int] | None = None  # the address it connected to
        self.pending: list[bytes] = []
        self.held = 0
        self.client_eof = False
        self.server_eof = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    # client side ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        if self.plane.spec.send_proxy is not None:
            local = transport.get_extra_info("sockname")
            self.peer = (self.client, int(peer[1])) if peer else None
            self.local = (str(local[0]), int(local[1])) if local else None
        self.plane._links.add(self)
        self.task = self.plane.loop.create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None:  # not connected yet: hold it, and pause past one buffer's worth
            self.pending.append(data)  # (pause_reading in connection_made is ignored by some
            self.held += len(data)  # loops; pausing costs two system calls)
            if self.held >= WRITE_HIGH:
                assert self.transport is not None
                self.transport.pause_reading()
            return
        upstream.write(data)
        self.service.add_bytes(self.server, len(data), 0)  # type: ignore[arg-type]

    def eof_received(self) -> bool:
        self.client_eof = True
        upstream = self.upstream
        if upstream is not None:
            if self.server_eof:
                self.close(abort=False)
            elif not upstream.is_closing():
                upstream.write_eof()
        return True  # keep the way back open (half-close)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(abort=exc is not None)

    # connecting ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Choose a server and connect, excluding each server that failed; close if none."""
        service, loop = self.service, self.plane.loop
        exclude: list[str] = []
        while not self.closed:
            server = service.choose(self.client, exclude)
            if server is None:
                log.debug("%s: no real server for %s", self.plane.spec.name, self.client)
                self.task = None
                self.close(abort=False)
                return
            service.connected(server, self.client)
            self.server = server
            upstream = _Upstream(self)
            # a timer, not asyncio.timeout(): cheaper, and this runs once per connection
            timer = loop.call_later(service.spec.connect_timeout, upstream.time_out)
            try:
                await loop.create_connection(upstream.factory, server.host, server.port)
            except OSError as exc:
                failure: BaseException = exc
            except asyncio.CancelledError:
                if not upstream.timed_out or self.closed:
                    upstream.abandon()
                    raise
                failure = TimeoutError(f"no connection within {service.spec.connect_timeout}s")
                if self.task is not None:
                    self.task.uncancel()
            else:
                return
            finally:
                timer.cancel()
            if upstream.attached:
                return  # connected after all (the timeout raced connection_made)
            upstream.abandon()
            log.debug("%s: connect to %s failed: %r", self.plane.spec.name, server.key, failure)
            self.server = None
            service.released(server, self.client)
            exclude.append(server.key)

    def attach(self, upstream: asyncio.Transport) -> bool:
        """The real server answered: pass on what was held and let bytes flow."""
        if self.closed:
            return False
        client = self.transport
        assert client is not None
        self.upstream = upstream
        upstream.set_write_buffer_limits(high=WRITE_HIGH)
        client.set_write_buffer_limits(high=WRITE_HIGH)
        version = self.plane.spec.send_proxy
        if version is not None:
            upstream.write(self._proxy_header(version))
        if self.pending:
            upstream.writelines(self.pending)
            self.service.add_bytes(self.server, self.held, 0)  # type: ignore[arg-type]
            self.pending, self.held = [], 0
        if self.client_eof:
            upstream.write_eof()
        else:
            client.resume_reading()  # a no-op unless held data paused it
        return True

    def _proxy_header(self, version: Literal[1, 2]) -> bytes:
        """The PROXY header for this client (``UNKNOWN`` if its address cannot be told)."""
        if self.peer is not None and self.local is not None:
            try:
                return encode(version, self.peer, self.local)
            except ValueError:  # not an IP address (cannot happen on a TCP socket)
                pass
        return encode_unknown(version)

    # the end --------------------------------------------------------------------------------

    def close(self, *, abort: bool) -> None:
        """End the connection once: close (flushing) or abort both sides, release the server."""
        if self.closed:
            return
        self.closed = True
        self.plane._links.discard(self)
        if self.service.rtt is not None and self.transport is not None:  # before it closes
            rtt = socket_rtt(self.transport.get_extra_info("socket"))
            self.service.observe_rtt(self.client, rtt)
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
        for transport in (self.transport, self.upstream):
            if transport is not None:
                if abort:
                    transport.abort()
                else:
                    transport.close()
        server, self.server = self.server, None
        if server is not None:
            self.service.released(server, self.client)


class _Upstream(asyncio.Protocol):
    """The real-server side of a :class:`_Link`: passes bytes and EOF back to the client."""

    __slots__ = ("abandoned", "attached", "client", "link", "service", "timed_out", "transport")

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.service = link.service
        self.client = link.transport
        self.transport: asyncio.Transport | None = None
        self.attached = False
        self.abandoned = False
        self.timed_out = False

    def time_out(self) -> None:
        """``connect_timeout`` passed: cancel the connect attempt (unless it is through)."""
        task = self.link.task
        if not self.attached and task is not None:
            self.timed_out = True
            task.cancel()

    def factory(self) -> _Upstream:
        """The protocol factory for ``create_connection``: this very object."""
        return self

    def abandon(self) -> None:
        """The connect attempt is given up: a late connection is aborted, never attached."""
        self.abandoned = True
        if self.transport is not None and not self.attached:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        if self.abandoned or t.is_closing() or not self.link.attach(t):
            t.abort()
            return
        self.attached = True

    def data_received(self, data: bytes) -> None:
        self.client.write(data)  # type: ignore[union-attr]
        self.service.add_bytes(self.link.server, 0, len(data))  # type: ignore[arg-type]

    def eof_received(self) -> bool:
        link = self.link
        link.server_eof = True
        client = self.client
        assert client is not None
        if link.client_eof:
            link.close(abort=False)
        elif not client.is_closing():
            client.write_eof()
        return True

    def pause_writing(self) -> None:
        self.client.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.client.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.attached:
            self.link.close(abort=exc is not None)


__all__ = ["MAX_UDP_FLOWS", "WRITE_HIGH", "UserspacePlane"]
