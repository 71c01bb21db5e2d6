"""Loopback ports for tests that must name a port before anything listens on it.

Binding port 0 and releasing it hands out a port from the kernel's ephemeral range, which
every outgoing connection of the suite draws from too: a server started a moment later
can find its port taken by some test's client (``EADDRINUSE``), and two pytest-xdist
workers can be handed the same one. Here ports come from a band below the ephemeral range
(which starts at 32768 by default; checked), one slice per xdist worker, handed out in
turn and never twice in a session; a port is given only when a TCP and a UDP socket can
both bind it on 127.0.0.1 at that moment.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

BAND_START = 20000
BAND_END = 32000  # exclusive
SLICES = 4  # xdist workers beyond the fourth share the slices modulo 4


class PortsExhausted(RuntimeError):
    """No port of this worker's slice could be bound."""


def worker_index() -> int:
    """0 for ``gw0`` (and for a run without xdist), 1 for ``gw1``, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _slice() -> range:
    end = min(BAND_END, ephemeral_low())
    size = (end - BAND_START) // SLICES
    if size < 100:
        raise PortsExhausted(
            f"the ephemeral range starts at {end}: no room below it for test ports"
        )
    first = BAND_START + (worker_index() % SLICES) * size
    return range(first, first + size)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(family, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


class _Ports:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._range: range | None = None
        self._turn: Iterator[int] | None = None

    def take(self, host: str) -> int:
        with self._lock:
            if self._range is None or self._turn is None:
                self._range = _slice()
                self._turn = itertools.cycle(self._range)
            for _ in range(len(self._range)):
                port = next(self._turn)
                if _bindable(host, port):
                    return port
        raise PortsExhausted(f"no free port in {self._range} on {host}")


_PORTS = _Ports()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP on ``host`` (127.0.0.1 by default) that no other test of
    this session and no other xdist worker is given."""
    return _PORTS.take(host)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct such ports."""
    return [free_port(host) for _ in range(count)]
