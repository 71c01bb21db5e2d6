"""The public listener's HTTP/1.1: one ``asyncio.Protocol`` per connection over ``httptools``.

Small on purpose: every request gets an answer from :class:`~dispatcher.app.DispatchCore`
(called directly, no ASGI in between), and everything a stranger controls has a limit:

- the request head (request line and header lines) is at most ``max_request_head`` bytes
  and ``max_header_lines`` lines, or it is answered 431 and the connection closed; bytes
  of an unfinished header are never buffered much beyond the limit;
- a request body is read and discarded: up to ``max_body`` bytes (``Content-Length`` or
  chunked), else 413 and close; ``Expect: 100-continue`` gets ``100 Continue`` (unless the
  announced body is beyond the cap: 413), then the body is read and dropped and the answer
  follows, on a connection kept alive, as nginx does when it discards a body;
- anything the parser refuses (a malformed request line, header, chunk) is a 400 and a
  close; an ``Upgrade`` request is answered and the connection closed;
- keep-alive, pipelining (answers in order: each is written as its request completes),
  HTTP/1.0 (closed unless it asks for keep-alive), ``Connection: close``, ``HEAD``;
- write backpressure: while the transport's buffer is above its high-water mark the
  connection stops reading, so a client that pipelines and never reads cannot grow memory.

Deadlines (the head's, the keep-alive idle time, a stalled body's) are not kept per request:
a connection notes when its current wait began (``since``) and the edge's sweeper
(:mod:`dispatcher.edge`) closes the ones waiting longer than their state allows
(:meth:`HttpConnection.late`), so a request costs no timer and no deadline arithmetic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from dispatcher.app import Answer, WireAnswer
from dispatcher.asgi import Scope

if TYPE_CHECKING:
    from dispatcher.config import DispatcherSettings

access_log = logging.getLogger("webfarm.access")
log = logging.getLogger("webfarm.http1")

#: The largest request body read (and discarded); beyond it: 413 and close.
MAX_BODY = 1 << 20
#: Seconds a closing connection is read (and what comes dropped) before it is cut.
LINGER = 1.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The public edge's limits (per worker process); see docs/configuration.md."""

    max_request_head: int = 16 * 1024
    max_header_lines: int = 100
    head_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 10_000
    graceful_timeout: float = 10.0
    max_body: int = MAX_BODY

    @classmethod
    def from_settings(cls, settings: DispatcherSettings) -> EdgeLimits:
        return cls(
            max_request_head=settings.max_request_head,
            max_header_lines=settings.max_header_lines,
            head_timeout=settings.head_timeout,
            keep_alive_timeout=settings.keep_alive_timeout,
            max_connections=settings.max_connections,
            graceful_timeout=settings.graceful_timeout,
        )


# Connection states. WAIT: no byte of the next request yet; HEAD: reading a head (and, once
# it is complete, waiting for its body's first bytes); BODY: reading (and discarding) a body;
# DONE: answered for the last time, closing.
WAIT, HEAD, BODY, DONE = 0, 1, 2, 3
# What a request's special headers said (HttpConnection.special, bits; 0: none but Host):
# one was there, it has a body, it expects 100-continue, the 100 Continue is written.
_SEEN, _HAS_BODY, _EXPECTS, _CONTINUED = 1, 2, 4, 8


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


#: Every three-digit status's line (indexed, not ``get``: the hot path's lookup).
_STATUS_LINES = {status: _status_line(status) for status in range(100, 1000)}
_KEEP = b"\r\n"
_CLOSE = b"connection: close\r\n\r\n"
_KEEP_10 = b"connection: keep-alive\r\n\r\n"  # an HTTP/1.0 client that asked for it


def fixed_response(status: int, text: str, *extra: tuple[bytes, bytes]) -> bytes:
    """A complete small response that closes the connection (the edge's own errors)."""
    body = f"{text}\n".encode("ascii")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    return _status_line(status) + lines + _CLOSE + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
BAD_REQUEST = fixed_response(400, "Bad request")
TIMEOUT = fixed_response(408, "Request timeout: the request did not arrive in time")
TOO_LARGE = fixed_response(413, "Request body too large")
HEAD_TOO_LARGE = fixed_response(431, "Request header fields too large")
INTERNAL = fixed_response(500, "Internal error")
FULL = fixed_response(503, "Too many connections", (b"retry-after", b"1"))

_METHODS = {m: m.decode("ascii") for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE")}
# header names the protocol itself looks at (lower case): the kind of each (and the Host
# header, noted for the core: not special, it costs no get_http_version). A request without
# a special header has no body and is kept alive if it is HTTP/1.1.
_CONTENT_LENGTH, _CHUNKED, _EXPECT, _CONNECTION, _HOST = 1, 2, 3, 4, 5
_SPECIAL = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _CHUNKED,
    b"expect": _EXPECT,
    b"connection": _CONNECTION,
    b"host": _HOST,
}


#: A connection's scope (this, with its client, server and headers list), which each of its
#: requests updates in place (method, target, version; the headers list is refilled).
_SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "GET",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [],
    "client": None,
    "server": None,
    "scheme": "http",
    "http_version": "1.1",
}


def _dropped(data: bytes) -> None:
    """What a closing connection does with what it still reads (see _finish)."""


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is already chosen."""


class Decider(Protocol):
    """What answers a request: :class:`~dispatcher.app.DispatchCore` (or, in the bench, a
    fixed answer). Synchronous; never raises on client input.

    The edge hands ``answer_wire`` its connection's scope, the same dict (and the same
    ``headers`` list) for each request on the connection, updated in place: the decider
    reads them while it answers and keeps neither (a copy, if it must).
    """

    def answer(self, scope: Scope) -> Answer: ...

    def answer_wire(self, scope: Scope, url: bytes, host: bytes | None) -> WireAnswer:
        """``answer(scope)``, given the request target as it came and the first ``Host``
        header's value, with the header lines perhaps already joined (see
        :meth:`dispatcher.app.DispatchCore.answer_wire`)."""
        ...


class Edge(Protocol):
    """What a connection needs from its listener (see :class:`dispatcher.edge.PublicEdge`)."""

    core: Decider
    limits: EdgeLimits
    connections: dict[HttpConnection, None]
    now: float
    date: bytes
    date_end: bytes  # date + CRLF: a kept-alive HTTP/1.1 answer's head ends so
    access_log: bool
    stopping: bool
    scheme: str  # https on a TLS listener

    def make_room(self) -> bool:
        """Free a connection slot (dropping the longest-waiting connections); False if
        every open connection is busy."""
        ...


class HttpConnection(asyncio.Protocol):
    """One client connection (``__slots__``: it is built for each connection)."""

    __slots__ = (
        "body",
        "client",
        "count",
        "edge",
        "feed",
        "head_len",
        "headers",
        "host",
        "limits",
        "parser",
        "paused",
        "scope",
        "server",
        "since",
        "special",
        "stalled",
        "state",
        "transport",
        "url",
    )

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.limits = edge.limits
        self.parser = httptools.HttpRequestParser(self)
        #: What data_received feeds: the parser, until the connection is DONE: then nothing.
        self.feed: Callable[[bytes], None] = self.parser.feed_data
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scope: dict[str, Any] = _SCOPE
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None  # the first Host header's value
        self.state = WAIT
        self.count = 0  # requests answered on this connection
        self.head_len = self.body = self.stalled = 0
        self.special = 0  # what its special headers said (_SEEN, ...)
        self.paused = False
        self.since = 0.0  # when the current wait began (see late())

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        edge = self.edge
        full = edge.stopping or (
            len(edge.connections) >= self.limits.max_connections and not edge.make_room()
        )
        edge.connections[self] = None  # (a refused one too, while it lingers: see _finish)
        if full:
            transport.write(FULL)
            self._finish()
            return
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if peer else None
        sock = transport.get_extra_info("sockname")
        self.server = (str(sock[0]), int(sock[1])) if sock else None
        self.scope = dict(
            _SCOPE, client=self.client, server=self.server, scheme=edge.scheme, headers=self.headers
        )
        self.since = edge.now

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = DONE
        self.edge.connections.pop(self, None)

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and self.state != DONE:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close our side too (answers already written are flushed first)

    def data_received(self, data: bytes) -> None:
        head_len, count = self.head_len, self.count  # (to tell progress from a stall)
        try:
            self.feed(data)  # (no check for DONE: it feeds nothing then)
        except httptools.HttpParserCallbackError as exc:
            if self.state == DONE:  # refused or answered for the last time by a callback
                return
            log.error("public edge: internal error on a request", exc_info=exc.__context__)  # noqa: TRY400
            self._refuse(INTERNAL)
            return
        except httptools.HttpParserUpgrade:
            if self.state != DONE:
                self._finish()  # answered (see on_message_complete); what follows is not HTTP
            return
        except httptools.HttpParserError:
            self._refuse(BAD_REQUEST)
            return
        if self.state == HEAD:  # a head unfinished: httptools keeps a header line's bytes
            if self.head_len == head_len and self.count == count:  # no target, no header
                self.stalled += len(data)  # (bytes since the last one; a head starts at 0)
                if self.stalled > self.limits.max_request_head:
                    self._refuse(HEAD_TOO_LARGE)
            else:
                self.stalled = 0

    # --- httptools callbacks ---------------------------------------------------------------

    # (No on_message_begin: a callback less per request. A request begins with its first
    # bytes of target, in on_url; before that the connection counts as idle.)

    def on_url(self, url: bytes) -> None:
        state = self.state
        if state == WAIT:  # a new request
            self.state = HEAD
            self.headers.clear()
            self.host = None
            self.special = self.stalled = 0
            if self.count:  # the first head's time runs from the accept
                self.since = self.edge.now
        elif state == HEAD:  # more of the target
            url = self.url + url
        else:  # pipelined after a last answer (DONE): not read
            raise _Refused
        self.url = url
        head_len = self.head_len = len(url)  # (the head so far is its target)
        if head_len > self.limits.max_request_head:
            self._refuse(HEAD_TOO_LARGE)
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        head_len = self.head_len = self.head_len + len(name) + len(value) + 4
        limits = self.limits
        if head_len > limits.max_request_head or len(headers) >= limits.max_header_lines:
            self._refuse(HEAD_TOO_LARGE)
            raise _Refused
        name = name.lower()
        kind = _SPECIAL.get(name)
        if kind is not None:
            if kind != _HOST:
                self._special(kind, value)
            elif self.host is None:  # the first one, as the core would take it
                self.host = value
        headers.append((name, value))

    # (No on_headers_complete either: a callback less per request. What it would decide is
    # decided by the headers themselves, in _special; the body's first bytes move the
    # connection to BODY.)

    def on_body(self, body: bytes) -> None:
        if self.state == HEAD:  # the first bytes of this request's body
            self.state = BODY
            self.body = len(body)
        else:
            self.body += len(body)
        if self.body > self.limits.max_body:
            self._refuse(TOO_LARGE)
            raise _Refused
        self.since = self.edge.now  # a body that keeps coming

    # --- answers ---------------------------------------------------------------------------

    def _special(self, kind: int, value: bytes) -> None:
        """A header the protocol looks at: ``Content-Length`` beyond the cap is a 413 at
        once; ``Expect: 100-continue`` on an HTTP/1.1 request with a body gets ``100
        Continue`` as soon as both are known (before the body: the client waits for it; a
        head refused after it gets its answer after the 100, as any final answer may), and
        the body is read and dropped like any other. (A trailer, after a chunked body, is
        not looked at.)"""
        if self.state != HEAD:
            return
        special = self.special | _SEEN
        if kind == _CONTENT_LENGTH:
            text = value.strip()
            length = int(text) if text.isdigit() else 0  # (llhttp checked it)
            if length > self.limits.max_body:
                self._refuse(TOO_LARGE)
                raise _Refused
            if length:
                special |= _HAS_BODY
        elif kind == _CHUNKED:
            special |= _HAS_BODY
        elif kind == _EXPECT and value.strip().lower() == b"100-continue":
            special |= _EXPECTS
        if special & (_HAS_BODY | _EXPECTS | _CONTINUED) == _HAS_BODY | _EXPECTS:
            if self.parser.get_http_version() == "1.1":
                self.transport.write(CONTINUE)  # type: ignore[union-attr]
            special |= _CONTINUED
        self.special = special

    def on_message_complete(self) -> None:
        """Ask the core, write its answer (a hot path: few lookups, one write)."""
        parser, edge = self.parser, self.edge
        keep_alive = parser.should_keep_alive() and not edge.stopping
        # Kept alive without a Connection header: HTTP/1.1 (llhttp says so for 1.1 only),
        # which spares get_http_version() (it formats a string: ~10 % of the protocol).
        version = "1.1" if keep_alive and not self.special else parser.get_http_version()
        raw = parser.get_method()
        method = "GET" if raw == b"GET" else _METHODS.get(raw) or raw.decode("latin-1")
        url = self.url
        path, _, query = url.partition(b"?")  # (cheaper than find and slices)
        scope = self.scope
        scope["method"] = method
        scope["raw_path"] = path
        scope["query_string"] = query
        scope["http_version"] = version
        try:
            status, headers, body = edge.core.answer_wire(scope, url, self.host)
        except Exception:  # a bug, not the client's doing: logged, and a plain 500
            log.exception("public edge: the decision failed for %r", url[:200])
            self._refuse(INTERNAL)
            raise _Refused from None
        if isinstance(headers, bytes):  # the plain redirect's lines, joined by the core
            parts = [_STATUS_LINES[status], headers]
        else:  # (any status not in the table is a bug in the core: a 500)
            parts = [_STATUS_LINES[status]]
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
        if version == "1.0":
            parts += (edge.date, _KEEP_10 if keep_alive else _CLOSE)
        elif keep_alive:
            parts.append(edge.date_end)  # (the Date line and the blank line, joined once)
        else:
            parts += (edge.date, _CLOSE)
        if body and method != "HEAD":
            parts.append(body)
        self.transport.write(b"".join(parts))  # type: ignore[union-attr]
        self.count += 1
        if edge.access_log:
            self._log(method, url, version, status)
        if keep_alive:
            self.state = WAIT
            self.since = edge.now
        else:
            self._finish()

    def _log(self, method: str, url: bytes, version: str, status: int) -> None:
        host, port = self.client or ("-", 0)
        target = url.decode("latin-1").encode("unicode_escape").decode("ascii")
        access_log.info('%s:%d - "%s %s HTTP/%s" %d', host, port, method, target, version, status)

    def _refuse(self, response: bytes) -> None:
        """The edge's own answer (an error), then close."""
        if self.state == DONE or self.transport is None:
            return
        self.transport.write(response)
        self._finish()
        if self.edge.access_log:
            host, port = self.client or ("-", 0)
            access_log.info('%s:%d - "-" %s', host, port, response[9:12].decode("ascii"))

    def _finish(self) -> None:
        """Close once what is written has gone out: a lingering close (the FIN goes after
        the last answer; what the client still sends is read and dropped until it closes,
        so the answer is not lost to a reset), cut after ``LINGER`` seconds."""
        self.state = DONE
        self.feed = _dropped  # (a callback's feed goes on: what follows is refused there)
        self.since = self.edge.now
        transport = self.transport
        if transport is not None:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    # --- the edge's sweeper and stop -------------------------------------------------------

    def late(self, now: float) -> bool:
        """Whether the current wait has lasted longer than allowed: closing, ``LINGER``;
        idle after an answer, ``keep_alive_timeout``; else (the first head, counted from
        the accept, any later head, a body that stopped coming) ``head_timeout``."""
        state = self.state
        if state == DONE:
            limit = LINGER
        elif state == WAIT and self.count:
            limit = self.limits.keep_alive_timeout
        else:
            limit = self.limits.head_timeout
        return now >= self.since + limit

    def expire(self) -> None:
        """The wait lasted too long (see late()): a request that started (its head, or its
        body) is a 408; an idle connection just closes; abort if what was written cannot go
        out (the client does not read)."""
        if self.state == DONE or self.paused:
            self.abort()
        elif self.state == WAIT:
            self._finish()
        else:
            self._refuse(TIMEOUT)

    def waiting(self) -> bool:
        """Whether the connection is only waiting for a request head, or closing (it may be
        dropped to make room for a new connection)."""
        state = self.state
        return state == DONE or (state <= HEAD and not self.paused)

    def busy(self) -> bool:
        """Whether a request is in flight (graceful stop waits for those)."""
        return self.state != DONE and not (self.state == WAIT and not self.paused)

    def shutdown(self) -> None:
        """Graceful stop: an idle connection closes now, a busy one after its answer."""
        if self.state == WAIT and not self.paused:
            self._finish()

    def abort(self) -> None:
        self.state = DONE
        self.feed = _dropped
        self.edge.connections.pop(self, None)  # its slot is free now (make_room counts)
        if self.transport is not None:
            self.transport.abort()
