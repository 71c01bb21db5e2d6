"""The workers' public listener: :class:`PublicEdge` serves :mod:`dispatcher.http1` on one
listening socket, enforces the connection limit and the deadlines, and stops gracefully.

API (what the worker processes call)::

    edge = PublicEdge.for_settings(core, sock, settings)   # or PublicEdge(core, sock, ...)
    await edge.start()      # raises the soft RLIMIT_NOFILE to the hard one, starts serving
    edge.port               # the bound port
    edge.open_connections   # open connections (TLS handshakes under way included)
    edge.configure(core, settings)  # a reload: the new core, limits, trusted proxies
    await edge.stop()       # stop accepting; idle ones close now, busy ones after their
                            # answer; whatever is left after graceful_timeout is aborted

With ``trusted_proxies`` set, the core is called behind
:class:`~dispatcher.clientaddr.ForwardedFront` (the client the trusted proxies name); with
``proxy_protocol`` on, connections are :class:`~dispatcher.proxied.ProxiedConnection` (a
PROXY header first). Without either, nothing stands between a connection and the core.

``sock`` is a bound, listening, non-blocking TCP socket (``dispatcher.server.bind``; a
worker binds with ``SO_REUSEPORT``). The edge owns it from ``start`` and closes it in
``stop``.

At ``max_connections``, a new connection first makes room: the connections that have waited
longest for a request head (idle keep-alive ones, and heads sent half-way) are dropped, a
sixty-fourth of the limit at a time, the way nginx reuses its idle connections; only when
every open connection is busy is the new one answered 503 at once and closed.

With TLS, a connection counts from its accept: until its handshake is done it is a
:class:`~dispatcher.tlsaccept.Handshake` (in ``handshakes``), waiting like an idle
connection, shed first when it has waited longest, and closed with no answer when every
open connection is busy (there is no TLS yet to answer 503 in).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import resource
import socket
import ssl
import time
from email.utils import formatdate
from typing import TYPE_CHECKING

from dispatcher.clientaddr import TrustedProxies, front, trusted_proxies
from dispatcher.http1 import LINGER, Decider, EdgeLimits, HttpConnection
from dispatcher.opsconfig import listener_tls
from dispatcher.proxied import ProxiedConnection, ProxyRefusals
from dispatcher.tlsaccept import Handshake, TlsAccepter
from dispatcher.tlsfiles import ReloadableTls

if TYPE_CHECKING:
    from dispatcher.config import DispatcherSettings

log = logging.getLogger("webfarm.edge")

#: The sweeper's longest period (seconds); shorter when a timeout is shorter.
SWEEP = 0.5
#: At most one warning per this many seconds about connections refused at the limit.
REFUSED_LOG_INTERVAL = 10.0


class PublicEdge:
    """One public HTTP/1.1 listener on one socket, in one process."""

    def __init__(
        self,
        core: Decider,
        sock: socket.socket,
        *,
        limits: EdgeLimits | None = None,
        access_log: bool = False,
        proxy_protocol: bool = False,
        trusted: TrustedProxies | None = None,
        tls: ReloadableTls | None = None,
    ) -> None:
        self.core = core
        self.tls = tls
        self.scheme = "http" if tls is None else "https"  # (a connection's scope, once)
        self.socket = sock
        self.limits = limits or EdgeLimits()
        self.access_log = access_log
        self.connections: dict[HttpConnection, None] = {}
        self.handshakes: dict[Handshake, None] = {}
        """TLS connections accepted whose handshake is under way (they count against
        ``max_connections`` too)."""
        self.stopping = False
        self.now = 0.0
        self.date = self.date_end = b""
        self._second = -1
        self._refused = 0
        self.refused_total = 0
        """Connections answered 503 at ``max_connections`` (for metrics; never reset)."""
        self.shed_total = 0
        """Idle connections closed to make room for new ones (for metrics; never reset)."""
        self._refused_logged = -REFUSED_LOG_INTERVAL
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.proxy_protocol = proxy_protocol
        self.trusted = trusted  # (read by ProxiedConnection; may change on a reload)
        self.proxy_refusals = ProxyRefusals()
        self._tick = min(SWEEP, self.limits.head_timeout / 4, self.limits.keep_alive_timeout / 4)
        #: No connection whose wait began after now - this is late (the shortest limit).
        self._shortest = min(self.limits.head_timeout, self.limits.keep_alive_timeout, LINGER)

    @classmethod
    def for_settings(
        cls, core: Decider, sock: socket.socket, settings: DispatcherSettings
    ) -> PublicEdge:
        """The edge the settings describe, in front of ``core``."""
        return cls(
            front(core, settings),
            sock,
            limits=EdgeLimits.from_settings(settings),
            access_log=settings.access_log,
            proxy_protocol=settings.proxy_protocol,
            trusted=trusted_proxies(settings.trusted_proxies),
            tls=_tls(settings),
        )

    def configure(self, core: Decider, settings: DispatcherSettings) -> None:
        """A reload: the new core and what applies at once (the limits a graceful stop
        reads, the trusted proxies); ``proxy_protocol`` and the socket need a restart."""
        self.core = front(core, settings)
        self.limits = EdgeLimits.from_settings(settings)
        self._shortest = min(self.limits.head_timeout, self.limits.keep_alive_timeout, LINGER)
        self.trusted = trusted_proxies(settings.trusted_proxies)
        self.reload_tls(settings)

    def reload_tls(self, settings: DispatcherSettings) -> None:
        """Load the certificate again into the running context (new handshakes use it);
        a bad one is logged and the old one kept. Turning TLS on or off needs a restart."""
        files = listener_tls(settings, "public")
        if self.tls is not None and files is not None:
            self.tls.reload(files)

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections open, TLS handshakes under way included."""
        return len(self.connections) + len(self.handshakes)

    async def start(self) -> None:
        raise_nofile()
        loop = asyncio.get_running_loop()
        self._clock(loop)
        kind = ProxiedConnection if self.proxy_protocol else HttpConnection
        if self.tls is None:
            self._server = await loop.create_server(
                lambda: kind(self), sock=self.socket, backlog=4096
            )
        else:  # counted from the accept; the handshake bounded by head_timeout
            self._server = TlsAccepter(self.socket, self, backlog=4096)
            await self._server.start_serving()
        self._sweeper = asyncio.create_task(self._sweep(loop), name="public edge sweeper")

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), close the socket."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
            if isinstance(self._server, TlsAccepter):  # (the handshakes under way end)
                await self._server.wait_closed()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + self.limits.graceful_timeout
        while time.monotonic() < deadline and any(c.busy() for c in self.connections):
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.socket.close()

    def make_room(self) -> bool:
        """Drop the connections that have waited longest for a head; False if none waits."""
        waiting: list[HttpConnection | Handshake] = [c for c in self.connections if c.waiting()]
        waiting += self.handshakes  # (a handshake waits for its client)
        limit = self.limits.max_connections
        if not waiting or self.open_connections - len(waiting) >= limit:
            self._refused += 1
            self.refused_total += 1
            if self.now >= self._refused_logged + REFUSED_LOG_INTERVAL:  # one line, a count
                log.warning(
                    "public edge: %d connections open and busy: %d new ones refused",
                    self.open_connections,
                    self._refused,
                )
                self._refused, self._refused_logged = 0, self.now
            return False
        for conn in heapq.nsmallest(max(1, limit // 64), waiting, key=lambda c: c.since):
            self.shed_total += 1
            conn.abort()  # (leaves the connections, or the handshakes, at once)
        return self.open_connections < limit

    # --- TLS: the host of the handshakes (dispatcher.tlsaccept) ----------------------------

    @property
    def tls_context(self) -> ssl.SSLContext:
        assert self.tls is not None  # (handshakes only on a TLS listener)
        return self.tls.context

    @property
    def handshake_timeout(self) -> float:
        return self.limits.head_timeout

    def admit(self, handshake: Handshake) -> bool:
        """Count a TLS connection from its accept, as a new plain one is counted (making
        room at the limit); False: stopping, or every open connection busy."""
        if self.stopping or (
            self.open_connections >= self.limits.max_connections and not self.make_room()
        ):
            return False
        self.handshakes[handshake] = None
        return True

    def release(self, handshake: Handshake) -> None:
        self.handshakes.pop(handshake, None)

    def protocol(self) -> HttpConnection:
        """The connection a finished handshake hands its TLS transport to."""
        return ProxiedConnection(self) if self.proxy_protocol else HttpConnection(self)

    def _clock(self, loop: asyncio.AbstractEventLoop) -> None:
        """The cached clock the connections read (``now``) and the ``Date`` header."""
        self.now = loop.time()
        second = int(time.time())
        if second != self._second:
            self._second = second
            self.date = b"date: " + formatdate(second, usegmt=True).encode("ascii") + b"\r\n"
            self.date_end = self.date + b"\r\n"

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Keep the clock, and close the connections that waited too long."""
        while True:
            await asyncio.sleep(self._tick)
            self._clock(loop)
            now = self.now
            cut = now - self._shortest
            late = [c for c in self.connections if c.since <= cut and c.late(now)]
            for conn in late:
                conn.expire()
            cut = now - self.limits.head_timeout
            for handshake in [h for h in self.handshakes if h.since <= cut]:
                handshake.abort()  # (start_tls's own bound too, but at the same clock)


def _tls(settings: DispatcherSettings) -> ReloadableTls | None:
    files = listener_tls(settings, "public")
    return None if files is None else ReloadableTls(files)


def raise_nofile() -> None:
    """Raise this process's soft limit on open files to its hard limit (each connection is
    a file descriptor; the default soft limit is often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
