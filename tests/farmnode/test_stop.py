"""Every daemon shape stops within 5 s of SIGTERM, as ``farmnode serve`` processes.

Shapes: switch only (a service and a load reporter), cluster (a single-node ``[cluster]``,
heartbeats over UDP on loopback), cluster with groups (a ``script`` resource and the
``switch`` resource of the service, owned here), truth tier (the ``postgresql`` agent on a
PostgreSQL cluster of its own, :mod:`tests.farmnode.pgcluster`, promoted here).

Each shape runs several start/stop rounds on the same ports: a round waits until the node
is ready (its status says so), sends SIGTERM, and asserts that the process exited 0 within
:data:`STOP_BOUND`, that the status port is closed, and that the log ends with the node's
``stopped`` line; the next round's start proves the ports were given back. Stop times are
printed (``-s``).

Regression: on Python 3.11, ``asyncio.wait_for`` swallowed the cancellation of the cluster
loop when the wake event fired in the same tick, and a node with a ``[cluster]`` never exited
(3 of 3 runs here); see :mod:`farmnode.waits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from farmnode.waits import cancel_and_wait, wait_event
from tests.conftest import skip_or_fail
from tests.farmnode.pgcluster import PgNode, pg_lab
from tests.farmnode.pgcluster import unavailable as pg_unavailable
from tests.ports import free_port

FARMNODE = str(Path(sys.executable).parent / "farmnode")
STOP_BOUND = 5.0  # seconds from SIGTERM to exit, the bound
READY = 30.0  # generous bound of a start on a shared machine (PostgreSQL included)
ROUNDS = 3
SETTLE = 0.5  # seconds a ready node runs before SIGTERM: a few cycles of every loop
KEY = "stop-test-cluster-key-0123456789abcdef"

AGENT = """#!/bin/sh
case "$1" in
start) touch '{dir}/up' ;;
stop) rm -f '{dir}/up' ;;
status) [ -e '{dir}/up' ] && exit 0; exit 3 ;;
*) exit 2 ;;
esac
"""


# --- the waits (pure asyncio) -----------------------------------------------------------------


async def _sleeper(
    wait: Callable[[asyncio.Event], Awaitable[object]], event: asyncio.Event
) -> None:
    """The shape of the daemon's and the cluster's loops: sleep on the wake event, clear it."""
    while True:
        await wait(event)
        event.clear()


async def _cancelled_as_the_event_fires(
    wait: Callable[[asyncio.Event], Awaitable[object]],
) -> asyncio.Task[None]:
    """Set the wake event and cancel the loop in the same tick (what ``stop()`` does)."""
    event = asyncio.Event()
    task = asyncio.create_task(_sleeper(wait, event))
    await asyncio.sleep(0.01)  # the loop sleeps
    event.set()
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    return task


@pytest.mark.anyio
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for is fixed from Python 3.12")
async def test_wait_for_swallows_that_cancellation_on_311() -> None:
    """Proof that the race below is the real one: ``wait_for`` loses the cancel on 3.11."""
    task = await _cancelled_as_the_event_fires(lambda e: asyncio.wait_for(e.wait(), 10))
    assert not task.done()  # the loop runs on: whoever awaits it waits forever
    task.cancel()  # a second cancel, in a tick of its own, ends it
    await asyncio.wait({task}, timeout=1)
    assert task.cancelled()


@pytest.mark.anyio
async def test_wait_event_never_swallows_a_cancellation() -> None:
    task = await _cancelled_as_the_event_fires(lambda e: wait_event(e, 10))
    assert task.cancelled()
    event = asyncio.Event()
    began = time.monotonic()
    assert await wait_event(event, 0.05) is False
    assert time.monotonic() - began >= 0.05
    event.set()
    assert await wait_event(event, 10) is True


@pytest.mark.anyio
async def test_cancel_and_wait_bounds_a_task_that_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    log = logging.getLogger("tests.stop")
    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    began = time.monotonic()
    assert await cancel_and_wait(task, "the stubborn task", 0.2, log) is False
    assert 0.2 <= time.monotonic() - began < 2.0
    assert "the stubborn task did not end within 0.2 s" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    polite = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    assert await cancel_and_wait(polite, "a polite task", 1.0, log) is True


@pytest.mark.anyio
async def test_cancel_and_wait_lets_the_callers_cancellation_through() -> None:
    inner = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await inner.wait()  # its clean-up takes a while

    target = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    log = logging.getLogger("tests.stop")
    caller = asyncio.create_task(cancel_and_wait(target, "slow", 5.0, log))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.wait({caller}, timeout=1)
    assert caller.cancelled()  # the old `with suppress(CancelledError): await task` took it
    inner.set()
    await asyncio.wait({target}, timeout=1)
    assert target.done()


# --- farmnode serve, shape by shape ----------------------------------------------------------


@dataclass
class Ports:
    """The fixed ports of one test's node, kept over its rounds."""

    status: int
    service: int
    heartbeat: int


@pytest.fixture
def ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


@contextlib.contextmanager
def accepting() -> Iterator[socket.socket]:
    """A listening socket whose connections are accepted and closed at once (a thread)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                sock.accept()[0].close()

    thread = threading.Thread(target=serve, name="real server", daemon=True)
    thread.start()
    try:
        yield sock
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(5)


@pytest.fixture
def real() -> Iterator[socket.socket]:
    """A real server for tcp checks."""
    with accepting() as sock:
        yield sock


def node_toml(ports: Ports) -> str:
    return f'[node]\nname = "n1"\nstatus_listen = "127.0.0.1:{ports.status}"\n'


def service_toml(ports: Ports, real: socket.socket) -> str:
    return f"""
[[services]]
name = "web"
protocol = "tcp"
listen = "127.0.0.1:{ports.service}"
check = {{ kind = "tcp", interval = 0.2, timeout = 0.2, rise = 1 }}
[[services.real]]
address = "127.0.0.1:{real.getsockname()[1]}"
"""


def cluster_toml(ports: Ports) -> str:
    return f"""
[cluster]
name = "stoplab"
key = "{KEY}"
interval = 0.2
deadtime = 1.0
initdead = 1.0
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:{ports.heartbeat}"
"""


def report_toml(sink: socket.socket) -> str:
    """A load reporter whose dispatcher accepts connections and never answers."""
    return f"""
[report]
url = "http://127.0.0.1:{sink.getsockname()[1]}"
site = "eu"
capacity = 100
interval = 1
"""


class Daemon:
    """``farmnode serve`` on one configuration file, started and stopped in rounds."""

    def __init__(self, path: Path, status_port: int, env: dict[str, str]) -> None:
        self.path = path
        self.url = f"http://127.0.0.1:{status_port}/status"
        self.status_port = status_port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FARMNODE_")}
        self.env.update(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.round = 0
        self.log = path.parent / "farmnode-0.log"

    def start(self) -> None:
        self.round += 1
        self.log = self.path.parent / f"farmnode-{self.round}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [FARMNODE, "serve", "-c", str(self.path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def status(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = httpx.get(self.url, timeout=2.0, trust_env=False).json()
        except httpx.TransportError:
            return None
        return doc

    def wait_ready(self, what: str, ready: Callable[[dict[str, Any]], bool]) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"farmnode exited {self.process.returncode}: {self.text()}")
            doc = self.status()
            if doc is not None and ready(doc):
                return
            time.sleep(0.05)
        raise AssertionError(f"not within {READY} s: {what}; log:\n{self.text()}")

    def terminate(self) -> float:
        """SIGTERM; the seconds until the process exited (it is killed past the bound)."""
        process = self.process
        assert process is not None
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise AssertionError(
                f"round {self.round}: still running {STOP_BOUND} s after SIGTERM (killed); "
                f"log:\n{self.text()[-3000:]}"
            ) from None
        return time.monotonic() - began

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def daemon(path: Path, status_port: int, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    node = Daemon(path, status_port, env or {})
    try:
        yield node
    finally:
        node.kill()


def closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def rounds(node: Daemon, what: str, ready: Callable[[dict[str, Any]], bool]) -> list[float]:
    """:data:`ROUNDS` rounds of start, ready, SIGTERM; the stop times."""
    times = []
    for _ in range(ROUNDS):
        node.start()
        node.wait_ready(what, ready)
        time.sleep(SETTLE)
        took = node.terminate()
        text = node.text()
        assert node.process is not None
        assert node.process.returncode == 0, text[-3000:]
        assert "Traceback" not in text
        assert text.rstrip().endswith("node n1: stopped"), text[-3000:]
        assert closed(node.status_port), "the status port is still open"
        times.append(took)
    print(f"\n{what}: stop after SIGTERM took {', '.join(f'{t:.2f}' for t in times)} s")
    return times


def real_up(doc: dict[str, Any]) -> bool:
    return bool(doc["services"]) and doc["services"][0]["real"][0]["state"] == "up"


def group_running(group: str) -> Callable[[dict[str, Any]], bool]:
    def ready(doc: dict[str, Any]) -> bool:
        cluster = doc.get("cluster")
        return cluster is not None and cluster["groups"][group]["local"] == "running"

    return ready


def cluster_active(doc: dict[str, Any]) -> bool:
    cluster = doc.get("cluster")
    return cluster is not None and cluster["state"] == "active" and cluster["status"] != ""


def test_switch_only_stops_within_the_bound(
    tmp_path: Path, ports: Ports, real: socket.socket
) -> None:
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(64)
        path = tmp_path / "node.toml"
        path.write_text(node_toml(ports) + service_toml(ports, real) + report_toml(sink))
        with daemon(path, ports.status, {"FARMNODE_REPORT_TOKEN": "t"}) as node:
            rounds(node, "switch only (with a reporter)", real_up)
            assert closed(ports.service)


def test_a_cluster_stops_within_the_bound(
    tmp_path: Path, ports: Ports, real: socket.socket
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(node_toml(ports) + service_toml(ports, real) + cluster_toml(ports))
    with daemon(path, ports.status) as node:
        rounds(node, "cluster", lambda d: real_up(d) and cluster_active(d))


def test_a_cluster_with_groups_stops_within_the_bound(
    tmp_path: Path, ports: Ports, real: socket.socket
) -> None:
    agent = tmp_path / "agent.sh"
    agent.write_text(AGENT.format(dir=tmp_path))
    agent.chmod(0o755)
    groups = f"""
[[groups]]
name = "front"
[[groups.resources]]
agent = "script"
name = "marker"
path = "{agent}"
[[groups.resources]]
agent = "switch"
name = "web"
service = "web"
"""
    path = tmp_path / "node.toml"
    text = node_toml(ports) + service_toml(ports, real) + cluster_toml(ports) + groups
    path.write_text(text)
    with daemon(path, ports.status) as node:
        rounds(node, "cluster with groups", group_running("front"))
        assert not (tmp_path / "up").exists(), "the script resource was not stopped"
        assert closed(ports.service)


def truth_tier_toml(ports: Ports, pg: PgNode) -> str:
    return f"""
[[groups]]
name = "db"
[[groups.resources]]
agent = "postgresql"
name = "pg"
data_dir = "{pg.data_dir}"
bin_dir = "{pg.lab.bin}"
port = {pg.port}
listen = "127.0.0.1"
socket_dir = "{pg.socket_dir}"
primary_host = "127.0.0.1"
synchronous = false
start_timeout = 30
stop_timeout = 10
monitor_interval = 2
monitor_timeout = 2
"""


def test_the_truth_tier_stops_within_the_bound(tmp_path: Path, ports: Ports) -> None:
    reason = pg_unavailable()
    if reason is not None:
        skip_or_fail(reason)
    with pg_lab() as lab:
        pg = lab.initdb("stop")
        path = tmp_path / "node.toml"
        path.write_text(node_toml(ports) + cluster_toml(ports) + truth_tier_toml(ports, pg))
        with daemon(path, ports.status) as node:
            rounds(node, "truth tier (postgresql agent)", group_running("db"))
            assert not pg.writable(), "a stopped node left its PostgreSQL a writable primary"
