"""TLS handshakes count against the connection limit from the accept (dispatcher.tlsaccept):
real loopback sockets that connect and never send a ClientHello, on the public edge (under
uvloop, as in the workers, and under asyncio) and on a uvicorn listener (the admin's); then
real clients (curl, httpx, Python's ssl) are still served."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from dispatcher.addresses import bind
from dispatcher.app import dispatch_core
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.edge import PublicEdge
from dispatcher.server import Listener, ListenerLimits, Timeouts
from dispatcher.snapshot import build_snapshot
from dispatcher.tlsfiles import ReloadableTls, TlsFiles
from tests.conftest import ADMIN_TOKEN, LoopbackSite
from tests.test_app import FakeFarm
from tests.test_http1 import closed, read_response
from tests.test_metrics import samples
from tests.test_serve_processes import Serve, two_sites, write_config
from tests.tlsca import ScratchCa

__all__ = ["two_sites"]  # (a fixture, used by name)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
EU = SiteSpec("eu", "http://127.0.0.2:9001", weight=1)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ScratchCa:
    return ScratchCa(tmp_path_factory.mktemp("tlsca"))


@pytest.fixture(scope="module")
def pem(ca: ScratchCa) -> tuple[Path, Path]:
    return ca.issue("server")


@dataclass
class Running:
    loop: asyncio.AbstractEventLoop
    port: int
    sockets: list[socket.socket] = field(default_factory=list)

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the server's loop (its state is read there)."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=5)

    def idle(self, count: int) -> list[socket.socket]:
        """``count`` connections that never send anything (no ClientHello)."""
        made = [socket.create_connection(("127.0.0.1", self.port), timeout=3) for _ in range(count)]
        self.sockets += made
        return made

    def until(self, check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.call(check):
            assert time.monotonic() < deadline, what
            time.sleep(0.02)


@contextmanager
def loop_thread(factory: Callable[[], asyncio.AbstractEventLoop]) -> Iterator[Any]:
    loop = factory()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


@contextmanager
def public_edge(
    pem: tuple[Path, Path], loop_name: str, max_connections: int
) -> Iterator[tuple[Running, PublicEdge]]:
    """A TLS public edge (one site up: a plain redirect) on its own loop in a thread."""
    config = build_config(
        {
            "dispatcher": {
                "admin_tokens": ["t"],
                "tls_certificate": str(pem[0]),
                "tls_key": str(pem[1]),
                "max_connections": max_connections,
                "head_timeout": 30.0,  # (the limit frees the slots here, not the timeout)
            }
        },
        environ={},
    )
    snapshot = build_snapshot(
        config, revision=1, sites=[EU], health=lambda name: Health("up", None), loads={}
    )
    core = dispatch_core(FakeFarm(snapshot), config.dispatcher)
    with loop_thread(LOOPS[loop_name]) as loop:
        edge = PublicEdge.for_settings(core, bind("127.0.0.1:0"), config.dispatcher)
        asyncio.run_coroutine_threadsafe(edge.start(), loop).result(timeout=5)
        running = Running(loop, edge.port)
        try:
            yield running, edge
        finally:
            for sock in running.sockets:
                sock.close()
            asyncio.run_coroutine_threadsafe(edge.stop(), loop).result(timeout=10)


def client_context(ca: ScratchCa) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert))


def curl(ca: ScratchCa, url: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
         str(ca.cert), url],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_silent_connections_are_shed_oldest_first_and_real_clients_served(
    ca: ScratchCa, pem: tuple[Path, Path], loop_name: str
) -> None:
    with public_edge(pem, loop_name, max_connections=8) as (running, edge):
        first = running.idle(8)
        running.until(lambda: len(edge.handshakes) == 8, "8 handshakes counted")
        assert edge.open_connections == 8
        second = running.idle(8)  # each one sheds the oldest waiting
        running.until(lambda: edge.shed_total == 8, "the first eight shed")
        assert all(closed(sock, 2.0) for sock in first)
        assert not any(closed(sock, 0.05) for sock in second)
        assert running.call(lambda: edge.open_connections) == 8

        url = f"https://127.0.0.1:{running.port}/x"
        assert curl(ca, url) == "302"
        with httpx.Client(verify=client_context(ca), trust_env=False, timeout=10) as client:
            answer = client.get(url)
            assert answer.status_code == 302
            assert answer.headers["location"] == "http://127.0.0.2:9001/x"
            assert running.call(lambda: edge.open_connections) == 8  # (httpx's is kept)
        assert running.call(lambda: edge.refused_total) == 0
        # curl's connection shed the oldest silent one; httpx's took that, or curl's place
        shed = sum(closed(sock, 0.1) for sock in second)
        assert 1 <= shed == running.call(lambda: edge.shed_total) - 8


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_handshake_is_refused_when_every_connection_is_busy(
    ca: ScratchCa, pem: tuple[Path, Path], loop_name: str
) -> None:
    with public_edge(pem, loop_name, max_connections=2) as (running, edge):
        busy = []
        for _ in range(2):  # a request whose body is still coming: busy
            raw = socket.create_connection(("127.0.0.1", running.port), timeout=5)
            tls = client_context(ca).wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n0123456789")
            busy.append(tls)
        running.until(lambda: len(edge.connections) == 2, "two busy connections")
        (late,) = running.idle(1)
        assert closed(late, 2.0)  # closed at once, with no answer (no TLS to answer in)
        assert running.call(lambda: (edge.refused_total, edge.shed_total)) == (1, 0)
        busy[0].sendall(b"0123456789")  # the body ends: answered, kept alive
        assert read_response(busy[0], bytearray()).status == 302
        with httpx.Client(verify=client_context(ca), trust_env=False, timeout=10) as client:
            assert client.get(f"https://127.0.0.1:{running.port}/y").status_code == 302
        for tls in busy:
            tls.close()


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_the_admin_listener_bounds_its_handshakes_too(
    ca: ScratchCa, pem: tuple[Path, Path]
) -> None:
    with loop_thread(asyncio.new_event_loop) as loop:

        async def start() -> Listener:
            listener = Listener(
                _hello,
                "127.0.0.1:0",
                access_log=False,
                timeouts=Timeouts(graceful_shutdown=1.0),
                limits=ListenerLimits(max_connections=4, handshake_timeout=30.0),
                tls=ReloadableTls(TlsFiles(*pem)),
            )
            await listener.start()
            return listener

        listener = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
        running = Running(loop, listener.port)
        try:
            first = running.idle(4)
            time.sleep(0.2)  # (all four accepted)
            assert not any(closed(sock, 0.05) for sock in first)
            second = running.idle(4)
            assert all(closed(sock, 2.0) for sock in first)
            assert not any(closed(sock, 0.05) for sock in second)
            url = f"https://127.0.0.1:{listener.port}/"
            with httpx.Client(verify=client_context(ca), trust_env=False, timeout=10) as client:
                assert client.get(url).text == "hello"
            assert curl(ca, url) == "200"
        finally:
            for sock in running.sockets:
                sock.close()
            asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(timeout=10)


# --- through farm-dispatcher serve: a worker process (uvloop), its reports ---------------

SILENT = 16
LENIENT = "interval = 0.5, timeout = 2.0, rise = 1, fall = 3"  # (a loaded machine's probes)


async def _worker_gauges(admin: int) -> tuple[float, float]:
    """(connections open, shed so far) of the worker(s), from /metrics."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{admin}/metrics", headers=headers)).text
    found = samples(text)
    return (
        sum(v for (n, _), v in found.items() if n == "webfarm_worker_connections"),
        sum(v for (n, _), v in found.items() if n == "webfarm_worker_shed_connections_total"),
    )


@pytest.mark.anyio
async def test_serve_workers_shed_silent_connections_and_report_them(
    tmp_path: Path, two_sites: dict[str, LoopbackSite], ca: ScratchCa, pem: tuple[Path, Path]
) -> None:
    extra = (
        f'tls_certificate = "{pem[0]}"\ntls_key = "{pem[1]}"\n'
        "max_connections = 4\nhead_timeout = 30.0\n"
    )
    config = await asyncio.to_thread(write_config, tmp_path, two_sites, extra, LENIENT)
    config.write_text(config.read_text().replace("workers = 2\n", "workers = 1\n"))
    serve = Serve(config)
    held: list[socket.socket] = []
    try:
        await serve.ready()
        url = f"https://127.0.0.1:{serve.public}/x"
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(curl, ca, url) != "302":  # (the sites' first probes)
            assert time.monotonic() < deadline, serve.output
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # (the workers' reports: curl's connections closed)
        for _ in range(SILENT):
            held.append(socket.create_connection(("127.0.0.1", serve.public), timeout=3))
        deadline = time.monotonic() + 10
        while True:  # every one counted: open (at most 4) or shed
            counted = await _worker_gauges(serve.admin)
            if sum(counted) == SILENT or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert counted == (4.0, float(SILENT - 4))
        closed_now = [closed(sock, 0.1) for sock in held]
        assert closed_now == [True] * (SILENT - 4) + [False] * 4  # the oldest went first
        assert await asyncio.to_thread(curl, ca, url) == "302"
        async with httpx.AsyncClient(verify=client_context(ca), trust_env=False) as client:
            assert (await client.get(url)).status_code == 302
    finally:
        for sock in held:
            sock.close()
        serve.close()
