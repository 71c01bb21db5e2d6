"""The lean HTTP check's reader (pure, property-tested), its requests, and the prober's cost
controls: probes on a tick grid, spread over the interval, and a quick stop.

The lean check against real (and hostile) sites is held to the same spec as the httpx probe
in tests/test_health.py and tests/test_probe_hostile.py (the ``fetch`` fixture).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import itertools
import string
import time
from collections import Counter

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.backends.health import TICK, Prober, ProbeResult, Target, phase
from dispatcher.backends.httpcheck import MAX_CHUNK_LINE, Prepared, ResponseReader, Verdict
from dispatcher.backends.inflate import MAX_PIECES
from dispatcher.backends.wire import MAX_HEAD, MAX_WIRE

# --- the reader, pure -------------------------------------------------------------------------


def read(response: bytes, expect: str = "OK", *, cuts: list[int] | None = None) -> Verdict:
    """Feed ``response`` (cut at ``cuts``) to a reader, then the end of the connection."""
    reader = ResponseReader(expect)
    edges = [0, *sorted(set(cuts or [])), len(response)]
    for start, end in itertools.pairwise(edges):
        if start < end and (verdict := reader.feed(response[start:end])) is not None:
            return verdict
    return reader.eof()


def head(status: str = "200 OK", *headers: str, eol: str = "\r\n") -> bytes:
    return (eol.join([f"HTTP/1.1 {status}", *headers]) + eol + eol).encode()


def chunked(body: bytes, size: int, extension: str = "") -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension.encode(), p) for p in pieces)
    return framed + b"0\r\nX-Trailer: yes\r\n\r\n"


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        (head("200 OK", "Content-Length: 2") + b"OK", (True, "HTTP 200")),
        (head("200", "Content-Length: 2") + b"OK", (True, "HTTP 200")),  # no reason phrase
        (head("200 OK", "Content-Length: 2", eol="\n") + b"OK", (True, "HTTP 200")),  # bare LF
        (head("503 Busy", "Content-Length: 2") + b"OK", (False, "HTTP 503")),
        (head("200 OK", "Content-Length: 4") + b"nope", (False, "HTTP 200, body lacks 'OK'")),
        (head("204 No Content"), (False, "HTTP 204, body lacks 'OK'")),
        (head("200 OK") + b"all OK, until the end", (True, "HTTP 200")),  # ends at close
        (head("200 OK") + b"never", (False, "HTTP 200, body lacks 'OK'")),
        (head("200 OK", "Transfer-Encoding: chunked") + chunked(b"xxOKxx", 1), (True, "HTTP 200")),
        (
            head("200 OK", "transfer-encoding: Chunked") + chunked(b"abc" * 10, 7, ";ext=1"),
            (False, "HTTP 200, body lacks 'OK'"),
        ),
        (
            head("100 Continue")
            + head("102 Processing")
            + head("200 OK", "Content-Length: 2")
            + b"OK",
            (True, "HTTP 200"),
        ),
        (
            head("200 OK", "Content-Encoding: gzip", "Content-Length: 23")
            + gzip.compress(b"OK", mtime=0),
            (True, "HTTP 200"),
        ),
        (
            head("200 OK", "Content-Encoding: br", "Content-Length: 2") + b"OK",
            (
                False,
                "HTTP 200, Content-Encoding 'br' is not supported (the probe asks for identity)",
            ),
        ),
        (
            head("200 OK", "Content-Length: 2", "Content-Length: 2") + b"OK",  # equal: fine
            (True, "HTTP 200"),
        ),
        (
            head("200 OK", "Content-Length: 2", "Content-Length: 3") + b"OK!",
            (False, "RemoteProtocolError: bad Content-Length"),
        ),
        (
            head("200 OK", "Transfer-Encoding: gzip") + b"OK",
            (False, "RemoteProtocolError: only Transfer-Encoding: chunked is supported"),
        ),
        (
            head("200 OK", "Bad Header: x") + b"OK",
            (False, "RemoteProtocolError: malformed header line b'Bad Header: x'"),
        ),
        (b"SSH-2.0-OpenSSH\r\n\r\n", (False, "RemoteProtocolError: not an HTTP status line")),
        (b"", (False, "RemoteProtocolError: Server disconnected without sending a response.")),
        (
            head("200 OK", "Content-Length: 10") + b"short",
            (False, "RemoteProtocolError: peer closed connection without sending complete"),
        ),
        (
            head("200 OK", "Transfer-Encoding: chunked") + b"zz\r\nOK\r\n",
            (False, "RemoteProtocolError: bad chunk size line b'zz'"),
        ),
    ],
)
def test_verdicts(response: bytes, verdict: Verdict) -> None:
    ok, detail = read(response)
    assert ok == verdict[0]
    assert detail.startswith(verdict[1])


def test_the_expected_text_is_found_across_pieces_and_nothing_more_is_read() -> None:
    reader = ResponseReader("needle")
    assert reader.feed(head("200 OK", "Content-Length: 100") + b"hay nee") is None
    assert reader.feed(b"dle and more") == (True, "HTTP 200")


def test_no_expect_means_any_2xx_without_reading_the_body() -> None:
    assert ResponseReader("").feed(head("299 Odd", "Content-Length: 9")) == (True, "HTTP 299")


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD + 10), "response head over 16384 bytes"),
        (b"HTTP/1.1 200 OK\r\n" + b"a:b\r\n" * 101 + b"\r\n", "response head over 100 header"),
        (  # a second head after a 1xx gets the limits afresh
            head("100 Continue", *["a:b"] * 90) + b"HTTP/1.1 200 OK\r\n" + b"a:b\r\n" * 101,
            "response head over 100 header lines",
        ),
        (  # chunk framing counts on the wire: 1 KiB of extension per byte of body
            head("200 OK", "Transfer-Encoding: chunked")
            + (b"1;" + b"x" * (MAX_CHUNK_LINE - 10) + b"\r\nz\r\n") * 200,
            f"ReadError: the site sent more than {MAX_WIRE} bytes",
        ),
        (
            head("200 OK", "Transfer-Encoding: chunked") + b"1\r\nz\r\n" * (MAX_PIECES + 10),
            f"HTTP 200, the body came in more than {MAX_PIECES} pieces",
        ),
        (
            head("200 OK", "Transfer-Encoding: chunked") + b"1;" + b"x" * MAX_CHUNK_LINE,
            f"RemoteProtocolError: a chunk line over {MAX_CHUNK_LINE} bytes",
        ),
    ],
)
@pytest.mark.parametrize("step", [1 << 20, 4096, 7])
def test_the_limits_hold_however_the_answer_is_cut(response: bytes, detail: str, step: int) -> None:
    ok, got = read(response, cuts=list(range(step, len(response), step)))
    assert not ok
    assert detail in got


def test_more_than_the_body_cap_is_never_searched() -> None:
    body = b"x" * (64 * 1024) + b"OK"
    assert read(head("200 OK", f"Content-Length: {len(body)}") + body) == (
        False,
        "HTTP 200, body lacks 'OK'",
    )


# --- properties ---------------------------------------------------------------------------

texts = st.text(string.ascii_letters + " ", max_size=300)
headers = st.lists(
    st.tuples(
        st.sampled_from(["X-A", "Server", "Cache-Control", "Set-Cookie", "ETag"]),
        st.text(string.ascii_letters + string.digits + " ;=,", max_size=40),
    ),
    max_size=6,
)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A well-formed response, and whether the check should pass (2xx and "OK" in the body)."""
    status = draw(st.sampled_from([200, 201, 204, 301, 404, 503]))
    body = draw(texts).encode()
    extra = [f"{name}: {value.strip()}" for name, value in draw(headers)]
    coding = draw(st.sampled_from(["", "gzip"]))
    payload = gzip.compress(body) if coding else body
    if coding:
        extra.append("Content-Encoding: gzip")
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status == 204:
        payload, framing, body = b"", "length", b""
    if framing == "length":
        extra.append(f"Content-Length: {len(payload)}")
    elif framing == "chunked":
        extra.append("Transfer-Encoding: chunked")
        payload = chunked(payload, draw(st.integers(1, 64)))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    response = head(f"{status} Reason", *extra, eol=eol) + payload
    return response, 200 <= status < 300 and b"OK" in body


@settings(max_examples=300)
@given(responses(), st.lists(st.floats(0, 1), max_size=12))
def test_any_answer_cut_anywhere_gets_its_right_verdict(
    answer: tuple[bytes, bool], fractions: list[float]
) -> None:
    response, passes = answer
    whole = read(response)
    assert whole[0] == passes, (response, whole)
    assert read(response, cuts=[int(f * len(response)) for f in fractions]) == whole


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_every_single_cut_gives_the_same_verdict(eol: str) -> None:
    response = head("200 OK", "Transfer-Encoding: chunked", eol=eol) + chunked(b"abcOKdef", 3)
    for cut in range(1, len(response)):
        assert read(response, cuts=[cut]) == (True, "HTTP 200"), cut
        assert read(response, cuts=[cut, cut + 1, cut + 2]) == (True, "HTTP 200"), cut


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=10), st.sampled_from(["OK", ""]))
def test_any_bytes_get_a_verdict_and_nothing_raises(pieces: list[bytes], expect: str) -> None:
    reader = ResponseReader(expect)
    verdict = None
    for piece in pieces:
        if (verdict := reader.feed(piece)) is not None:
            break
    ok, detail = verdict or reader.eof()
    assert detail
    assert not ok or detail.startswith("HTTP 2")


@given(
    st.sampled_from(["http", "https"]),
    st.sampled_from(["example.com", "127.0.0.1", "[::1]", "h-1.example"]),
    st.sampled_from(["", ":80", ":443", ":8080"]),
    st.text(string.printable.strip(string.whitespace) + " ", max_size=40),
)
def test_the_request_is_the_one_httpx_would_send(
    scheme: str, host: str, port: str, path: str
) -> None:
    url = f"{scheme}://{host}{port}/{path.replace('#', '')}"
    request = httpx.Request("GET", url)
    prepared = Prepared.for_url(url)
    line, *lines = prepared.request.decode().split("\r\n")
    assert line == f"GET {request.url.raw_path.decode()} HTTP/1.1"
    assert f"Host: {request.headers['host']}" in lines
    assert "Accept-Encoding: identity" in lines
    assert "Connection: close" in lines
    assert prepared.port == request.url.port or prepared.port == (443 if scheme == "https" else 80)
    assert prepared.tls == (scheme == "https")


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        Prepared.for_url("ftp://example.com/")


# --- the prober: a tick grid, spread, and a quick stop ------------------------------------------


def test_phases_spread_keys_evenly_over_the_interval() -> None:
    phases = [phase(f"site-{i}") for i in range(20_000)]
    assert all(0 < p <= 1 for p in phases)
    assert phase("site-1") == phases[1]  # fixed per key
    slots = Counter(int(p * 40) for p in phases)  # 40 ticks of a 2 s interval
    assert len(slots) == 40
    assert min(slots.values()) > 0.7 * 500
    assert max(slots.values()) < 1.3 * 500


class Starts:
    """A probe (no socket) that notes when each probe started."""

    def __init__(self) -> None:
        self.at: list[float] = []

    async def __call__(self, _target: Target) -> ProbeResult:
        self.at.append(time.monotonic())
        wall = dt.datetime.now(dt.UTC)
        return ProbeResult(True, "HTTP 200", time.monotonic(), wall, 0.0)


@pytest.mark.anyio
async def test_many_targets_are_probed_in_a_few_ticks_per_interval() -> None:
    starts = Starts()
    prober = Prober(lambda *_: None, probes={"http": starts})
    interval = 0.4
    targets = [Target(f"s{i}", "http://127.0.0.1:9/", "", interval, 0.3, 1, 1) for i in range(400)]
    try:
        await prober.sync(targets)
        first_round = len(starts.at)
        await asyncio.sleep(interval * 2.5)
    finally:
        await prober.close()
    later = starts.at[first_round:]
    assert len(later) >= 400  # every target, at least once more
    # in batches on the grid (spread evenly, 40 % would start this close after a tick)...
    on_grid = [t for t in later if t % TICK < 0.02]
    assert len(on_grid) > 0.8 * len(later)
    # ...and spread over the interval's ticks, not all in one burst
    ticks = Counter(int(t // TICK) for t in later)
    assert len(ticks) >= interval / TICK
    assert max(ticks.values()) < len(later) / 4


@pytest.mark.anyio
async def test_a_thousand_targets_stop_at_once() -> None:
    prober = Prober(lambda *_: None, probes={"http": Starts()})
    targets = [Target(f"s{i}", "http://127.0.0.1:9/", "", 60, 1, 1, 1) for i in range(1000)]
    await prober.sync(targets)
    start = time.monotonic()
    await prober.close()
    assert time.monotonic() - start < 1.0
    assert prober.health("s1").state == "unknown"  # forgotten
