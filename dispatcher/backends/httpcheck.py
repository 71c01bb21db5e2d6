"""The HTTP check without an HTTP client library: one GET on one connection, read lean.

A probe needs far less than a general HTTP client: one request, no redirects, no cookies,
no pool, no proxy. :class:`HttpChecker` is built once per prober (it holds the TLS context,
made once, and each URL's request bytes, made once) and each :meth:`HttpChecker.fetch`
opens one connection, writes one request and reads the answer through
:class:`ResponseReader`, a small sans-I/O HTTP/1.1 response reader. It keeps every limit of
the httpx probe (:func:`~dispatcher.backends.probes.probe_http` with a
:func:`~dispatcher.backends.wire.probe_client`), with the same words in its verdicts:

- the head is counted by the same :class:`~dispatcher.backends.wire.WireBudget` before it is
  parsed (16 KiB, 100 lines; 144 KiB per connection in all);
- the body goes through the same :class:`~dispatcher.backends.inflate.BodySearch` (64 KiB
  raw, 4,096 pieces, capped inflating); reading stops once the verdict is known;
- the request asks for ``Accept-Encoding: identity`` and ``Connection: close``.

The deadline is the caller's (:func:`~dispatcher.backends.probes.check_http`), as for the
httpx probe. Nothing here raises for what the far end does: every outcome is a verdict.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from typing import cast

import httpcore
import httpx

from dispatcher.backends.inflate import BodySearch, UndecodableBody, codings
from dispatcher.backends.wire import MAX_WIRE, WireBudget

USER_AGENT = b"webfarm-probe"
MAX_CHUNK_LINE = 1024  # a chunk-size line (size and extensions) or a trailer line
MAX_PREPARED = 10_000  # URLs whose request bytes are kept
_STATUS = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_HEADER_LINES = re.compile(rb"(?:%s:[^\r\n]*\r?\n)*%s:[^\r\n]*\r?" % (_TOKEN, _TOKEN))
_FRAMING = re.compile(
    rb"^(content-length|transfer-encoding|content-encoding)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$",
    re.IGNORECASE | re.MULTILINE,
)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

Verdict = tuple[bool, str]


class _Failed(Exception):
    """A verdict's detail, raised from deep in the reader (internal)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Where to connect for a URL, and the request to send there (made once per URL)."""

    host: str
    port: int
    tls: bool
    request: bytes

    @classmethod
    def for_url(cls, url: str) -> Prepared:
        """Parse ``url`` as httpx would (the same target and ``Host``); raises ``ValueError``
        for a URL that is not absolute http(s)."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a usable URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an absolute http(s) URL: {url[:80]!r}")
        tls = parsed.scheme == "https"
        request = b"".join(
            (
                b"GET ",
                parsed.raw_path,
                b" HTTP/1.1\r\nHost: ",
                parsed.netloc,
                b"\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n",
                b"User-Agent: ",
                USER_AGENT,
                b"\r\n\r\n",
            )
        )
        return cls(parsed.host, parsed.port or (443 if tls else 80), tls, request)


class ResponseReader:
    """An HTTP/1.1 response, fed as it arrives; answers the check's verdict (sans-I/O).

    :meth:`feed` returns ``None`` while it needs more, then the verdict ``(ok, detail)``;
    :meth:`eof` gives the verdict when the connection ends. After a verdict, nothing more is
    read. Verdicts are the httpx probe's: ``HTTP 503``, ``HTTP 200, body lacks 'OK'``, ...
    """

    def __init__(self, expect: str) -> None:
        self._wanted = expect.encode()
        self._budget = WireBudget()
        self._status = 0
        self._search: BodySearch | None = None
        self._framing = ""  # "length", "chunked" or "close" once the head is in
        self._left = 0  # body bytes left (length), or of the current chunk (chunked)
        self._chunk_state = "size"  # chunked: "size", "data", "end" (CRLF), "trailer"
        self._line = bytearray()  # chunked: a size or trailer line being read

    def feed(self, data: bytes) -> Verdict | None:
        budget = self._budget
        room = MAX_WIRE - budget.total
        if len(data) > room:
            data = data[: max(0, room)]
        budget.total += len(data)
        try:
            verdict = self._body(data) if self._framing else self._head(data)
        except httpcore.ReadError as exc:
            return False, f"ReadError: {exc}"
        except _Failed as exc:
            return False, exc.detail
        if verdict is None and budget.total >= MAX_WIRE:
            return False, f"ReadError: the site sent more than {MAX_WIRE} bytes"
        return verdict

    def eof(self) -> Verdict:
        """The verdict when the site closed the connection (before a verdict)."""
        if not self._framing:
            return False, "RemoteProtocolError: Server disconnected without sending a response."
        if self._framing == "close":
            return self._searched()
        return False, (
            "RemoteProtocolError: peer closed connection without sending complete message body"
        )

    # --- the head ---

    def _head(self, data: bytes) -> Verdict | None:
        budget = self._budget
        while True:  # (more than once only after a 1xx head: the real one follows)
            at = budget.head_part(data)
            if at < 0:
                return None
            verdict = self._start(bytes(budget.head))
            data = data[at:]
            if verdict is not None:
                return verdict
            if self._status:  # a final head, and a body to read
                return self._body(data) if data else None
            budget.next_head()

    def _start(self, head: bytes) -> Verdict | None:
        """Read a complete head; a verdict, or ``None`` with the body's framing set (or,
        after a 1xx, nothing set: the next head follows)."""
        first, _, block = head.partition(b"\n")
        status = _STATUS.fullmatch(first.rstrip(b"\r"))
        if status is None:
            raise _Failed(f"RemoteProtocolError: not an HTTP status line: {first[:60]!r}")
        code = int(status[1])
        headers = _headers(block)
        if 100 <= code < 200 and code != 101:
            return None
        self._status = code
        if not 200 <= code < 300:
            return False, f"HTTP {code}"
        if not self._wanted:
            return True, f"HTTP {code}"
        try:
            names = codings(v.decode("latin-1") for v in headers.get(b"content-encoding", []))
            self._search = BodySearch(self._wanted, names)
        except UndecodableBody as exc:
            return False, f"HTTP {code}, {exc.reason}"
        self._framing, self._left = _framing(code, headers)
        if self._framing == "length" and self._left == 0:
            return self._searched()
        return None

    # --- the body ---

    def _body(self, data: bytes) -> Verdict | None:
        if self._framing == "chunked":
            return self._chunked(data)
        if self._framing == "length":
            data = data[: self._left]
            self._left -= len(data)
        over = self._piece(data)
        if over or (self._framing == "length" and self._left == 0):
            return self._searched()
        return None

    def _piece(self, data: bytes) -> bool:
        assert self._search is not None
        try:
            return self._search.feed(data)
        except UndecodableBody as exc:
            raise _Failed(f"HTTP {self._status}, {exc.reason}") from None

    def _chunked(self, data: bytes) -> Verdict | None:
        at = 0
        while at < len(data):
            if self._chunk_state == "data":
                piece = data[at : at + self._left]
                at += len(piece)
                self._left -= len(piece)
                if self._piece(piece):
                    return self._searched()
                if self._left == 0:
                    self._chunk_state = "end"
                continue
            line, at = self._read_line(data, at)
            if line is None:
                return None
            if self._chunk_state == "size":
                self._left = _chunk_size(line)
                self._chunk_state = "data" if self._left else "trailer"
            elif self._chunk_state == "end":
                if line:
                    raise _Failed("RemoteProtocolError: a chunk does not end with CRLF")
                self._chunk_state = "size"
            elif not line:  # the empty line after the trailers: the body is complete
                return self._searched()
        return None

    def _read_line(self, data: bytes, at: int) -> tuple[bytes | None, int]:
        """The next line (without its end) from ``data`` at ``at``, or ``None`` for more."""
        end = data.find(b"\n", at)
        piece = data[at:] if end < 0 else data[at:end]
        if len(self._line) + len(piece) > MAX_CHUNK_LINE:
            raise _Failed(f"RemoteProtocolError: a chunk line over {MAX_CHUNK_LINE} bytes")
        self._line += piece
        if end < 0:
            return None, len(data)
        line = bytes(self._line).rstrip(b"\r")
        self._line = bytearray()
        return line, end + 1

    def _searched(self) -> Verdict:
        search = self._search
        assert search is not None
        if search.found:
            return True, f"HTTP {self._status}"
        expect = self._wanted.decode()
        return False, f"HTTP {self._status}, body lacks {expect!r}{search.searched()}"


def _headers(block: bytes) -> dict[bytes, list[bytes]]:
    """The framing headers of a head's header lines (lower-case name: values, in order);
    raises for a malformed line, as h11 would."""
    if block and _HEADER_LINES.fullmatch(block) is None:
        bad = next(
            (line for line in block.split(b"\n") if _HEADER_LINES.fullmatch(line) is None), b""
        )
        raise _Failed(f"RemoteProtocolError: malformed header line {bad[:60]!r}")
    headers: dict[bytes, list[bytes]] = {}
    for match in _FRAMING.finditer(block):
        headers.setdefault(match[1].lower(), []).append(match[2])
    return headers


def _framing(code: int, headers: dict[bytes, list[bytes]]) -> tuple[str, int]:
    """How the body ends: ``("chunked", 0)``, ``("length", n)`` or ``("close", 0)``."""
    if code in (204, 304):
        return "length", 0
    codings_ = headers.get(b"transfer-encoding")
    if codings_ is not None:
        if b",".join(codings_).strip().lower() != b"chunked":
            raise _Failed("RemoteProtocolError: only Transfer-Encoding: chunked is supported")
        return "chunked", 0
    lengths = headers.get(b"content-length")
    if lengths is None:
        return "close", 0
    values = {v.strip() for value in lengths for v in value.split(b",")}
    if len(values) != 1 or not (value := values.pop()).isdigit() or len(value) > 18:
        raise _Failed("RemoteProtocolError: bad Content-Length")
    return "length", int(value)


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip(b" \t")
    if _HEX.fullmatch(size) is None:
        raise _Failed(f"RemoteProtocolError: bad chunk size line {line[:40]!r}")
    return int(size, 16)


class _Exchange(asyncio.Protocol):
    """One request written, the answer fed to a :class:`ResponseReader` until a verdict."""

    def __init__(
        self, request: bytes, reader: ResponseReader, done: asyncio.Future[Verdict]
    ) -> None:
        self._request = request
        self._reader = reader
        self.done = done
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        verdict = self._reader.feed(data)
        if verdict is not None:
            self._finish(verdict)

    def eof_received(self) -> bool:
        if not self.done.done():
            self._finish(self._reader.eof())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(self._reader.eof())
        else:
            self.done.set_result((False, f"ReadError: {exc}"))

    def _finish(self, verdict: Verdict) -> None:
        self.done.set_result(verdict)
        if self._transport is not None:
            # Nothing is left to say, and a TLS peer need not be waited for (close_notify).
            self._transport.abort()


class HttpChecker:
    """Runs HTTP checks, one connection each; built once per prober and shared by its probes.

    ``ssl_context`` verifies ``https://`` sites (default: httpx's, certifi's CA bundle, made
    on the first https check and then kept).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._prepared: dict[str, Prepared] = {}

    async def fetch(self, url: str, expect: str) -> Verdict:
        """GET ``url``; ``(True, "HTTP 200")`` for a 2xx whose body holds ``expect``, else
        ``(False, why)``. Bound it with a deadline: it waits as long as the site does."""
        try:
            prepared = self._prepare(url)
        except ValueError as exc:
            return False, f"UnsupportedProtocol: {exc}"
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Verdict] = loop.create_future()
        exchange = _Exchange(prepared.request, ResponseReader(expect), done)
        try:
            transport, _ = await loop.create_connection(
                lambda: exchange,
                prepared.host,
                prepared.port,
                ssl=self._tls() if prepared.tls else None,
                server_hostname=prepared.host if prepared.tls else None,
            )
        except OSError as exc:
            return False, f"ConnectError: {exc}" if str(exc) else "ConnectError"
        try:
            return await done
        finally:
            transport.abort()

    def _prepare(self, url: str) -> Prepared:
        prepared = self._prepared.get(url)
        if prepared is None:
            if len(self._prepared) >= MAX_PREPARED:
                self._prepared.clear()
            prepared = self._prepared[url] = Prepared.for_url(url)
        return prepared

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(verify=True, trust_env=False)
        return self._ssl_context


__all__ = ["HttpChecker", "Prepared", "ResponseReader", "Verdict"]
