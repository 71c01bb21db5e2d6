"""Learned latency, the switch's half: the kernel's RTT of each client connection, per client
network, exponentially decaying, in bounded memory.

**What is sampled.** When a connection that the userspace data plane accepted ends, the plane
reads the kernel's smoothed RTT of the client's socket (``getsockopt(IPPROTO_TCP,
TCP_INFO)``, ``struct tcp_info``'s ``tcpi_rtt``, in microseconds: :func:`socket_rtt`) and
adds it to the node's :class:`RttTable` under the client's network. At the end the kernel's
estimate rests on the whole connection (the handshake and every acknowledged segment), and a
connection is sampled once. A socket that is already gone (some loops close it before the
plane hears of a reset), a kernel without ``TCP_INFO`` (not Linux), a short or odd answer, a
zero RTT (no estimate yet) or one above :data:`MAX_SAMPLE`: no sample, never an exception.
The nftables plane forwards in the kernel and samples nothing.

**Networks.** ``/24`` for IPv4, ``/48`` for IPv6, in canonical text (``192.0.2.0/24``,
``2001:db8:1::/48``); IPv4-mapped IPv6 (a dual-stack listener) counts as IPv4.

**Smoothing and decay.** Each network keeps a time-decayed mean of its samples and a
time-decayed count: a sample's weight halves every ``half_life`` seconds (default
:data:`HALF_LIFE`, ten minutes), so the mean follows a change of route within minutes
whatever the connection rate, and a network's count falls steadily while it is not seen.
A network not seen for ``forget_after`` seconds (default :data:`FORGET_AFTER`, an hour) is
forgotten.

**Memory.** At most ``max_networks`` networks (default :data:`MAX_NETWORKS`, 65,536; about
15 MB at most): when the table is full, the eighth with the lowest decayed count (the least
sampled and the stalest) is evicted in one go, so a flood of connections from new networks
costs a sort now and then, not a scan per connection, and cannot push out networks that
many samples stand behind.

Pure but for :func:`socket_rtt`; time comes from ``clock``.
"""

from __future__ import annotations

import heapq
import math
import socket
import struct
import sys
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Protocol

from dispatcher.placement.rtt import client_network

MAX_NETWORKS = 65_536
HALF_LIFE = 600.0
FORGET_AFTER = 3600.0
#: Samples above this many seconds are not kept (the kernel's RTT is capped at minutes).
MAX_SAMPLE = 60.0
#: The share of the table evicted when it is full.
EVICT_SHARE = 8

#: ``struct tcp_info``: ``tcpi_rtt`` is the 18th field, a ``__u32`` after eight ``__u8``
#: and nine ``__u32`` (rto ato snd_mss rcv_mss unacked sacked lost retrans fackets),
#: four times (last_data_sent ...), pmtu and rcv_ssthresh: offset 68, native byte order.
TCPI_RTT = struct.Struct("=I")
TCPI_RTT_OFFSET = 68
#: How many bytes of ``struct tcp_info`` are asked for (the kernel answers with fewer if
#: it has fewer; 104 bytes has been the size since Linux 2.6).
TCP_INFO_SIZE = 104
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None


class _SocketLike(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def parse_tcp_rtt(info: bytes) -> float | None:
    """``tcpi_rtt`` of a ``struct tcp_info`` in seconds, or ``None`` (too short, zero, over
    :data:`MAX_SAMPLE`)."""
    if len(info) < TCPI_RTT_OFFSET + TCPI_RTT.size:
        return None
    (micros,) = TCPI_RTT.unpack_from(info, TCPI_RTT_OFFSET)
    seconds = micros / 1e6
    return seconds if 0.0 < seconds <= MAX_SAMPLE else None


def socket_rtt(sock: _SocketLike | None) -> float | None:
    """The kernel's smoothed RTT of a connected TCP socket in seconds, or ``None``."""
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, TCP_INFO_SIZE)
    except (OSError, ValueError, TypeError, AttributeError):  # closed, not TCP, odd objects
        return None
    return parse_tcp_rtt(info) if isinstance(info, bytes) else None


class _Network:
    """One network: decayed mean RTT, decayed count (as of ``seen``), last sample time."""

    __slots__ = ("count", "rtt", "seen")

    def __init__(self, rtt: float, seen: float) -> None:
        self.rtt = rtt
        self.count = 1.0
        self.seen = seen


class RttTable:
    """Smoothed RTT per client network; see the module's docstring for the rules.

    Raises ``ValueError`` for a ``max_networks`` below 1 or a ``half_life`` or
    ``forget_after`` that is not a positive number.
    """

    __slots__ = ("_clock", "_networks", "_next_sweep", "forget_after", "half_life", "max_networks")

    def __init__(
        self,
        max_networks: int = MAX_NETWORKS,
        half_life: float = HALF_LIFE,
        forget_after: float = FORGET_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_networks < 1:
            raise ValueError(f"max_networks must be >= 1, not {max_networks!r}")
        for name, value in (("half_life", half_life), ("forget_after", forget_after)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        self.max_networks = max_networks
        self.half_life = half_life
        self.forget_after = forget_after
        self._clock = clock
        self._networks: dict[str, _Network] = {}
        self._next_sweep = clock() + forget_after / 4

    def __len__(self) -> int:
        return len(self._networks)

    def add(self, client: str, seconds: float) -> bool:
        """Add one RTT sample of ``client``'s connection; ``False`` when it was not kept
        (not an address, not a number from just above 0 to :data:`MAX_SAMPLE`)."""
        if isinstance(seconds, bool) or not (
            isinstance(seconds, int | float) and 0.0 < seconds <= MAX_SAMPLE
        ):
            return False
        network = client_network(client)
        if network is None:
            return False
        now = self._clock()
        entry = self._networks.get(network)
        if entry is None:
            if len(self._networks) >= self.max_networks:
                self._evict()
            self._networks[network] = _Network(float(seconds), now)
        else:
            kept = entry.count * self._decay(now - entry.seen)
            entry.rtt = (entry.rtt * kept + seconds) / (kept + 1.0)
            entry.count = kept + 1.0
            entry.seen = max(entry.seen, now)
        if now >= self._next_sweep:
            self.sweep()
        return True

    def get(self, network: str) -> tuple[float, float] | None:
        """``(smoothed RTT, decayed count now)`` of ``network`` (canonical text), or ``None``."""
        entry = self._networks.get(network)
        if entry is None:
            return None
        return entry.rtt, self._count(entry, self._clock())

    def top(self, limit: int) -> list[tuple[str, float, int]]:
        """At most ``limit`` networks with the most samples now: ``(network, RTT seconds
        rounded to the microsecond, decayed count rounded, at least 1)``. Forgets the
        networks not seen for ``forget_after`` first; networks whose count has decayed
        below one half are left out."""
        self.sweep()
        now, half_life = self._clock(), self.half_life
        counted = [
            (e.count * 2.0 ** (min(0.0, e.seen - now) / half_life), network, e.rtt)
            for network, e in self._networks.items()
        ]
        counted.sort(key=itemgetter(0), reverse=True)  # faster than a heap for 10,000 of 65,536
        return [
            (network, round(rtt, 6), max(1, round(count)))
            for count, network, rtt in counted[: max(0, limit)]
            if count >= 0.5
        ]

    def sweep(self) -> int:
        """Forget networks not seen for ``forget_after`` seconds; returns how many."""
        now = self._clock()
        horizon = now - self.forget_after
        doomed = [network for network, e in self._networks.items() if e.seen < horizon]
        for network in doomed:
            del self._networks[network]
        self._next_sweep = now + self.forget_after / 4
        return len(doomed)

    def _evict(self) -> None:
        """Drop the eighth (at least one) with the lowest decayed count."""
        self.sweep()
        over = len(self._networks) - self.max_networks + 1
        if over <= 0:
            return
        doomed = heapq.nsmallest(
            max(over, self.max_networks // EVICT_SHARE),
            self._networks.items(),
            key=lambda item: self._rank(item[1]),
        )
        for network, _ in doomed:
            del self._networks[network]

    def _rank(self, entry: _Network) -> float:
        """log2 of the decayed count, up to a constant that is the same for every network."""
        return math.log2(entry.count) + entry.seen / self.half_life

    def _decay(self, elapsed: float) -> float:
        return float(2.0 ** (-max(0.0, elapsed) / self.half_life))

    def _count(self, entry: _Network, now: float) -> float:
        return entry.count * self._decay(now - entry.seen)


__all__ = [
    "FORGET_AFTER",
    "HALF_LIFE",
    "MAX_NETWORKS",
    "MAX_SAMPLE",
    "RttTable",
    "parse_tcp_rtt",
    "socket_rtt",
]
