"""The public edge's connections when ``[dispatcher] proxy_protocol`` is on: every connection
starts with a PROXY protocol header (v1 or v2, :mod:`dispatcher.proxyproto`), as HAProxy's
``accept-proxy`` requires.

:class:`ProxiedConnection` is :class:`~dispatcher.http1.HttpConnection` with a first step:
the bytes before the header is complete are collected (the header may come in pieces) and
decoded; then the client (and the server address, and with v2's SSL flag the scheme ``https``)
the header names replaces the connection's own, and what followed the header goes to the
HTTP parser. The listener picks this class only when the setting is on, so a plain
listener's connections pay nothing for it.

A connection is closed with no answer (aborted: an answer would be HTTP spoken to whatever
is not) when:

- its peer is not in ``trusted_proxies`` (when that list is set: only the listed proxies
  may say who the client is);
- its first bytes are not a PROXY header, or a malformed one, or one over the size limits
  (107 bytes for v1, 4 KiB for v2);
- the header is not complete within ``head_timeout`` of the accept.

Each is counted in :attr:`ProxyRefusals.counts` by cause and logged through a throttle (one
line per cause per 10 s, with the number of the others). A connection closed by its peer
before sending a byte (a TCP health check) is counted as ``empty`` and not logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Protocol

from dispatcher.clientaddr import TrustedProxies
from dispatcher.errors import ProxyHeaderError
from dispatcher.http1 import DONE, Edge, HttpConnection
from dispatcher.proxyproto import decode
from dispatcher.throttle import ThrottledLog

log = logging.getLogger("webfarm.edge")


class ProxyRefusals:
    """Connections refused for their PROXY header, counted by cause, and logged (throttled)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.counts: Counter[str] = Counter()
        self._log = ThrottledLog(logger)

    def refuse(self, cause: str, peer: str, reason: str) -> None:
        self.counts[cause] += 1
        if cause != "empty":
            self._log.report(cause, "public edge: closed a connection from %s: %s", peer, reason)


class ProxyEdge(Edge, Protocol):
    """What a :class:`ProxiedConnection` needs from its listener beyond an
    :class:`~dispatcher.http1.Edge`."""

    trusted: TrustedProxies | None
    proxy_refusals: ProxyRefusals


class ProxiedConnection(HttpConnection):
    """A public connection that must start with a PROXY header (see the module's text)."""

    __slots__ = ("preamble", "proxy_edge")

    def __init__(self, edge: ProxyEdge) -> None:
        super().__init__(edge)
        self.proxy_edge = edge
        self.preamble: bytes | None = b""  # what came of the header so far; None: done

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.state == DONE:  # refused at the connection limit
            self.preamble = None
            return
        trusted = self.proxy_edge.trusted
        if trusted is not None and (self.client is None or self.client[0] not in trusted):
            self._drop("untrusted", "its address is not in trusted_proxies")

    def data_received(self, data: bytes) -> None:
        preamble = self.preamble
        if preamble is None:
            super().data_received(data)
            return
        if self.state == DONE:
            return
        preamble += data
        try:
            header = decode(preamble)
        except ProxyHeaderError as exc:
            self._drop(exc.kind, exc.expected)
            return
        if header is None:
            self.preamble = preamble
            return
        self.preamble = None
        if header.source is not None:
            self.client = header.source
            self.server = header.destination
        scope = dict(self.scope, client=self.client, server=self.server)
        if header.ssl:
            scope["scheme"] = "https"
        self.scope = scope
        rest = preamble[header.length :]
        if rest:
            super().data_received(rest)

    def eof_received(self) -> bool:
        if self.preamble is not None and self.state != DONE:
            if self.preamble:
                self._drop("cut", "the connection ended inside its PROXY header")
            else:
                self._drop("empty", "closed before sending anything")
        return False

    def expire(self) -> None:
        if self.preamble is not None and self.state != DONE:
            self._drop("timeout", "no complete PROXY header within head_timeout")
        else:
            super().expire()

    def _drop(self, cause: str, reason: str) -> None:
        """Close with no answer; count and log it."""
        peer = self.client[0] if self.client is not None else "-"
        self.preamble = None
        self.proxy_edge.proxy_refusals.refuse(cause, peer, reason)
        self.abort()


__all__ = ["ProxiedConnection", "ProxyEdge", "ProxyRefusals"]
