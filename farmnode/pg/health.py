"""Patroni-compatible HTTP health endpoints of a PostgreSQL node.

Load balancers (the farm's layer-4 switch, HAProxy, the dispatcher's probes) route to the
primary or to the standbys with an ordinary HTTP check:

- ``/primary`` (``/master``, ``/read-write``, ``/``): 200 when this node owns the primary
  role and PostgreSQL accepts writes;
- ``/replica``: 200 on a running standby whose WAL receiver streams; ``?lag=`` bounds its
  lag (bytes, or ``16kB``, ``1MB``...);
- ``/read-only``: 200 when ``/primary`` or ``/replica`` would be;
- ``/health``: 200 when PostgreSQL runs and answers SQL;
- ``/liveness``: 200 while the process lives.

Anything else is 503 (the check failed), 404 (unknown path), 405 (a method other than GET,
HEAD or OPTIONS; Patroni's users often check with ``OPTIONS``) or 400 (not HTTP). The body
is a JSON document (``role``, ``state``, ``timeline``, ``lsn``, ``lag``...), none for
``HEAD``. Every connection answers one request and closes.

The server is small on purpose: ``asyncio.start_server``, a request head of at most 8 KiB
and 100 lines read within 5 s, a parser that accepts what HTTP/1.0 and 1.1 clients send and
rejects the rest with 400. :func:`answer` is pure: the route table, tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Final
from urllib.parse import parse_qs, unquote

from farmnode.errors import ListenError

log = logging.getLogger("farmnode.pg.health")

MAX_HEAD: Final = 8192
MAX_LINES: Final = 100
READ_TIMEOUT: Final = 5.0
PROBE_TIMEOUT: Final = 4.0
METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
PRIMARY_PATHS: Final = frozenset({"/", "/primary", "/master", "/read-write"})
REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_SIZE = re.compile(r"\s*(\d{1,19})\s*([kmgt]i?b|[kmgt]|b)?\s*", re.IGNORECASE)
_UNITS: Final = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")


class BadRequest(ValueError):
    """The bytes received are not an HTTP request this server answers."""


def parse_size(text: str) -> int:
    """A byte count: ``1048576``, ``1024kB``, ``1MB``, ``1 MiB``, ``2g`` (units of 1024,
    case-insensitive, as Patroni and PostgreSQL read them). Raises :class:`ValueError`."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (bytes, or a number with kB, MB, GB, TB)")
    unit = (match[2] or "").lower()[:1]
    return int(match[1]) * int(1024 ** _UNITS[unit])


def format_size(value: float) -> str:
    """Bytes for people: ``512 B``, ``3.2 MiB``."""
    size, unit = float(value), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def parse_listen(text: str) -> tuple[str, int]:
    """``'127.0.0.1:8008'``, ``'[::1]:8008'`` or ``':8008'`` (every address) -> host, port.
    Raises :class:`ValueError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"host:port with a port 0-65535, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address in brackets ([::1]:8008), not {text!r}")
    return host or "0.0.0.0", int(port)  # noqa: S104 - ':port' asks for every address


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)


def parse_request_line(line: bytes) -> Request:
    """``GET /replica?lag=1MB HTTP/1.1`` -> :class:`Request`; :class:`BadRequest` otherwise."""
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise BadRequest("request line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 3:
        raise BadRequest("expected METHOD TARGET HTTP/1.x")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest("expected METHOD TARGET HTTP/1.x")
    if target.startswith(("http://", "https://")):  # absolute form: keep path and query
        slash = target.find("/", target.find("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    if not _TARGET.fullmatch(target):
        raise BadRequest("the target must be a path")
    path, _, query = target.partition("?")
    try:
        return Request(method, unquote(path, errors="strict"), parse_qs(query, errors="strict"))
    except UnicodeDecodeError:
        raise BadRequest("the target is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class HealthState:
    """One node's state as the endpoints report it.

    ``primary``: this node owns the primary role and its PostgreSQL accepts writes.
    ``streaming``: a standby whose WAL receiver streams. ``lag``: bytes behind the primary's
    last advertised position (``None``: unknown). ``role`` is ``primary``, ``replica`` or
    ``demoted``; ``state`` what the agent is doing (``running``, ``stopped``,
    ``rewinding``, ``rewind failed``...)."""

    node: str
    role: str
    state: str
    running: bool
    primary: bool = False
    streaming: bool = False
    timeline: int | None = None
    lsn: int | None = None
    lag: int | None = None
    sync_standbys: tuple[str, ...] = ()
    reason: str = ""

    def document(self) -> dict[str, object]:
        body = asdict(self)
        body["sync_standbys"] = list(self.sync_standbys)
        return body


def answer(request: Request, state: HealthState | None) -> tuple[int, dict[str, object]]:
    """The status and JSON body for ``request`` given ``state`` (``None``: the probe
    failed). Pure: the whole route table."""
    if request.method not in METHODS:
        return 405, {"error": f"method {request.method} not allowed"}
    path = request.path.rstrip("/") or "/"
    if path == "/liveness":
        return 200, {"alive": True}
    if path not in (*PRIMARY_PATHS, "/replica", "/read-only", "/health"):
        return 404, {"error": f"no such endpoint: {path}"}
    if state is None:
        return 503, {"error": "state unknown (probe failed)"}
    body = state.document()
    if path in PRIMARY_PATHS:
        return (200 if state.primary else 503), body
    if path == "/health":
        return (200 if state.running else 503), body
    replica_ok, why = _replica_ok(request, state)
    if path == "/read-only":
        replica_ok = replica_ok or state.primary
    if why:
        body["check"] = why
    return (200 if replica_ok else 503), body


def _replica_ok(request: Request, state: HealthState) -> tuple[bool, str]:
    if state.primary or not state.streaming:
        return False, ""
    limits = request.query.get("lag")
    if not limits:
        return True, ""
    try:
        limit = parse_size(limits[-1])
    except ValueError as exc:
        return False, str(exc)
    if state.lag is None:
        return False, "lag unknown (no primary position advertised)"
    return state.lag <= limit, f"lag {state.lag} bytes, limit {limit}"


Probe = Callable[[], Awaitable[HealthState]]


class HealthServer:
    """The endpoints on ``host:port``, answering from ``probe`` (called once per request)."""

    def __init__(self, probe: Probe, host: str, port: int) -> None:
        self.probe = probe
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self.host, self.port
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Listen; raises :class:`ListenError` when the address cannot be bound."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEAD, reuse_address=True
            )
        except OSError as exc:
            raise ListenError(f"{self.host}:{self.port}", str(exc)) from exc

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    request = await read_request(reader)
            except BadRequest as exc:
                await _respond(writer, "GET", 400, {"error": str(exc)})
                return
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                return
            state = await self._state()
            status, body = answer(request, state)
            await _respond(writer, request.method, status, body)
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _state(self) -> HealthState | None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                return await self.probe()
        except Exception:  # an endpoint answers 503, it never crashes
            log.debug("health probe failed", exc_info=True)
            return None


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Read one request head (request line, headers, blank line) and parse it."""
    try:
        first = await reader.readline()
        request = parse_request_line(first)
        size = len(first)
        for _ in range(MAX_LINES):
            line = await reader.readline()
            size += len(line)
            if size > MAX_HEAD:
                break
            if line in (b"\r\n", b"\n", b""):
                return request
    except BadRequest:
        raise
    except ValueError:  # a line longer than the reader's limit
        pass
    raise BadRequest(f"request head longer than {MAX_HEAD} bytes or {MAX_LINES} lines")


async def _respond(
    writer: asyncio.StreamWriter, method: str, status: int, body: Mapping[str, object]
) -> None:
    payload = json.dumps(body, sort_keys=True).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Cache-Control: no-store\r\n"
        + ("Allow: GET, HEAD, OPTIONS\r\n" if status == 405 else "")
        + "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head if method == "HEAD" else head + payload)
    await writer.drain()
