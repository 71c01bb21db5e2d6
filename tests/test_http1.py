"""The public HTTP/1.1 edge over real loopback sockets, raw bytes in and out: every behaviour
of the protocol and every limit (dispatcher.http1, dispatcher.edge)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.addresses import bind
from dispatcher.app import DispatchApp, DispatchCore
from dispatcher.backends.sites import SiteSpec
from dispatcher.edge import PublicEdge
from dispatcher.http1 import EdgeLimits
from tests.test_app import FakeFarm, farm

EU = SiteSpec("eu", "http://127.0.0.2:9001", weight=1)
LIMITS = EdgeLimits(
    max_request_head=4096,
    max_header_lines=20,
    head_timeout=0.4,
    keep_alive_timeout=0.4,
    max_connections=50,
    graceful_timeout=1.0,
    max_body=64 * 1024,
)
GET = b"GET /a?b=1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n"


@dataclass
class Served:
    edge: PublicEdge
    farm: FakeFarm
    loop: asyncio.AbstractEventLoop
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.edge.port

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sockets.append(sock)  # closed when the test ends
        return sock

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.edge.stop(), self.loop).result(timeout=10)


@contextmanager
def serve(
    limits: EdgeLimits = LIMITS, up: set[str] | None = None, access_log: bool = False
) -> Iterator[Served]:
    """A real edge on a loopback port, on uvloop in a thread of its own."""
    fake = farm([EU], {"eu"} if up is None else up)
    loop = uvloop.new_event_loop()
    edge = PublicEdge(DispatchCore(fake), bind("127.0.0.1:0"), limits=limits, access_log=access_log)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(edge.start(), loop).result(timeout=5)
    served = Served(edge, fake, loop)
    try:
        yield served
    finally:
        for sock in served.sockets:
            sock.close()
        if not edge.stopping:
            served.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    raw_head: bytes


def read_response(sock: socket.socket, buffer: bytearray, *, head: bool = False) -> Response:
    """One response off the socket (``buffer`` keeps what was read beyond it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {bytes(buffer)!r}")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    raw_head = bytes(buffer[:end])
    del buffer[: end + 4]
    lines = raw_head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        assert name, line
        assert name == name.strip(), line
        headers[name.lower()] = value.strip()
    length = 0 if head else int(headers.get(b"content-length", b"0"))
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return Response(status, headers, body, raw_head)


def exchange(served: Served, data: bytes, *, head: bool = False) -> tuple[Response, socket.socket]:
    sock = served.connect()
    sock.sendall(data)
    return read_response(sock, bytearray(), head=head), sock


def closed(sock: socket.socket, timeout: float = 3.0) -> bool:
    """Whether the server closed the connection (EOF or reset) within ``timeout``, with no
    more bytes sent."""
    sock.settimeout(timeout)
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert rest == b"", rest
    return True


# --- the answer, keep-alive, pipelining ---------------------------------------------------


def test_a_redirect_with_date_and_keep_alive() -> None:
    with serve() as served:
        response, sock = exchange(served, GET)
        assert response.status == 302
        assert response.headers[b"location"] == b"http://127.0.0.2:9001/a?b=1"
        assert response.headers[b"content-length"] == b"0"
        assert response.headers[b"date"].endswith(b" GMT")
        assert b"connection" not in response.headers
        sock.sendall(GET)  # the same connection serves the next request
        assert read_response(sock, bytearray()).status == 302
        assert served.farm.redirects["eu"] == 2


def test_pipelined_requests_are_answered_in_order() -> None:
    with serve() as served:
        sock = served.connect()
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(20)))
        buffer = bytearray()
        locations = [read_response(sock, buffer).headers[b"location"] for _ in range(20)]
        assert locations == [b"http://127.0.0.2:9001/%d" % i for i in range(20)]


def test_head_gets_the_headers_without_the_body() -> None:
    with serve(up=set()) as served:  # the sorry page has a body
        sock = served.connect()
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n" + GET)
        buffer = bytearray()
        head = read_response(sock, buffer, head=True)
        assert head.status == 503
        assert int(head.headers[b"content-length"]) > 0
        full = read_response(sock, buffer)  # the next answer follows at once: no body between
        assert full.status == 503
        assert b"unavailable" in full.body


def test_http10_closes_unless_it_asks_for_keep_alive() -> None:
    with serve() as served:
        response, sock = exchange(served, b"GET /x HTTP/1.0\r\n\r\n")
        assert response.status == 302
        assert response.headers[b"connection"] == b"close"
        assert closed(sock)
        response, sock = exchange(served, b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert response.headers[b"connection"] == b"keep-alive"
        sock.sendall(b"GET /y HTTP/1.0\r\n\r\n")
        assert read_response(sock, bytearray()).headers[b"location"].endswith(b"/y")


def test_connection_close_is_honoured_and_nothing_after_it_is_read() -> None:
    with serve() as served:
        last = b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        response, sock = exchange(served, last + GET)
        assert response.headers[b"connection"] == b"close"
        assert closed(sock)
        assert served.farm.redirects["eu"] == 1


# --- bodies -------------------------------------------------------------------------------


def test_request_bodies_are_read_and_discarded() -> None:
    with serve() as served:
        sock = served.connect()
        sized = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        chunked = (
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        trailers = (  # (what a trailer says is not looked at: no late 100 Continue)
            b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.sendall(sized + chunked + trailers + GET)
        buffer = bytearray()
        answers = [read_response(sock, buffer) for _ in range(4)]
        assert [a.status for a in answers] == [302, 302, 302, 302]
        assert [a.headers[b"location"][21:] for a in answers] == [b"/form", b"/c", b"/t", b"/a?b=1"]


def test_a_body_beyond_the_cap_is_413_and_close() -> None:
    with serve() as served:
        big = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (1 << 30)
        response, sock = exchange(served, big)
        assert response.status == 413
        assert closed(sock)
        chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"x" * 16 * 1024)
        chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        response, sock = exchange(served, chunked + chunk * 5)
        assert response.status == 413
        assert closed(sock)


@pytest.mark.parametrize(
    "headers",
    [
        [b"Content-Length: %d", b"Expect: 100-continue"],
        [b"Expect: 100-continue", b"Content-Length: %d"],
        [b"Expect: 100-continue", b"Content-Length: %d", b"Accept: */*"],
    ],
)
def test_expect_100_continue_gets_100_then_the_answer_on_a_kept_connection(
    headers: list[bytes],
) -> None:
    with serve() as served:
        head = b"".join(h + b"\r\n" for h in headers) + b"\r\n"
        sock = served.connect()
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: h\r\n" + head % 5)
        buffer = bytearray()
        assert read_response(sock, buffer).status == 100
        sock.sendall(b"hello" + GET)
        assert read_response(sock, buffer).headers[b"location"].endswith(b"/up")
        assert read_response(sock, buffer).headers[b"location"].endswith(b"/a?b=1")
        response, sock = exchange(served, b"PUT / HTTP/1.1\r\n" + head % (1 << 20))
        assert response.status == 413  # at once, no 100
        assert closed(sock)
        empty = b"PUT / HTTP/1.1\r\nHost: h\r\n" + head % 0  # no body: no 100
        assert exchange(served, empty)[0].status == 302


@pytest.mark.parametrize("body", [b"", b"abc"])
def test_a_body_that_stops_coming_is_408(body: bytes) -> None:
    with serve() as served:
        sock = served.connect()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + body)
        started = time.monotonic()
        response = read_response(sock, bytearray())
        assert response.status == 408
        assert closed(sock)
        assert 0.3 < time.monotonic() - started < 2.0


# --- what is refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost h\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_are_400_and_close(request_bytes: bytes) -> None:
    with serve() as served:
        response, sock = exchange(served, request_bytes)
        assert response.status == 400
        assert response.headers[b"connection"] == b"close"
        assert closed(sock)


@pytest.mark.parametrize(
    "line",
    [
        b"GET *@evil.example/ HTTP/1.1",
        b"GET @evil.example/ HTTP/1.1",
        b"GET http://evil.example/x HTTP/1.1",
        b"CONNECT evil.example:443 HTTP/1.1",
        b"GET * HTTP/1.1",
    ],
)
def test_a_target_that_is_not_a_path_is_400_never_a_redirect(line: bytes) -> None:
    with serve() as served:
        response, _ = exchange(served, line + b"\r\nHost: h\r\n\r\n")
        assert response.status == 400
        assert b"location" not in response.headers
        assert served.farm.redirects == {}


def test_options_asterisk_says_what_is_allowed() -> None:
    with serve() as served:
        response, sock = exchange(served, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
        assert response.status == 200
        assert b"GET" in response.headers[b"allow"]
        assert response.headers[b"content-length"] == b"0"
        sock.sendall(GET)
        assert read_response(sock, bytearray()).status == 302


def test_an_upgrade_request_is_answered_then_closed() -> None:
    with serve() as served:
        upgrade = (
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        response, sock = exchange(served, upgrade + b"\x81\x05hello")
        assert response.status == 302
        assert closed(sock)


# --- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(21)) + b"\r\n",
    ],
    ids=["target", "one header", "header lines"],
)
def test_a_head_beyond_the_limits_is_431_and_close(request_bytes: bytes) -> None:
    with serve() as served:
        response, sock = exchange(served, request_bytes)
        assert response.status == 431
        assert closed(sock)


def test_a_head_at_the_limits_is_served() -> None:
    with serve() as served:
        lines = b"".join(b"X-%d: 1\r\n" % i for i in range(19))
        response, _ = exchange(served, b"GET / HTTP/1.1\r\nHost: h\r\n" + lines + b"\r\n")
        assert response.status == 302


def test_an_endless_header_is_cut_off_and_answered() -> None:
    with serve() as served:
        sock = served.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
        sent_until_refused(sock, b"x" * 16384, 64)  # 1 MiB: read and dropped after the limit
        assert read_response(sock, bytearray()).status == 431
        assert closed(sock)
        sock.close()
        wait_for(lambda: not served.edge.connections)


def test_a_long_header_sent_in_pieces_does_not_count_against_the_next_head() -> None:
    with serve() as served:
        sock = served.connect()
        head = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nX-Long: "
        value = b"v" * 3000  # (the limit is 4096 bytes a head)
        sock.sendall(head)
        for piece in range(0, len(value), 1000):  # pieces read apart: no header completes
            time.sleep(0.05)
            sock.sendall(value[piece : piece + 1000])
        time.sleep(0.05)
        sock.sendall(b"\r\n\r\na")
        buffer = bytearray()
        assert read_response(sock, buffer).status == 302
        time.sleep(0.05)
        sock.sendall(head + value + b"\r\n\r\n")  # the same head at once, its body later
        time.sleep(0.05)
        sock.sendall(b"b")
        assert read_response(sock, buffer).status == 302


def sent_until_refused(sock: socket.socket, data: bytes, most: int) -> int:
    """How many times ``data`` could be sent before the send failed (closed, reset or timed
    out); ``most`` if it never did."""
    for sent in range(most):
        try:
            sock.sendall(data)
        except OSError:  # TimeoutError, BrokenPipeError, ConnectionResetError
            return sent
    return most


def test_a_head_that_does_not_arrive_in_time_is_408() -> None:
    with serve() as served:
        sock = served.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost:")
        started = time.monotonic()
        response = read_response(sock, bytearray())
        assert response.status == 408
        assert closed(sock)
        assert 0.3 < time.monotonic() - started < 2.0
        silent = served.connect()  # nothing sent: closed without a word
        assert closed(silent)


def test_an_idle_keep_alive_connection_is_closed() -> None:
    with serve() as served:
        response, sock = exchange(served, GET)
        assert response.status == 302
        started = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - started < 2.0


def busy(served: Served) -> socket.socket:
    """A connection in the middle of a request body (not merely waiting for a head)."""
    sock = served.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
    return sock


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_beyond_max_connections_a_new_connection_gets_503_at_once() -> None:
    limits = replace(LIMITS, max_connections=3, head_timeout=5.0)
    with serve(limits) as served:
        held = [busy(served) for _ in range(3)]
        wait_for(lambda: len(served.edge.connections) == 3)
        started = time.monotonic()
        response, sock = exchange(served, GET)
        assert response.status == 503
        assert response.headers[b"retry-after"] == b"1"
        assert closed(sock)
        assert time.monotonic() - started < 1.0
        for sock in held:
            sock.close()


def test_at_max_connections_the_longest_waiting_head_makes_room() -> None:
    limits = replace(LIMITS, max_connections=3, head_timeout=5.0, keep_alive_timeout=5.0)
    with serve(limits) as served:
        oldest = served.connect()
        oldest.sendall(b"GET / HTTP/1.1\r\nHo")  # half a head
        wait_for(lambda: len(served.edge.connections) == 1)
        others = [busy(served) for _ in range(2)]
        wait_for(lambda: len(served.edge.connections) == 3)
        response, _ = exchange(served, GET)
        assert response.status == 302
        assert closed(oldest)
        for sock in others:
            sock.close()


def test_a_client_that_never_reads_does_not_grow_the_servers_memory() -> None:
    with serve(replace(LIMITS, head_timeout=5.0, keep_alive_timeout=5.0)) as served:
        sock = served.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(1.0)
        request = b"GET /" + b"p" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
        sent = sent_until_refused(sock, request * 100, 100_000)  # the send blocks: timeout
        (conn,) = served.edge.connections
        assert conn.transport is not None
        buffered = conn.transport.get_write_buffer_size()
        assert buffered < 8 * 1024 * 1024, buffered
        assert sent < 100_000


# --- stop, access log ---------------------------------------------------------------------


def test_graceful_stop_closes_idle_connections_and_finishes_heads_in_flight() -> None:
    with serve(replace(LIMITS, head_timeout=5.0, keep_alive_timeout=5.0)) as served:
        _, idle = exchange(served, GET)
        partial = served.connect()
        partial.sendall(b"GET /late HTTP/1.1\r\nHost: h\r\n")
        wait_for(lambda: len(served.edge.connections) == 2)
        stopping = asyncio.run_coroutine_threadsafe(served.edge.stop(), served.loop)
        assert closed(idle, timeout=1.0)
        partial.sendall(b"\r\n")
        response = read_response(partial, bytearray())
        assert response.status == 302
        assert response.headers[b"connection"] == b"close"
        stopping.result(timeout=3)
        with pytest.raises(OSError):
            served.connect()


def test_graceful_stop_aborts_what_is_left_after_the_timeout() -> None:
    with serve(replace(LIMITS, head_timeout=5.0, graceful_timeout=0.3)) as served:
        partial = served.connect()
        partial.sendall(b"GET / HTTP/1.1\r\n")
        wait_for(lambda: len(served.edge.connections) == 1)
        started = time.monotonic()
        served.stop()
        assert time.monotonic() - started < 1.5
        assert closed(partial, timeout=1.0)


def test_the_access_log_has_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webfarm.access")
    with serve(access_log=True) as served:
        sock = served.connect()
        sock.sendall(GET + b"GET /two\r\n HTTP/1.1\r\n\r\n")  # the second is malformed
        buffer = bytearray()
        assert [read_response(sock, buffer).status for _ in range(2)] == [302, 400]
        wait_for(lambda: len(caplog.records) >= 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "webfarm.access"]
    assert len(lines) == 2
    assert lines[0].endswith('"GET /a?b=1 HTTP/1.1" 302')
    assert lines[1].endswith('"-" 400')


# --- hostile bytes ------------------------------------------------------------------------

SAMPLES = [
    GET,
    b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(max_size=8) | st.sampled_from([b"\r\n", b":", b" ", b"?"]))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@pytest.fixture(scope="module")
def shared() -> Iterator[Served]:
    with serve(replace(LIMITS, head_timeout=0.5, keep_alive_timeout=0.5)) as served:
        yield served


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(mutated(), st.binary(max_size=300)))
def test_any_bytes_get_well_formed_answers_or_a_close(shared: Served, data: bytes) -> None:
    sock = shared.connect()
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)  # all there is: the server answers what it can, closes
    buffer = bytearray()
    sock.settimeout(3.0)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    while buffer:
        response = read_response_from(buffer)
        assert response.status in (100, 200, 302, 400, 408, 413, 431), response.raw_head
    assert len(shared.edge.connections) < 20


def read_response_from(buffer: bytearray) -> Response:
    """One complete response parsed out of ``buffer``; an answer to HEAD carries no body,
    so when the bytes after a body are not the next answer, the body was not there."""

    class Replay:
        def recv(self, _: int) -> bytes:
            return b""

    saved = bytes(buffer)
    try:
        response = read_response(Replay(), buffer)  # type: ignore[arg-type]
    except ConnectionError:
        response = None
    if response is None or (buffer and not buffer.startswith(b"HTTP/1.1 ")):
        buffer[:] = saved
        response = read_response(Replay(), buffer, head=True)  # type: ignore[arg-type]
    return response


# --- both edges share one decision ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "raw_path", "status"),
    [
        ("GET", b"*@evil.example/", 400),
        ("GET", b"@evil.example/", 400),
        ("GET", b"", 400),
        ("HEAD", b"*", 400),
        ("OPTIONS", b"*", 200),
        ("GET", b"//evil.example/x", 302),  # a path: the site's authority stays in front
    ],
)
@pytest.mark.anyio
async def test_the_asgi_app_and_the_edge_agree_on_targets(
    method: str, raw_path: bytes, status: int
) -> None:
    fake = farm([EU], {"eu"})
    scope = {"type": "http", "method": method, "path": "", "raw_path": raw_path, "headers": []}
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await DispatchApp(fake)(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == status
    core_status, headers, body = DispatchCore(fake).answer(scope)
    assert core_status == status
    if status == 302:
        assert dict(headers)[b"location"] == b"http://127.0.0.2:9001//evil.example/x"
    if method == "HEAD":
        assert body == b""
    line = b"%s %s HTTP/1.1\r\nHost: h\r\n\r\n" % (method.encode(), raw_path or b"?x")
    with serve() as served:
        response, _ = exchange(served, line, head=method == "HEAD")
        assert response.status == status
