"""sd_notify over a real unix datagram socket (dispatcher.sdnotify): paths and abstract
names, one-line STATUS, the watchdog's interval, and silence without $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.sdnotify import Notifier, keep_watchdog, socket_address

pytestmark = pytest.mark.anyio


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_reloading_stopping_reach_a_path_socket(
    listening: tuple[socket.socket, str],
) -> None:
    sock, path = listening
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("serving\non port 80\x1b")
    assert received(sock) == {"READY": "1", "STATUS": "serving on port 80 "}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    message = received(sock)
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= before + 5_000_000
    notifier.stopping()
    assert received(sock) == {"STOPPING": "1"}
    notifier.close()


def test_an_abstract_socket_name_starts_with_an_at_sign() -> None:
    name = f"webfarm-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.close()
        assert received(sock) == {"READY": "1"}
    finally:
        sock.close()


@pytest.mark.parametrize("value", ["", "relative/path", "@", "http://x"])
def test_without_a_usable_socket_nothing_is_sent(value: str) -> None:
    assert socket_address(value) is None
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_a_socket_that_is_gone_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.send("READY=1") is False
    assert notifier.send("STOPPING=1") is False  # logged once, never raised
    notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # not for us
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", **env}).watchdog_interval == interval


async def test_the_watchdog_is_fed_only_while_live(listening: tuple[socket.socket, str]) -> None:
    sock, path = listening
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # every 50 ms
    live = True
    task = asyncio.create_task(keep_watchdog(notifier, lambda: live))
    await asyncio.sleep(0.3)
    pings = _drain(sock)
    assert pings >= 3
    live = False
    await asyncio.sleep(0.1)
    _drain(sock)
    await asyncio.sleep(0.3)
    assert _drain(sock) == 0
    task.cancel()
    notifier.close()


async def test_without_a_watchdog_the_feeder_returns_at_once() -> None:
    await asyncio.wait_for(keep_watchdog(Notifier({"NOTIFY_SOCKET": "/x"}), lambda: True), 1.0)


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            assert sock.recv(100) == b"WATCHDOG=1"
        except BlockingIOError:
            return count
        count += 1
