"""The HTTP probe against hostile sites: bombs, trickles, endless heads and bodies.

The decoder's caps are property-tested (pure); the probe (both of them: httpx with a
``probe_client()``, and the prober's lean ``check_http``) meets real loopback servers that
misbehave, and must end within its timeout + 0.2 s without the process's memory growing;
then a real ``farm-dispatcher serve`` probes a double-gzip bomb and must stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backends.httpcheck import HttpChecker
from dispatcher.backends.inflate import (
    MAX_INFLATED,
    MAX_LAYERS,
    BodyDecoder,
    UndecodableBody,
    codings,
)
from dispatcher.backends.probes import MAX_BODY, check_http, probe_http
from dispatcher.backends.wire import MAX_WIRE, WireBudget, probe_client
from tests.conftest import (
    ADMIN_TOKEN,
    FARM_DISPATCHER,
    Fetch,
    LoopbackSite,
    run_cli,
    skip_or_fail,
)
from tests.ports import free_port

GIB = 1 << 30

# --- bombs ---------------------------------------------------------------------------------


def zero_bomb(size: int, chunk: int = 1 << 20) -> bytes:
    """A gzip member of ``size`` zero bytes, built in a fraction of a second.

    After a full flush deflate's state is reset, so every ``chunk`` of zeros compresses to
    the same bytes: one block repeated, then a valid trailer (CRC-32 and size).
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(chunk)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()
    crc = 0
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + block * (size // chunk) + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


@pytest.fixture(scope="module")
def double_bomb() -> bytes:
    """About 2.5 KB that inflate twice to 1 GiB of zeros (``Content-Encoding: gzip, gzip``)."""
    return gzip.compress(zero_bomb(GIB), 9)


def test_the_bomb_is_a_real_bomb() -> None:
    small = zero_bomb(8 << 20)
    assert gzip.decompress(small) == bytes(8 << 20)  # valid, trailer and all
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert len(inflater.decompress(small[:2000])) > 1 << 20  # a 1000:1 ratio and more


# --- the decoder, pure ---------------------------------------------------------------------


def encode(data: bytes, names: list[str]) -> bytes:
    for name in names:
        if name == "gzip":
            data = gzip.compress(data)
        elif name == "deflate":
            data = zlib.compress(data)
        else:  # raw deflate, as some servers send for "deflate"
            raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            data = raw.compress(data) + raw.flush()
    return data


def decode_in_pieces(names: list[str], body: bytes, pieces: int, limit: int) -> bytes:
    decoder = BodyDecoder(["deflate" if n == "raw" else n for n in names], limit)
    step = max(1, len(body) // pieces)
    return b"".join(decoder.feed(body[i : i + step]) for i in range(0, len(body), step))


layers = st.lists(st.sampled_from(["gzip", "deflate", "raw"]), max_size=MAX_LAYERS)


@given(st.binary(max_size=3000), layers, st.integers(1, 40))
def test_any_stack_round_trips_fed_in_any_pieces(
    data: bytes, names: list[str], pieces: int
) -> None:
    assert decode_in_pieces(names, encode(data, names), pieces, MAX_INFLATED) == data


@given(st.integers(1, 200), layers.filter(bool), st.integers(1, 40), st.integers(1, 5000))
def test_no_layer_ever_gives_more_than_its_cap(
    kib: int, names: list[str], pieces: int, limit: int
) -> None:
    body = encode(bytes(kib * 1024), names)
    out = decode_in_pieces(names, body, pieces, limit)
    assert out == bytes(len(out))
    assert len(out) <= limit
    if len(names) == 1:  # (an outer layer's cap may cut an inner layer's input short)
        assert len(out) == min(limit, kib * 1024)


@given(st.lists(st.binary(max_size=300), max_size=8), layers, st.integers(1, 2000))
def test_any_bytes_decode_within_the_cap_or_fail_clearly(
    pieces: list[bytes], names: list[str], limit: int
) -> None:
    decoder = BodyDecoder(["deflate" if n == "raw" else n for n in names], limit)
    out = b""
    with contextlib.suppress(UndecodableBody):
        for piece in pieces:
            out += decoder.feed(piece)
    assert len(out) <= (limit if names else sum(map(len, pieces)))


def test_the_double_bomb_gives_at_most_the_cap_in_milliseconds(double_bomb: bytes) -> None:
    decoder = BodyDecoder(["gzip", "gzip"])
    start = time.monotonic()
    out = decoder.feed(double_bomb)
    assert (len(out), decoder.full) == (MAX_INFLATED, True)
    assert decoder.feed(double_bomb) == b""  # full: the rest is not looked at
    assert time.monotonic() - start < 0.1


def test_several_gzip_members_are_one_body_and_trailing_garbage_is_ignored() -> None:
    body = gzip.compress(b"first ") + gzip.compress(b"second") + b"\0\0garbage"
    assert BodyDecoder(["gzip"]).feed(body) == b"first second"


@pytest.mark.parametrize(
    ("names", "body", "reason"),
    [
        (["gzip"], b"not gzip at all", "the gzip layer does not inflate"),
        (["deflate"], b"\x78\x9c\xff\xff\xff", "the deflate layer does not inflate"),
        (["gzip", "gzip"], gzip.compress(b"only once", mtime=0), "the gzip layer does not inflate"),
    ],
)
def test_corrupt_bodies_are_clear_failures(names: list[str], body: bytes, reason: str) -> None:
    with pytest.raises(UndecodableBody, match=reason):
        BodyDecoder(names).feed(body)


def test_codings_are_read_in_order_and_unknown_ones_refused() -> None:
    assert codings(["gzip, X-GZIP", " identity ,deflate,"]) == ["gzip", "gzip", "deflate"]
    assert codings([]) == []
    with pytest.raises(UndecodableBody, match="'br' is not supported"):
        codings(["gzip, br"])
    with pytest.raises(UndecodableBody, match=f"more than {MAX_LAYERS}"):
        codings([", ".join(["gzip"] * 100)])


# --- hostile servers, for real -----------------------------------------------------------


class Hostile:
    """A loopback HTTP server in its own thread (its own event loop), misbehaving by path.

    Running in a thread keeps its writes independent of the probe's event loop, and lets a
    dispatcher subprocess probe it too.
    """

    def __init__(self, bomb: bytes) -> None:
        self.bomb = bomb
        self.port = 0
        self.requests: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    def start(self) -> None:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            path = head.split(b" ", 2)[1].decode()
            await MODES[path](self, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the prober hung up: that is the point
        except asyncio.CancelledError:
            pass  # stop() ends the handlers still running; asyncio would log it as an error
        finally:
            self._handlers.discard(task)
            writer.close()

    async def bomb_gzip_gzip(self, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % len(self.bomb) + self.bomb)
        await writer.drain()
        await asyncio.sleep(30)  # and keep the connection open

    async def trickle_head(self, writer: asyncio.StreamWriter) -> None:
        await self._trickle(writer, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000)

    async def trickle_body(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        await self._trickle(writer, b"b" * 10_000)

    async def _trickle(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.01)

    async def endless_header(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await self._forever(writer, b"X-Filler: " + b"f" * 1000 + b"\r\n")

    async def endless_line(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Filler: ")
        await self._forever(writer, b"f" * 65536)

    async def endless_body(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await self._forever(writer, b"10000\r\n" + b"z" * 65536 + b"\r\n")

    async def endless_gzip(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n")
        writer.write(self.bomb[:10])  # zero_bomb's header, then the same block forever
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        await self._forever(
            writer, deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)
        )

    async def gzipped_ok(self, writer: asyncio.StreamWriter) -> None:
        await self._answer(writer, b"gzip, deflate", encode(b"all OK here", ["gzip", "deflate"]))

    async def many_headers(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"a:b\r\n" * 20_000 + b"Content-Length: 2\r\n\r\nOK")
        await writer.drain()

    async def slow_ok(self, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        await self._answer(writer, b"identity", b"OK")

    async def brotli(self, writer: asyncio.StreamWriter) -> None:
        await self._answer(writer, b"br", b"OK, but in brotli")

    async def _answer(self, writer: asyncio.StreamWriter, coding: bytes, body: bytes) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % (coding, len(body)) + body)
        await writer.drain()

    async def tiny_chunks(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await self._forever(writer, b"1\r\nz\r\n" * 10_000)

    async def _forever(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        while True:
            writer.write(data)
            await writer.drain()


MODES: dict[str, Callable[[Hostile, asyncio.StreamWriter], Coroutine[Any, Any, None]]] = {
    "/bomb": Hostile.bomb_gzip_gzip,
    "/trickle-head": Hostile.trickle_head,
    "/trickle-body": Hostile.trickle_body,
    "/endless-header": Hostile.endless_header,
    "/endless-line": Hostile.endless_line,
    "/endless-body": Hostile.endless_body,
    "/endless-gzip": Hostile.endless_gzip,
    "/tiny-chunks": Hostile.tiny_chunks,
    "/gzipped-ok": Hostile.gzipped_ok,
    "/brotli": Hostile.brotli,
    "/slow-ok": Hostile.slow_ok,
    "/many-headers": Hostile.many_headers,
}


@pytest.fixture(scope="module")
def hostile(double_bomb: bytes) -> Iterator[Hostile]:
    server = Hostile(double_bomb)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def kib(field: str, pid: int | str = "self") -> int:
    """A memory figure from /proc/PID/status, in KiB (0 when the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Set this process's VmHWM (peak RSS) back to its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


class LoopLag:
    """Measures the longest time the event loop went without running a 5 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.monotonic() - before - 0.005)


TIMEOUT = 0.5


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/bomb", "body lacks 'OK' (searched 65536 bytes inflated from"),
        ("/trickle-head", f"no answer within {TIMEOUT:g}s"),
        ("/trickle-body", f"no answer within {TIMEOUT:g}s"),
        ("/endless-header", "ReadError: response head over 16384 bytes"),
        ("/endless-line", "ReadError: response head over 16384 bytes"),
        ("/endless-body", "HTTP 200, body lacks 'OK'"),
        ("/endless-gzip", "inflating stopped at its cap"),
        ("/tiny-chunks", "HTTP 200, the body came in more than 4096 pieces"),
        ("/many-headers", "ReadError: response head over 100 header lines"),
    ],
)
async def test_a_hostile_site_costs_the_probe_its_timeout_and_no_memory(
    hostile: Hostile, fetch: Fetch, path: str, detail: str
) -> None:
    await fetch(hostile.url("/endless-body"), "OK", TIMEOUT)  # warm up
    reset_peak()
    before = kib("VmRSS")
    start = time.monotonic()
    async with LoopLag() as lag:
        result = await fetch(hostile.url(path), "OK", TIMEOUT)
    took = time.monotonic() - start
    grew = kib("VmHWM") - before
    print(f"{path}: {took:.3f}s, peak RSS +{grew} KiB, loop held at most {lag.worst:.4f}s")
    assert lag.worst < 0.2  # (a loaded machine alone can stall it tens of ms)
    assert not result.ok
    assert detail in result.detail
    assert took < TIMEOUT + 0.2, result
    assert grew < 4 * 1024, f"peak RSS grew by {grew} KiB"


@pytest.mark.anyio
async def test_the_probe_asks_for_identity_and_reads_at_most_64_kib(
    hostile: Hostile, fetch: Fetch
) -> None:
    await fetch(hostile.url("/endless-body"), "OK", TIMEOUT)
    assert b"\r\naccept-encoding: identity\r\n" in hostile.requests[-1].lower()
    assert MAX_BODY == 64 * 1024


@pytest.mark.anyio
async def test_a_compressed_answer_is_still_understood(hostile: Hostile, fetch: Fetch) -> None:
    result = await fetch(hostile.url("/gzipped-ok"), "OK", TIMEOUT)
    assert (result.ok, result.detail) == (True, "HTTP 200")
    result = await fetch(hostile.url("/brotli"), "OK", TIMEOUT)
    assert not result.ok
    assert "Content-Encoding 'br' is not supported" in result.detail


# --- a real dispatcher against the bomb ----------------------------------------------------


def family(root: int) -> list[int]:
    """``root`` and every process descended from it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def dispatcher_config(tmp_path: Path, hostile: Hostile, good: LoopbackSite, admin: int) -> Path:
    check = "interval = 0.5, timeout = 0.5, rise = 1, fall = 1"
    config = tmp_path / "farm.toml"
    config.write_text(f"""
[dispatcher]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:{admin}"
database_url = "sqlite:///farm.db"
admin_tokens = ["{ADMIN_TOKEN}"]

[pools.default]
policy = "weighted"
fallback = "sorry"

[[sites]]
name = "bomb"
base_url = "{hostile.url("")}"
check = {{ url = "/bomb", expect = "OK", {check} }}

[[sites]]
name = "good"
base_url = "{good.url}"
check = {{ url = "/health", expect = "OK", {check} }}
""")
    return config


@pytest.mark.anyio
async def test_a_real_dispatcher_probing_a_bomb_stays_fast_and_small(
    tmp_path: Path, hostile: Hostile
) -> None:
    good = LoopbackSite("good")
    await good.start()
    admin = free_port()
    config = dispatcher_config(tmp_path, hostile, good, admin)
    run_cli("db", "upgrade", "-c", str(config), check=True)
    log = tmp_path / "dispatcher.log"
    with log.open("wb") as output:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(
            [FARM_DISPATCHER, "serve", "-c", str(config)], stdout=output, stderr=output
        )
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    durations: list[float] = []
    seen: set[str] = set()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{admin}", headers=headers, trust_env=False
        ) as api:
            deadline = time.monotonic() + 20
            while len(durations) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.4)
                with contextlib.suppress(httpx.TransportError):
                    status = (await api.get("/api/v1/status")).json()
                    sites = {s["name"]: s for s in status["sites"]}
                    bomb = sites["bomb"]["last_probe"]
                    if bomb is not None and bomb["at"] not in seen:
                        seen.add(bomb["at"])
                        durations.append(bomb["duration"])
            assert len(durations) >= 6, (durations, log.read_text())
            assert sites["good"]["health"] == "up"
            assert sites["bomb"]["health"] == "down"
            assert "searched 65536 bytes inflated" in bomb["detail"]
        pids = family(proc.pid)
        peak = sum(kib("VmHWM", pid) for pid in pids)
        rss = sum(kib("VmRSS", pid) for pid in pids)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            await good.stop()
    assert max(durations) < 0.5 + 0.2, durations
    assert peak < 300 * 1024, f"dispatcher peak RSS {peak} KiB over {len(pids)} process(es)"
    print(f"bomb probe durations {durations}; dispatcher RSS {rss} KiB, peak {peak} KiB")


@pytest.mark.anyio
async def test_the_check_timeout_is_the_deadline_not_the_clients_own(hostile: Hostile) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=0.05) as impatient:
        result = await probe_http(impatient, hostile.url("/slow-ok"), "OK", TIMEOUT)
    assert (result.ok, result.detail) == (True, "HTTP 200")
    assert 0.2 <= result.duration < TIMEOUT


# --- the wire budget, pure, and over TLS ----------------------------------------------------


def feed_head(*reads: bytes) -> WireBudget:
    budget = WireBudget()
    for data in reads:
        budget.received(data)
    return budget


def test_a_head_split_anywhere_is_found_and_the_body_is_not_a_head() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 99 + b"\r\n"
    for cut in range(0, len(head), 37):
        budget = feed_head(head[:cut], head[cut:], b"\n" * 5000)  # newlines in the body: fine
        assert budget.head_done
        assert budget.total == len(head) + 5000
    assert feed_head(b"HTTP/1.1 200 OK\nA: b\n\nbody").head_done  # bare LF, as h11 allows


@pytest.mark.parametrize(
    ("reads", "reason"),
    [
        ([b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 101 + b"\r\n"], "over 100 header lines"),
        ([b"HTTP/1.1 200 OK\r\n", b"A: b\r\n" * 200], "over 100 header lines"),
        ([b"HTTP/1.1 200 OK\r\nA: " + b"b" * 20_000], "over 16384 bytes"),
        ([b"HTTP/1.1 200 OK\r\nA: ", b"b" * 8000, b"b" * 8000, b"b" * 500], "over 16384 bytes"),
    ],
)
def test_a_head_over_the_limits_is_refused_before_h11_parses_it(
    reads: list[bytes], reason: str
) -> None:
    with pytest.raises(httpcore.ReadError, match=reason):
        feed_head(*reads)


def test_the_wire_cap_bounds_what_one_connection_may_read() -> None:
    budget = feed_head(b"HTTP/1.1 200 OK\r\n\r\n")
    assert budget.allowance(65536) == 65536
    budget.received(b"x" * (MAX_WIRE - budget.total - 10))
    assert budget.allowance(65536) == 10
    budget.received(b"x" * 10)
    with pytest.raises(httpcore.ReadError, match=f"more than {MAX_WIRE} bytes"):
        budget.allowance(1)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        skip_or_fail("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    names = "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        ["openssl", *request.split(), *names.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.mark.anyio
@pytest.mark.parametrize("lean", [False, True], ids=["httpx", "lean"])
async def test_the_limits_hold_over_tls_too(tls_files: tuple[Path, Path], lean: bool) -> None:
    cert, key = tls_files
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    heads = {
        b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
        b"/many": b"HTTP/1.1 200 OK\r\n" + b"a:b\r\n" * 5000 + b"Content-Length: 2\r\n\r\nOK",
    }

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            request = await reader.readuntil(b"\r\n\r\n")
            writer.write(heads[request.split(b" ")[1]])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context(cafile=cert)
    url = f"https://127.0.0.1:{port}"
    try:
        if lean:
            checker, strict = HttpChecker(trusting), HttpChecker()  # certifi's CAs by default
            ok = await check_http(checker, f"{url}/ok", "OK", TIMEOUT)
            many = await check_http(checker, f"{url}/many", "OK", TIMEOUT)
            unknown = await check_http(strict, f"{url}/ok", "OK", TIMEOUT)
        else:
            async with probe_client(trusting) as client:
                ok = await probe_http(client, f"{url}/ok", "OK", TIMEOUT)
                many = await probe_http(client, f"{url}/many", "OK", TIMEOUT)
            async with probe_client() as strict_client:  # certifi's CAs do not know it
                unknown = await probe_http(strict_client, f"{url}/ok", "OK", TIMEOUT)
    finally:
        server.close()
        await server.wait_closed()
    assert (ok.ok, ok.detail) == (True, "HTTP 200")
    assert many.detail == "ReadError: response head over 100 header lines"
    assert not unknown.ok
    assert "CERTIFICATE_VERIFY_FAILED" in unknown.detail
