"""A real server for the switch's tests: answers every HTTP request with its id, and can be
killed (listener closed, open connections reset) and revived on the same address."""

from __future__ import annotations

import asyncio
from typing import cast

from farmnode.spec import RealSpec


class _IdHttp(asyncio.Protocol):
    """One connection: every request (headers only) gets ``200`` with the server's id."""

    def __init__(self, server: IdServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.conns.add(self.transport)
        self.server.accepted += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if not head.startswith(b"GET /health"):
                self.server.hits += 1
            body = self.server.ident.encode()
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.conns.discard(self.transport)


class IdServer:
    """``accepted`` counts connections, ``hits`` the requests other than health checks."""

    def __init__(self, ident: str, host: str = "127.0.0.1") -> None:
        self.ident = ident
        self.host = host
        self.port = 0
        self.accepted = 0
        self.hits = 0
        self.conns: set[asyncio.Transport] = set()
        self.server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def real(self) -> RealSpec:
        return RealSpec(self.host, self.port)

    async def start(self) -> IdServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _IdHttp(self), self.host, self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Stop listening and reset every open connection, like a crashed server."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for transport in list(self.conns):
            transport.abort()
        await asyncio.sleep(0)
