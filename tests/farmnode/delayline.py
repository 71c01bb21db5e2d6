"""A point-to-point link with a fixed one-way delay, between two network namespaces.

What ``tc qdisc add dev ... root netem delay 20ms`` does on a veth pair, built where the
kernel has no ``sch_netem``: one TUN device in each namespace, and a thread of this process
that reads every IP packet from one and writes it into the other ``delay`` seconds later.
The kernels on both sides see an ordinary link whose round trip is twice ``delay``.

    with Lab() as lab, DelayLine(lab.namespace("a"), "10.213.77.2/24",
                                 lab.namespace("b"), "10.213.77.1/24", delay=0.02):
        ...

Addresses must lie in the lab network (see :mod:`tests.farmnode.netns`). Closing the line
closes both TUN devices, which removes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import os
import selectors
import struct
import threading
import time
from types import TracebackType

from tests.farmnode.netns import Namespace, lab_address

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535


def open_tun(name: str) -> int:
    """A new TUN device ``name`` (IP packets, no packet information) in the caller's
    network namespace; returns its non-blocking descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class DelayLine:
    """Two TUN devices (``dev`` in each namespace) joined by a relay thread that holds
    each packet ``delay`` seconds."""

    def __init__(
        self,
        a: Namespace,
        a_cidr: str,
        b: Namespace,
        b_cidr: str,
        *,
        delay: float,
        dev: str = "dl0",
    ) -> None:
        self.delay = delay
        self.relayed = 0
        self._fds: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="delay-line", daemon=True)
        try:
            for ns, cidr in ((a, a_cidr), (b, b_cidr)):
                self._fds.append(ns.call(lambda: open_tun(dev)))
                ns.ip("addr", "add", str(lab_address(cidr)), "dev", dev)
                ns.ip("link", "set", dev, "up")
        except BaseException:
            self._close_fds()
            raise

    def __enter__(self) -> DelayLine:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def _relay(self) -> None:
        a, b = self._fds
        queue: list[tuple[float, int, int, bytes]] = []
        order = itertools.count()
        with selectors.DefaultSelector() as selector:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                wait = 0.05 if not queue else max(0.0, queue[0][0] - time.monotonic())
                for key, _ in selector.select(min(wait, 0.05)):
                    due = time.monotonic() + self.delay
                    for packet in _drain(key.fd):
                        heapq.heappush(queue, (due, next(order), key.data, packet))
                now = time.monotonic()
                while queue and queue[0][0] <= now:
                    _, _, target, packet = heapq.heappop(queue)
                    with contextlib.suppress(OSError):  # a full queue drops, as a wire would
                        os.write(target, packet)
                        self.relayed += 1


def _drain(fd: int) -> list[bytes]:
    packets = []
    while True:
        try:
            packets.append(os.read(fd, MAX_PACKET))
        except (BlockingIOError, OSError):
            return packets
