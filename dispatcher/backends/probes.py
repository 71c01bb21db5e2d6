"""The probes themselves: one call, one verdict. Shared by the dispatcher and farmnode.

- :func:`probe_http` (ldirectord ``negotiate``): GET a known page; success is a 2xx whose
  body contains the expected string. Whatever the site sends, the probe reads at most
  :data:`MAX_BODY` raw body bytes and inflates a compressed answer only within
  :mod:`dispatcher.backends.inflate`'s caps; with a client from
  :func:`dispatcher.backends.wire.probe_client`, the head is capped at 16 KiB and 100 lines
  before it is parsed. :func:`check_http` is the same check with every limit, without httpx
  (:mod:`dispatcher.backends.httpcheck`): the prober's default, a fraction of the cost.
- :func:`probe_tcp` (ldirectord ``connect``): a TCP connection is accepted; it is closed at
  once without sending anything.
- :func:`probe_agent` (HAProxy ``agent-check``): connect to the agent port, read one line
  and parse it with :func:`parse_agent_reply` into an :class:`AgentReport`.

No probe raises for anything the far end does: every outcome (refused, timed out, garbage)
is a :class:`ProbeResult` with ``ok=False`` and a ``detail`` saying why. Each probe has one
hard deadline, its ``timeout``, for everything (resolve, connect, TLS, head, body), and
does nothing between two awaits that could hold the event loop for long. Debouncing
(rise/fall) and scheduling are :mod:`dispatcher.backends.health`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from dispatcher.backends.httpcheck import HttpChecker
from dispatcher.backends.inflate import MAX_BODY, BodySearch, UndecodableBody, codings

PROBE_HEADERS = {"accept-encoding": "identity"}
MAX_AGENT_LINE = 1024  # bytes read from an agent before giving up on a line end
MAX_AGENT_PERCENT = 25_600  # HAProxy clamps relative weights here too

AgentHealth = Literal["up", "down", "fail", "stopped"]
AgentAdmin = Literal["ready", "drain", "maint"]
_HEALTH: dict[str, AgentHealth] = {"up": "up", "down": "down", "fail": "fail", "stopped": "stopped"}
_ADMIN: dict[str, AgentAdmin] = {"ready": "ready", "drain": "drain", "maint": "maint"}
HEALTH_WORDS: frozenset[str] = frozenset(_HEALTH)
ADMIN_WORDS: frozenset[str] = frozenset(_ADMIN)
DOWN_WORDS: frozenset[str] = frozenset({"down", "fail", "stopped"})
_WORD = re.compile(r"[^ \t,]+")  # HAProxy's separators: space, tab, comma


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What an agent said, word by word (HAProxy agent-check semantics).

    Each field is ``None`` when the agent did not say it: a word the agent does not repeat
    keeps its earlier value (see :meth:`updated`). ``health`` is the operational state
    (``up``; ``down``/``fail``/``stopped`` all mean down), ``admin`` the administrative one
    (``drain``: no new connections except persistent ones; ``maint``: none at all;
    ``ready`` cancels both). ``weight_percent`` scales the configured weight. ``maxconn`` is
    carried for whoever can use it. ``ignored`` lists words that were not understood (HAProxy
    reports them but acts on the rest of the line); ``description`` is the text after ``#``.
    """

    health: AgentHealth | None = None
    admin: AgentAdmin | None = None
    weight_percent: int | None = None
    maxconn: int | None = None
    description: str = ""
    ignored: tuple[str, ...] = ()

    @property
    def serving(self) -> bool:
        """``False`` when the agent declared itself down or in maintenance."""
        return self.health not in DOWN_WORDS and self.admin != "maint"

    @property
    def decisive(self) -> bool:
        """``True`` when this report changes the up/down state at once (HAProxy does too).

        An explicit health word, or ``maint``, overrides rise/fall: the agent knows.
        """
        return self.health is not None or self.admin == "maint"

    def weight(self, configured: int, limit: int = 65_535) -> int:
        """The weight to use: 0 while drained or in maintenance, else scaled by the percentage.

        ``configured * weight_percent // 100``, at most ``limit``.
        """
        if self.admin in ("drain", "maint"):
            return 0
        if self.weight_percent is None:
            return configured
        return min(limit, configured * self.weight_percent // 100)

    def updated(self, newer: AgentReport) -> AgentReport:
        """This standing report with ``newer``'s words applied; unsaid words keep their value."""
        return AgentReport(
            health=newer.health if newer.health is not None else self.health,
            admin=newer.admin if newer.admin is not None else self.admin,
            weight_percent=(
                newer.weight_percent if newer.weight_percent is not None else self.weight_percent
            ),
            maxconn=newer.maxconn if newer.maxconn is not None else self.maxconn,
            description=newer.description,
            ignored=newer.ignored,
        )

    def summary(self) -> str:
        """The report as words, for logs and status (``up drain 75% maxconn:30 (text)``)."""
        words: list[str] = [w for w in (self.health, self.admin) if w is not None]
        if self.weight_percent is not None:
            words.append(f"{self.weight_percent}%")
        if self.maxconn is not None:
            words.append(f"maxconn:{self.maxconn}")
        text = " ".join(words) or "no change"
        if self.description:
            text += f" ({self.description})"
        if self.ignored:
            text += f"; ignored {' '.join(self.ignored)!r}"
        return text


class AgentReplyError(ValueError):
    """An agent's reply was not one usable line; ``reason`` says what was wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's verdict. ``at`` is monotonic; ``wall`` is for people reading status.

    ``agent`` is set for agent probes that got a usable answer (and, from the
    :class:`~dispatcher.backends.health.Prober`, carries the agent's standing report).
    ``timed_out`` is set when the deadline ended the probe (``duration`` then tells how long
    after it started the prober noticed: much more than the timeout means the prober itself
    was late).
    """

    ok: bool
    detail: str
    at: float
    wall: dt.datetime
    duration: float
    agent: AgentReport | None = None
    timed_out: bool = False


# --- the agent's line (pure) ----------------------------------------------------------


def parse_agent_reply(data: bytes) -> AgentReport:
    """Parse what an agent sent: its first line, up to the first CR or LF.

    Words are separated by spaces, tabs or commas, in any order, case-insensitive; the last
    word of each kind wins. ``NN%`` is a weight percentage, ``maxconn:N`` a connection limit,
    and a word starting with ``#`` starts a free-text description that runs to the line's
    end. Unknown words are collected in :attr:`AgentReport.ignored`. Raises
    :class:`AgentReplyError` (and nothing else) when there is no complete line or the line
    holds a NUL byte.
    """
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    if not ends:
        raise AgentReplyError(f"no complete line (no CR or LF in {len(data)} byte(s))")
    line = data[: min(ends)]
    if b"\0" in line:
        raise AgentReplyError("a NUL byte in the line")
    return _report(line.decode("latin-1"))


def _report(line: str) -> AgentReport:
    health: AgentHealth | None = None
    admin: AgentAdmin | None = None
    percent: int | None = None
    maxconn: int | None = None
    description = ""
    ignored: list[str] = []
    for match in _WORD.finditer(line):
        word = match.group()
        lower = word.lower()
        if word.startswith("#"):
            description = line[match.start() + 1 :].strip(" \t")
            break
        if lower in _HEALTH:
            health = _HEALTH[lower]
        elif lower in _ADMIN:
            admin = _ADMIN[lower]
        elif word[0].isdigit() and "%" in word and (value := _percent(word)) is not None:
            percent = value
        elif lower.startswith("maxconn:") and (count := _whole(word[8:])) is not None:
            maxconn = count
        else:
            ignored.append(word)
    return AgentReport(health, admin, percent, maxconn, description, tuple(ignored))


def _percent(word: str) -> int | None:
    """``75%`` -> 75 (clamped to 25600, like HAProxy); anything else -> ``None``."""
    digits = word[:-1]
    if not word.endswith("%") or (value := _whole(digits)) is None:
        return None
    return min(value, MAX_AGENT_PERCENT)


def _whole(digits: str) -> int | None:
    """ASCII digits -> an int (huge values saturate); anything else -> ``None``."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 9 else 10**9


# --- the probes (edges) ---------------------------------------------------------------


async def probe_http(
    client: httpx.AsyncClient, url: str, expect: str, timeout: float
) -> ProbeResult:
    """GET ``url``; success is a 2xx answer whose body (first 64 KiB) contains ``expect``.

    The request says ``Accept-Encoding: identity``. A body that is compressed anyway
    (``gzip``, ``deflate``, stacked) is inflated within the caps of
    :class:`~dispatcher.backends.inflate.BodyDecoder`; any other coding, or a corrupt one,
    fails the check with a detail naming it. Nothing is read once ``expect`` is found.
    """
    return await _timed(lambda: _fetch(client, url, expect, timeout), timeout)


async def check_http(checker: HttpChecker, url: str, expect: str, timeout: float) -> ProbeResult:
    """:func:`probe_http`'s check, the same limits and verdicts, without an HTTP client
    library: one connection, one request, a lean reader (:mod:`dispatcher.backends.httpcheck`).
    What the prober uses unless it was given an httpx client."""
    return await _timed(lambda: _check(checker, url, expect), timeout)


async def _check(checker: HttpChecker, url: str, expect: str) -> Outcome:
    ok, detail = await checker.fetch(url, expect)
    return ok, detail, None


async def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    """Connect to ``host:port`` over TCP and close at once; success is an accepted connection."""
    return await _timed(lambda: _connect_only(host, port), timeout)


async def probe_agent(host: str, port: int, timeout: float) -> ProbeResult:
    """Connect to the agent at ``host:port``, read one line, parse it (HAProxy agent-check).

    Nothing is sent. ``ok`` is ``True`` when a line arrived within ``timeout`` and it does not
    declare the server down (``down``/``fail``/``stopped``) or in maintenance (``maint``);
    ``agent`` then holds the parsed report. A refused connection, a timeout, a closed
    connection or a line without an end (1 KiB at most) are failures with ``agent=None``.
    """
    return await _timed(lambda: _ask_agent(host, port), timeout)


Outcome = tuple[bool, str, AgentReport | None]


async def _timed(attempt: Callable[[], Awaitable[Outcome]], timeout: float) -> ProbeResult:
    """Run one attempt under ``timeout``, turning every network failure into a verdict."""
    start = time.monotonic()
    wall = dt.datetime.now(dt.UTC)
    agent: AgentReport | None = None
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            ok, detail, agent = await attempt()
    except TimeoutError:
        ok, detail, timed_out = False, f"no answer within {timeout:g}s", True
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except OSError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    end = time.monotonic()
    return ProbeResult(
        ok=ok,
        detail=detail,
        at=end,
        wall=wall,
        duration=end - start,
        agent=agent,
        timed_out=timed_out,
    )


async def _fetch(client: httpx.AsyncClient, url: str, expect: str, timeout: float) -> Outcome:
    # The client's own timeouts (5 s per step by default) must not cut a longer check
    # short: the deadline in _timed is the one that counts.
    request = client.build_request("GET", url, headers=PROBE_HEADERS, timeout=timeout)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        status = response.status_code
        if not 200 <= status < 300:
            return False, f"HTTP {status}", None
        if not expect:
            return True, f"HTTP {status}", None
        try:
            found, searched = await _search(response, expect.encode())
        except UndecodableBody as exc:
            return False, f"HTTP {status}, {exc.reason}", None
    finally:
        await response.aclose()
    if not found:
        return False, f"HTTP {status}, body lacks {expect!r}{searched}", None
    return True, f"HTTP {status}", None


async def _search(response: httpx.Response, wanted: bytes) -> tuple[bool, str]:
    """Look for ``wanted`` in the body: raw bytes off the wire (``aiter_raw``, no automatic
    decompression) through a :class:`~dispatcher.backends.inflate.BodySearch`. (A chunked
    body's framing is removed by the HTTP client before counting here, each chunk being a
    piece; a client from ``probe_client`` counts the framing too, in its per-connection
    wire cap.)

    Returns whether it was found and, when the body was compressed, what was searched.
    """
    search = BodySearch(wanted, codings(response.headers.get_list("content-encoding")))
    async for received in response.aiter_raw():
        if search.feed(received):
            break
        # Pieces already buffered come out of the HTTP client without a pause: let the
        # loop (and the deadline) run between them.
        await asyncio.sleep(0)
    return search.found, search.searched()


async def _connect_only(host: str, port: int) -> Outcome:
    _, writer = await asyncio.open_connection(host, port)
    await _close(writer)
    return True, "connected", None


async def _ask_agent(host: str, port: int) -> Outcome:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        data = await _read_line(reader)
    finally:
        await _close(writer)
    try:
        report = parse_agent_reply(data)
    except AgentReplyError as exc:
        return False, f"agent: {exc.reason}", None
    return report.serving, f"agent: {report.summary()}", report


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """Bytes up to and including the first CR or LF, or all there were at EOF or the cap."""
    data = b""
    while len(data) < MAX_AGENT_LINE and b"\n" not in data and b"\r" not in data:
        chunk = await reader.read(MAX_AGENT_LINE - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


__all__ = [
    "ADMIN_WORDS",
    "DOWN_WORDS",
    "HEALTH_WORDS",
    "MAX_BODY",
    "PROBE_HEADERS",
    "AgentAdmin",
    "AgentHealth",
    "AgentReplyError",
    "AgentReport",
    "ProbeResult",
    "check_http",
    "parse_agent_reply",
    "probe_agent",
    "probe_http",
    "probe_tcp",
]
