"""IPVS-style schedulers: which real server takes a virtual service's next connection.

Pure and synchronous. A :class:`Scheduler` is told the service's real servers by
:meth:`Scheduler.update` whenever membership, weights or health change, precomputes what it
needs there, and then answers :meth:`Scheduler.pick` once per new connection (the hot path:
no allocation beyond what the algorithm itself needs).

The semantics follow the Linux kernel's ``ip_vs_*.c`` schedulers:

``rr``   round robin over the available servers (weights ignored, except that weight 0 is out).
``wrr``  weighted round robin; smooth interleaving, exact shares in every cycle of
         ``sum(weight / gcd)`` picks.
``lc``   least connections: lowest ``active * 256 + inactive``.
``wlc``  weighted least connections: lowest ``(active * 256 + inactive) / weight``.
``sed``  shortest expected delay: lowest ``(active + 1) / weight``.
``nq``   never queue: the first idle server (no active connection), else ``sed``.
``sh``   source hashing: a client address always maps to the same server while membership
         holds; a weighted bucket table.
``mh``   Maglev consistent hashing: prime table size, weights as turns; removing one of N
         servers remaps about 1/N of the clients.
``fo``   weighted fail-over: the available server with the highest weight.
``ovf``  overflow: the highest-weight server whose active connections are below its weight;
         none when every server is full.
``twos`` weighted random "power of two choices": two weighted-random picks, the one with the
         lower ``overhead / weight`` wins.

Every weight comparison is by cross-multiplication (no floats), ties go to the server that
comes first in configuration order, as IPVS does.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Collection, Sequence
from itertools import accumulate
from typing import ClassVar

from farmnode.errors import SchedulerError
from farmnode.switch.tables import (
    MH_DEFAULT_SIZE,
    SH_DEFAULT_SIZE,
    check_entries,
    client_hash,
    maglev_table,
    sh_table,
)

#: The smooth wrr cycle is precomputed up to this many picks; longer cycles step live.
WRR_PRECOMPUTE_LIMIT = 4096


class RealServer:
    """One real server of a virtual service, with its live state and counters.

    Mutable and shared: the service, its scheduler and the data plane hold the same object.
    Change ``up``, ``weight`` or ``agent_weight`` only through
    :class:`farmnode.switch.service.VirtualService`, which re-runs the scheduler's
    :meth:`Scheduler.update` afterwards; schedulers trust what the last update told them.
    """

    __slots__ = (
        "active",
        "agent_weight",
        "bytes_in",
        "bytes_out",
        "host",
        "inactive",
        "key",
        "port",
        "quiesce_on_failure",
        "total",
        "up",
        "weight",
    )

    def __init__(
        self,
        host: str,
        port: int,
        weight: int = 1,
        *,
        up: bool = True,
        quiesce_on_failure: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.weight = weight
        self.agent_weight: int | None = None
        self.up = up
        self.quiesce_on_failure = quiesce_on_failure
        self.active = 0
        self.inactive = 0
        self.total = 0
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def effective_weight(self) -> int:
        """The weight scheduling uses: the agent's when it reported one, else the configured.

        0 means quiescent: configured weight 0, an agent's ``drain``, or a failed server of a
        service with ``quiescent = true``. A failed server without that setting keeps its
        weight here but is not :attr:`available`.
        """
        if not self.up and self.quiesce_on_failure:
            return 0
        agent = self.agent_weight
        return self.weight if agent is None else agent

    @property
    def available(self) -> bool:
        """Eligible for new connections: up and with an effective weight above 0."""
        if not self.up:
            return False
        agent = self.agent_weight
        return (self.weight if agent is None else agent) > 0

    @property
    def state(self) -> str:
        """``up`` (available), ``quiescent`` (up, weight 0) or ``down`` (failed its checks)."""
        if not self.up:
            return "down"
        return "up" if self.effective_weight > 0 else "quiescent"

    def __repr__(self) -> str:
        return (
            f"RealServer({self.key!r}, weight={self.effective_weight}, up={self.up}, "
            f"active={self.active})"
        )


class Scheduler(ABC):
    """Picks a real server for each new connection of one virtual service.

    Contract: :meth:`update` is called with every real server of the service (in
    configuration order, available or not) whenever membership, weights or health change,
    and before the first :meth:`pick`. :meth:`pick` returns only servers that were
    ``available`` at the last update, or ``None`` when there is none (``ovf`` also when every
    server is full). It never counts the connection: the service does that.
    """

    name: ClassVar[str]
    kernel: ClassVar[bool] = False  # the nftables plane can express it
    params: ClassVar[frozenset[str]] = frozenset()  # keyword parameters of __init__

    __slots__ = ("_available",)

    def __init__(self) -> None:
        self._available: tuple[RealServer, ...] = ()

    @property
    def available(self) -> tuple[RealServer, ...]:
        """The servers the last :meth:`update` found available, in configuration order."""
        return self._available

    def update(self, servers: Sequence[RealServer]) -> None:
        """Take note of the servers and precompute whatever :meth:`pick` needs."""
        self._available = tuple(s for s in servers if s.available)
        self._rebuild()

    def _rebuild(self) -> None:  # noqa: B027 - an optional hook, a no-op by design
        """Hook for subclasses: recompute tables from ``self._available``."""

    @abstractmethod
    def pick(self, client: str) -> RealServer | None:
        """The server for a new connection from ``client`` (source IP text), or ``None``."""

    def pick_excluding(self, client: str, exclude: Collection[str]) -> RealServer | None:
        """Like :meth:`pick` but never a server whose key is in ``exclude``.

        For the retry after a failed connect: the scheduler is asked again (up to once per
        available server), then the first available server not excluded is taken.
        """
        if not exclude:
            return self.pick(client)
        for _ in range(len(self._available)):
            server = self.pick(client)
            if server is None:
                return None
            if server.key not in exclude:
                return server
        return next((s for s in self._available if s.key not in exclude), None)


class RoundRobin(Scheduler):
    """``rr``: each available server in turn. Keeps its place across updates."""

    name = "rr"
    kernel = True
    __slots__ = ("_last", "_next")

    def __init__(self) -> None:
        super().__init__()
        self._next = 0
        self._last: str | None = None

    def _rebuild(self) -> None:
        keys = [s.key for s in self._available]
        self._next = keys.index(self._last) + 1 if self._last in keys else 0

    def pick(self, client: str) -> RealServer | None:
        available = self._available
        if not available:
            return None
        i = self._next
        if i >= len(available):
            i = 0
        self._next = i + 1
        server = available[i]
        self._last = server.key
        return server


class _Smooth:
    """Smooth weighted round robin state (nginx's algorithm): exact shares per cycle."""

    __slots__ = ("current", "total", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(weights)
        self.total = sum(weights)
        self.current = [0] * len(weights)

    def step(self) -> int:
        current = self.current
        best = 0
        for i, w in enumerate(self.weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return best


class WeightedRoundRobin(Scheduler):
    """``wrr``: weighted round robin, interleaved (smooth) rather than in bursts.

    Over every cycle of ``sum(weight / gcd)`` picks each server gets exactly
    ``weight / gcd`` of them, spread out. The cycle restarts when the servers change.
    """

    name = "wrr"
    kernel = True
    params = frozenset({"precompute_limit"})
    __slots__ = ("_cycle", "_limit", "_pos", "_smooth")

    def __init__(self, precompute_limit: int = WRR_PRECOMPUTE_LIMIT) -> None:
        super().__init__()
        self._limit = precompute_limit
        self._cycle: tuple[RealServer, ...] = ()
        self._smooth: _Smooth | None = None
        self._pos = 0

    def _rebuild(self) -> None:
        self._pos = 0
        self._cycle = ()
        self._smooth = None
        if not self._available:
            return
        weights = [s.effective_weight for s in self._available]
        divisor = math.gcd(*weights)
        smooth = _Smooth([w // divisor for w in weights])
        if smooth.total <= self._limit:
            self._cycle = tuple(self._available[smooth.step()] for _ in range(smooth.total))
        else:
            self._smooth = smooth

    def pick(self, client: str) -> RealServer | None:
        cycle = self._cycle
        if cycle:
            i = self._pos
            if i >= len(cycle):
                i = 0
            self._pos = i + 1
            return cycle[i]
        if self._smooth is not None:
            return self._available[self._smooth.step()]
        return None


class _Weighted(Scheduler):
    """Base of the schedulers that read weights at pick time: caches (server, weight)."""

    __slots__ = ("_pairs",)

    def __init__(self) -> None:
        super().__init__()
        self._pairs: tuple[tuple[RealServer, int], ...] = ()

    def _rebuild(self) -> None:
        self._pairs = tuple((s, s.effective_weight) for s in self._available)


class LeastConnection(Scheduler):
    """``lc``: the lowest ``active * 256 + inactive``; weights only decide eligibility."""

    name = "lc"
    __slots__ = ()

    def pick(self, client: str) -> RealServer | None:
        least: RealServer | None = None
        least_overhead = 0
        for server in self._available:
            overhead = (server.active << 8) + server.inactive
            if least is None or overhead < least_overhead:
                least, least_overhead = server, overhead
        return least


class WeightedLeastConnection(_Weighted):
    """``wlc``: the lowest ``(active * 256 + inactive) / weight``."""

    name = "wlc"
    __slots__ = ()

    def pick(self, client: str) -> RealServer | None:
        pairs = self._pairs
        if not pairs:
            return None
        least, lw = pairs[0]
        loh = (least.active << 8) + least.inactive
        for server, w in pairs[1:]:
            doh = (server.active << 8) + server.inactive
            if loh * w > doh * lw:
                least, lw, loh = server, w, doh
        return least


class ShortestExpectedDelay(_Weighted):
    """``sed``: the lowest ``(active + 1) / weight``."""

    name = "sed"
    __slots__ = ()

    def pick(self, client: str) -> RealServer | None:
        pairs = self._pairs
        if not pairs:
            return None
        least, lw = pairs[0]
        loh = least.active + 1
        for server, w in pairs[1:]:
            doh = server.active + 1
            if loh * w > doh * lw:
                least, lw, loh = server, w, doh
        return least


class NeverQueue(ShortestExpectedDelay):
    """``nq``: the first idle server (no active connection); when all are busy, ``sed``."""

    name = "nq"
    __slots__ = ()

    def pick(self, client: str) -> RealServer | None:
        for server in self._available:
            if server.active == 0:
                return server
        return super().pick(client)


class _Hashed(Scheduler):
    """Base of the source-address schedulers: a slot table of servers, hashed into."""

    params = frozenset({"size"})
    __slots__ = ("_size", "_slots")

    def __init__(self, size: int) -> None:
        super().__init__()
        check_entries((), size, self.name)
        self._size = size
        self._slots: tuple[RealServer, ...] = ()

    @property
    def size(self) -> int:
        return self._size

    @abstractmethod
    def _table(self, entries: Sequence[tuple[str, int]]) -> list[int]: ...

    def _rebuild(self) -> None:
        available = self._available
        table = self._table([(s.key, s.effective_weight) for s in available])
        self._slots = tuple(available[i] for i in table)

    def pick(self, client: str) -> RealServer | None:
        slots = self._slots
        if not slots:
            return None
        return slots[client_hash(client) % self._size]

    def pick_excluding(self, client: str, exclude: Collection[str]) -> RealServer | None:
        """Rehash with a new salt each round (IPVS's ``*-fallback``), then take any."""
        if not exclude:
            return self.pick(client)
        slots = self._slots
        if not slots:
            return None
        for salt in range(2 * len(self._available) + 1):
            server = slots[client_hash(client, salt) % self._size]
            if server.key not in exclude:
                return server
        return next((s for s in self._available if s.key not in exclude), None)


class SourceHash(_Hashed):
    """``sh``: a weighted bucket table indexed by a hash of the client address.

    Stable for a client while the available servers stay the same; any change of
    membership or weights re-deals the buckets (use ``mh`` for minimal disruption).
    """

    name = "sh"
    kernel = True
    __slots__ = ()

    def __init__(self, size: int = SH_DEFAULT_SIZE) -> None:
        super().__init__(size)

    def _table(self, entries: Sequence[tuple[str, int]]) -> list[int]:
        return sh_table(entries, self._size)


class MaglevHash(_Hashed):
    """``mh``: Maglev consistent hashing over :func:`maglev_table`.

    Removing one of N servers remaps its own clients and only a small extra fraction of
    the others' (Maglev trades perfect consistency for perfectly even load).
    """

    name = "mh"
    kernel = True
    __slots__ = ()

    def __init__(self, size: int = MH_DEFAULT_SIZE) -> None:
        super().__init__(size)

    def _table(self, entries: Sequence[tuple[str, int]]) -> list[int]:
        return maglev_table(entries, self._size)


class WeightedFailover(Scheduler):
    """``fo``: always the available server with the highest weight (the first on a tie)."""

    name = "fo"
    kernel = True  # the heaviest eligible server alone is one DNAT target
    __slots__ = ("_best",)

    def __init__(self) -> None:
        super().__init__()
        self._best: RealServer | None = None

    def _rebuild(self) -> None:
        best: RealServer | None = None
        for server in self._available:
            if best is None or server.effective_weight > best.effective_weight:
                best = server
        self._best = best

    def pick(self, client: str) -> RealServer | None:
        return self._best


class Overflow(_Weighted):
    """``ovf``: the highest-weight server whose active connections are below its weight.

    A server takes connections up to its weight, then the next-heaviest overflows in.
    ``None`` when every available server is full (IPVS then refuses the connection).
    """

    name = "ovf"
    __slots__ = ()

    def _rebuild(self) -> None:
        super()._rebuild()
        self._pairs = tuple(sorted(self._pairs, key=lambda pair: -pair[1]))  # stable

    def pick(self, client: str) -> RealServer | None:
        for server, w in self._pairs:
            if server.active < w:
                return server
        return None


class TwoChoices(_Weighted):
    """``twos``: two weighted-random picks; the lower ``(active*256+inactive)/weight`` wins.

    The two picks may be the same server; on a tie the first pick wins.
    """

    name = "twos"
    params = frozenset({"rng"})
    __slots__ = ("_cumulative", "_rng", "_total")

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not crypto
        self._cumulative: tuple[int, ...] = ()
        self._total = 0

    def _rebuild(self) -> None:
        super()._rebuild()
        self._cumulative = tuple(accumulate(w for _, w in self._pairs))
        self._total = self._cumulative[-1] if self._cumulative else 0

    def pick(self, client: str) -> RealServer | None:
        total = self._total
        if not total:
            return None
        rand, cumulative, pairs = self._rng.randrange, self._cumulative, self._pairs
        first, w1 = pairs[bisect_right(cumulative, rand(total))]
        second, w2 = pairs[bisect_right(cumulative, rand(total))]
        if ((first.active << 8) + first.inactive) * w2 > (
            (second.active << 8) + second.inactive
        ) * w1:
            return second
        return first


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        LeastConnection,
        WeightedLeastConnection,
        ShortestExpectedDelay,
        NeverQueue,
        SourceHash,
        MaglevHash,
        WeightedFailover,
        Overflow,
        TwoChoices,
    )
}


def make_scheduler(name: str, **params: object) -> Scheduler:
    """A new scheduler by name, with its keyword parameters.

    Parameters: ``sh`` and ``mh`` take ``size`` (a prime table size), ``twos`` takes ``rng``
    (a :class:`random.Random`), ``wrr`` takes ``precompute_limit``. Raises
    :class:`SchedulerError` for an unknown name, an unknown parameter or a bad value.
    """
    cls = SCHEDULERS.get(name)
    if cls is None:
        known = ", ".join(sorted(SCHEDULERS))
        raise SchedulerError(f"unknown scheduler {name!r}; expected one of {known}")
    unknown = sorted(set(params) - cls.params)
    if unknown:
        accepted = ", ".join(sorted(cls.params)) or "none"
        raise SchedulerError(
            f"scheduler {name!r} has no parameter {', '.join(unknown)}; accepted: {accepted}"
        )
    _check_params(name, params)
    return cls(**params)


def _check_params(name: str, params: dict[str, object]) -> None:
    size = params.get("size")
    if "size" in params and (not isinstance(size, int) or isinstance(size, bool)):
        raise SchedulerError(f"scheduler {name!r}: size must be a prime integer, not {size!r}")
    rng = params.get("rng")
    if rng is not None and not isinstance(rng, random.Random):
        raise SchedulerError(f"scheduler {name!r}: rng must be a random.Random, not {rng!r}")
    limit = params.get("precompute_limit")
    if "precompute_limit" in params and (not isinstance(limit, int) or limit < 0):
        raise SchedulerError(f"scheduler {name!r}: precompute_limit must be an int >= 0")
