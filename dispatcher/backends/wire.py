"""The probes' HTTP client, with limits on what a site may send before httpx ever parses it.

httpx (through httpcore and h11) accepts a response head of up to about 100 KiB plus one
read, in any number of lines: 20,000 one-byte headers cost it a tenth of a second or more of
CPU in one go, during which the event loop runs nothing else. :func:`probe_client` builds an
``httpx.AsyncClient`` whose connections count every byte off the wire (after TLS) and
refuse, before h11 sees them:

- a response head longer than :data:`MAX_HEAD` bytes or with more than
  :data:`MAX_HEAD_LINES` lines (the public listener's own limits);
- more than :data:`MAX_WIRE` bytes on one connection (head, body and chunked framing
  together): a backstop behind the probe's own 64 KiB body cap.

A refusal is an ``httpx.ReadError`` whose message says which limit, so the probe's verdict
names it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

MAX_HEAD = 16 * 1024
MAX_HEAD_LINES = 100
MAX_WIRE = MAX_HEAD + 2 * 64 * 1024  # the body cap, with room for chunked framing


class WireBudget:
    """What one connection has read so far, and the head's limits (pure bookkeeping).

    Lines are counted as bytes arrive (a head trickled a byte at a time costs no rescans).
    Once the head is complete, :attr:`head` holds it (without the blank line that ends it).
    """

    __slots__ = ("_counted", "_lines", "head", "head_done", "total")

    def __init__(self) -> None:
        self.total = 0
        self.head = bytearray()
        self.head_done = False
        self._lines = 0  # line ends in head[:_counted]
        self._counted = 0

    def allowance(self, wanted: int) -> int:
        """How many bytes the next read may ask for; raises when the wire cap is used up."""
        if self.total >= MAX_WIRE:
            raise httpcore.ReadError(f"the site sent more than {MAX_WIRE} bytes")
        return min(wanted, MAX_WIRE - self.total)

    def received(self, data: bytes) -> int:
        """Account for ``data`` (see :meth:`head_part`); raises ``httpcore.ReadError`` when
        the head breaks a limit."""
        self.total += len(data)
        return self.head_part(data)

    def head_part(self, data: bytes) -> int:
        """Follow the head through ``data`` (counted already) and check its limits.

        Returns where in ``data`` the body starts when ``data`` completes the head, else -1.
        Raises ``httpcore.ReadError`` when the head breaks a limit.
        """
        if self.head_done or not data:
            return -1
        start = len(self.head)
        self.head += data[: MAX_HEAD + 4 - start]
        scan = max(0, start - 3)
        end, size = self.head.find(b"\r\n\r\n", scan), 4
        bare = self.head.find(b"\n\n", scan)  # (h11 takes bare LF line ends too)
        if bare >= 0 and (end < 0 or bare < end):
            end, size = bare, 2
        upto = end if end >= 0 else len(self.head)
        if upto >= self._counted:
            self._lines += self.head.count(b"\n", self._counted, upto)
        else:  # the blank line began in what was counted before
            self._lines -= self.head.count(b"\n", upto, self._counted)
        self._counted = upto
        if self._lines > MAX_HEAD_LINES:  # the status line, then the header lines
            raise httpcore.ReadError(f"response head over {MAX_HEAD_LINES} header lines")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                raise httpcore.ReadError(f"response head over {MAX_HEAD} bytes")
            return -1
        self.head_done = True
        del self.head[end:]
        return end + size - start

    def next_head(self) -> None:
        """Follow a new head from here (after a 1xx answer); the wire total carries on."""
        self.head = bytearray()
        self.head_done = False
        self._lines = self._counted = 0


class _CountedStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, budget: WireBudget) -> None:
        self._inner = inner
        self._budget = budget

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(self._budget.allowance(max_bytes), timeout)
        self._budget.received(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _CountedStream(inner, self._budget)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CountingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CountedStream(stream, WireBudget())

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _CountedStream(stream, WireBudget())

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ProbeTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, on a connection pool whose streams are counted.

    httpx offers no way to hand its pool a network backend, so the pool it built is
    replaced by the same pool with one (``_pool`` has been httpx's name for it since 0.18).
    No proxy from the environment, no kept-alive connections: one probe, one connection.
    """

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_keepalive_connections=0,
            network_backend=_CountingBackend(httpcore.AnyIOBackend()),
        )


def probe_client(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """An HTTP client for probes: counted, capped connections; no proxies; no keep-alive.

    ``verify`` is httpx's: ``True`` checks certificates against certifi's CA bundle, an
    ``ssl.SSLContext`` is used as it is.
    """
    return httpx.AsyncClient(transport=_ProbeTransport(verify), trust_env=False)


__all__ = ["MAX_HEAD", "MAX_HEAD_LINES", "MAX_WIRE", "WireBudget", "probe_client"]
