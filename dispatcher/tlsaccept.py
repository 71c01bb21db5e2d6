"""TLS listeners whose connections count from the accept, so that a limit sees handshakes.

asyncio and uvloop call a TLS listener's protocol factory at the accept, but the protocol's
``connection_made`` only once the handshake is done, and give nobody a handle on the
connection before: a client that opens connections and never sends a ClientHello holds
each one, unseen by any connection limit, until the handshake timeout. So a TLS listener
here accepts by itself (:class:`TlsAccepter`), and every accepted connection is a
:class:`Handshake` until its handshake is done:

1. at the accept the :class:`HandshakeHost` admits it: counted from now on (the host may
   first shed the connections that have waited longest, handshakes among them), or
   refuses it: closed at once, nothing sent;
2. the event loop runs the handshake (``connect_accepted_socket`` with the host's context,
   bounded by its timeout), with the handshake as the application protocol;
3. when the handshake is done the loop calls its ``connection_made``: it leaves the host's
   count and hands the TLS transport to the protocol the host makes (``set_protocol``, then
   that protocol's ``connection_made``), which from then on gets every event directly, as
   under ``ssl=`` (no layer in between, no cost per request).

:meth:`Handshake.abort` ends one under way (shed, late, or the listener stops) by shutting
its socket down: the loop sees the end and the handshake fails.

:class:`HandshakeGate` is the host for a listener without a connection limit of its own
(uvicorn's: the admin listener, farmnode's status listener): at most ``limit`` handshakes at
once, the oldest shed for a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from dispatcher.throttle import Throttle

log = logging.getLogger("webfarm.tls")

#: Connections accepted per wake-up of the listening socket.
ACCEPT_BATCH = 64
#: Seconds accepting pauses when the process is out of file descriptors or memory.
ACCEPT_PAUSE = 0.5
_OUT_OF = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class HandshakeHost(Protocol):
    """What a TLS listener's handshakes need from the listener."""

    @property
    def tls_context(self) -> ssl.SSLContext: ...

    @property
    def handshake_timeout(self) -> float:
        """Seconds a handshake may take."""
        ...

    def admit(self, handshake: Handshake) -> bool:
        """Count ``handshake`` (making room if need be), or False: refuse it."""
        ...

    def release(self, handshake: Handshake) -> None:
        """``handshake`` is done or gone: no longer counted (may come more than once)."""
        ...

    def protocol(self) -> asyncio.Protocol:
        """The protocol that takes a connection over once its handshake is done."""
        ...


class Handshake(asyncio.Protocol):
    """One accepted connection until its TLS handshake is done (see the module)."""

    __slots__ = ("host", "since", "sock")

    def __init__(self, host: HandshakeHost, sock: socket.socket, since: float) -> None:
        self.host = host
        self.sock = sock
        self.since = since  # the accept, on the event loop's clock

    def connection_made(self, transport: Any) -> None:
        """The handshake is done: hand the TLS transport over."""
        self.host.release(self)
        protocol = self.host.protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def waiting(self) -> bool:
        """A handshake waits for its client (it may be shed for a new connection)."""
        return True

    def abort(self) -> None:
        """End the handshake now: uncounted at once, the socket shut down (the loop closes
        it when it sees the end)."""
        self.host.release(self)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class TlsAccepter(asyncio.AbstractServer):
    """Accepts on the listening ``sock`` and serves each connection over TLS for ``host``
    (see the module). An :class:`asyncio.AbstractServer`: ``close`` stops accepting and
    ends the handshakes under way, ``wait_closed`` waits for them to finish."""

    def __init__(self, sock: socket.socket, host: HandshakeHost, backlog: int) -> None:
        self.sock = sock
        self.host = host
        self.backlog = backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving = False
        self._tasks: dict[asyncio.Task[None], Handshake] = {}
        self._warnings = Throttle()

    async def start_serving(self) -> None:
        if self._serving:
            return
        loop = self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self.sock.listen(self.backlog)
        loop.add_reader(self.sock.fileno(), self._accept)
        self._serving = True

    def close(self) -> None:
        if self._serving and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self._serving = False
        for handshake in list(self._tasks.values()):
            handshake.abort()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.host.handshake_timeout)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None  # (started)
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def serve_forever(self) -> None:
        await self.start_serving()
        await asyncio.get_running_loop().create_future()  # (until cancelled)

    def _accept(self) -> None:
        loop = self._loop
        assert loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # (a connection reset before its accept: the next one)
                if exc.errno in _OUT_OF:
                    self._pause(loop, exc)
                    return
                continue
            conn.setblocking(False)
            handshake = Handshake(self.host, conn, loop.time())
            if not self.host.admit(handshake):
                conn.close()
                continue
            task = loop.create_task(self._serve(loop, handshake))
            self._tasks[task] = handshake
            task.add_done_callback(self._tasks.pop)

    def _pause(self, loop: asyncio.AbstractEventLoop, exc: OSError) -> None:
        """Out of descriptors or memory: stop accepting for :data:`ACCEPT_PAUSE` seconds."""
        if self._warnings.hit("out") is not None:
            log.warning("TLS listener: cannot accept (%s); pausing %.1f s", exc, ACCEPT_PAUSE)
        loop.remove_reader(self.sock.fileno())
        loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        if self._serving and self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._accept)

    async def _serve(self, loop: asyncio.AbstractEventLoop, handshake: Handshake) -> None:
        host = self.host
        try:
            await loop.connect_accepted_socket(
                lambda: handshake,
                handshake.sock,
                ssl=host.tls_context,
                ssl_handshake_timeout=host.handshake_timeout,
            )
        except (OSError, EOFError) as exc:  # failed, cut, shed or late (ssl.SSLError too)
            log.debug("TLS handshake failed: %s %s", type(exc).__name__, exc)
        finally:
            host.release(handshake)  # (already done when it was handed over)


class HandshakeGate:
    """The :class:`HandshakeHost` of a listener with no connection limit of its own: at
    most ``limit`` handshakes at once; at the limit a new one first sheds the oldest
    (``shed`` counts them)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        timeout: float,
        limit: int,
        protocol: Callable[[], asyncio.Protocol],
    ) -> None:
        self.context = context
        self.timeout = timeout
        self.limit = limit
        self.factory = protocol
        self.pending: dict[Handshake, None] = {}  # (in the order of their accept)
        self.shed = 0

    @property
    def tls_context(self) -> ssl.SSLContext:
        return self.context

    @property
    def handshake_timeout(self) -> float:
        return self.timeout

    def admit(self, handshake: Handshake) -> bool:
        while len(self.pending) >= self.limit:
            self.shed += 1
            next(iter(self.pending)).abort()  # (releases it)
        self.pending[handshake] = None
        return True

    def release(self, handshake: Handshake) -> None:
        self.pending.pop(handshake, None)

    def protocol(self) -> asyncio.Protocol:
        return self.factory()


__all__ = ["Handshake", "HandshakeGate", "HandshakeHost", "TlsAccepter"]
