"""Who is alive: the heartbeat's membership, pure (no I/O) and on an injected monotonic clock.

The transports hand every authenticated heartbeat to :meth:`Membership.heard`; the planner
reads an immutable :class:`View` from :meth:`Membership.view`. Rules (heartbeat's):

- a peer is *alive* while it was heard on at least one transport within ``deadtime``; it is
  *dead* only when silent on every transport for ``deadtime``;
- it is *late* (logged, nothing else) when silent for more than ``warntime`` but alive;
- a configured peer never heard since our start is *pending* for ``initdead`` (alive for
  election purposes, so nobody acquires over it, but with unknown claims), then dead;
- a peer is *fresh* while heard within ``deadtime - 2 x interval`` (at least one interval).
- both windows get :data:`SLACK` x ``interval`` more, for scheduling jitter: heartbeats
  come on a fixed grid, so ``k`` lost in a row make a silence of exactly ``k + 1``
  intervals, and without slack a heartbeat one millisecond late would count as one more
  loss (``deadtime`` = 5 intervals would then act on 4 losses, the fresh window of 3 on 2).
  Quorum counts fresh voters, so a node cut off from the majority loses quorum (and
  releases) about two intervals before the others declare it dead and take its groups over
  (see docs/cluster.md, "Why no two owners"). The ``sees`` list a node advertises holds the
  peers it heard within ``deadtime``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Protocol

#: What a planner advertises. ``active``: a candidate for groups. ``standby``: a member
#: with a partial view (a peer it cannot hear is heard by others), so not a candidate;
#: it keeps what it owns. ``noquorum``: releasing everything. ``leaving``: a clean stop.
#: (The wire protocol's ``starting`` is not a candidate either.)
NodeState = Literal["active", "standby", "noquorum", "leaving"]
NODE_STATES: tuple[NodeState, ...] = ("active", "standby", "noquorum", "leaving")
CANDIDATE_STATES = frozenset({"active"})
Role = Literal["member", "witness"]
Liveness = Literal["alive", "late", "pending", "dead"]
TWO_NODE_REASON = "two-node cluster without a witness: relies on redundant transports"
#: Fraction of an interval a heartbeat may be late (scheduling, the network) and still count.
SLACK = 0.1


class HeartbeatFields(Protocol):
    """What membership reads from a heartbeat: :class:`Heartbeat` here, or the wire
    protocol's ``farmnode.cluster.protocol.Heartbeat`` as decoded, passed as it is."""

    @property
    def incarnation(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def groups(self) -> Collection[str]: ...
    @property
    def failed(self) -> Collection[str]: ...
    @property
    def sees(self) -> Collection[str]: ...


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What one heartbeat tells about its sender; what a :class:`Planner` advertises.

    ``groups``: the groups the sender claims (acquiring, owning or still stopping);
    ``failed``: groups whose monitor failed there (not to be given back to it yet);
    ``sees``: the peers the sender heard within deadtime (relayed, for partial partitions);
    ``quorum``: whether the sender sees a majority (its ``state`` says so too: ``noquorum``).
    The daemon copies these fields into the wire protocol's heartbeat.
    """

    incarnation: int
    priority: int = 0
    role: Role = "member"
    state: NodeState = "active"
    groups: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    sees: frozenset[str] = frozenset()
    quorum: bool = True


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as this node sees it at one instant (a snapshot; never changes)."""

    name: str
    liveness: Liveness
    fresh: bool
    #: seconds since last heard, per transport label (only transports that heard it)
    last_heard: Mapping[str, float]
    #: the peer's last heartbeat; ``None`` while never heard
    heartbeat: HeartbeatFields | None

    @property
    def alive(self) -> bool:
        """Alive or late or pending: not (yet) dead."""
        return self.liveness != "dead"

    @property
    def heard(self) -> bool:
        return self.heartbeat is not None

    @property
    def silent_for(self) -> float | None:
        """Seconds since heard on any transport; ``None`` while never heard."""
        return min(self.last_heard.values()) if self.last_heard else None

    def claims(self, group: str) -> bool:
        """Whether the peer is alive and its last heartbeat claims ``group``."""
        return self.alive and self.heartbeat is not None and group in self.heartbeat.groups

    def candidate(self, group: str) -> bool:
        """Whether the peer is alive, heard, an ``active`` member, and not failed on ``group``."""
        hb = self.heartbeat
        return (
            self.liveness in ("alive", "late")
            and hb is not None
            and hb.role == "member"
            and hb.state in CANDIDATE_STATES
            and group not in hb.failed
        )


@dataclass(frozen=True, slots=True)
class View:
    """The membership at ``now``: every configured peer, and this node's quorum."""

    self_name: str
    now: float
    peers: Mapping[str, PeerView]
    voters: int
    quorate: bool
    degraded_reason: str | None

    @property
    def sees(self) -> frozenset[str]:
        """The peers to advertise in ``sees``: heard and not dead (the deadtime window)."""
        return frozenset(name for name, p in self.peers.items() if p.heard and p.alive)


class Membership:
    """Heartbeat bookkeeping for one node: when each peer was last heard, on which transport.

    ``transports`` are labels (``udp:10.0.0.1:6940``); ``peers`` the configured voters other
    than this node. ``clock`` returns monotonic seconds; the node's start is ``clock()`` at
    construction. Heartbeats from unconfigured nodes, unknown transports or an older
    incarnation of a live peer are ignored (:meth:`heard` returns ``False``).
    """

    __slots__ = (
        "_clock",
        "_heard",
        "_last",
        "_started",
        "deadtime",
        "initdead",
        "interval",
        "peers",
        "self_name",
        "transports",
        "warntime",
    )

    def __init__(
        self,
        self_name: str,
        transports: Iterable[str],
        interval: float,
        deadtime: float,
        warntime: float,
        initdead: float,
        clock: Callable[[], float],
        peers: Iterable[str] = (),
    ) -> None:
        self.self_name = self_name
        self.transports = tuple(transports)
        self.interval = interval
        self.deadtime = deadtime
        self.warntime = warntime
        self.initdead = initdead
        self.peers = tuple(p for p in peers if p != self_name)
        self._clock = clock
        self._started = clock()
        self._last: dict[str, dict[str, float]] = {p: {} for p in self.peers}
        self._heard: dict[str, HeartbeatFields] = {}

    @property
    def fresh_window(self) -> float:
        """Seconds within which a peer counts as fresh (for quorum), slack included."""
        return max(self.interval, self.deadtime - 2 * self.interval) + self.slack

    @property
    def slack(self) -> float:
        """Seconds of scheduling jitter a heartbeat may be late without counting as lost."""
        return SLACK * self.interval

    @property
    def dead_after(self) -> float:
        """Seconds of silence after which a peer is dead: ``deadtime`` plus the slack."""
        return self.deadtime + self.slack

    def heard(self, node: str, transport: str, heartbeat: HeartbeatFields) -> bool:
        """Record an authenticated heartbeat from ``node`` received on ``transport`` now."""
        if node not in self._last or transport not in self.transports:
            return False
        now = self._clock()
        known = self._heard.get(node)
        if (
            known is not None
            and heartbeat.incarnation < known.incarnation
            and self._status(node, now) != "dead"
        ):
            return False
        self._heard[node] = heartbeat
        self._last[node][transport] = now
        return True

    def alive(self, node: str) -> bool:
        """This node, or a peer heard within deadtime, or unheard and still within initdead."""
        return node == self.self_name or self._status(node, self._clock()) != "dead"

    def late(self, node: str) -> bool:
        """A peer alive but silent for more than warntime (worth a log line)."""
        return self._status(node, self._clock()) == "late"

    def status(self, node: str) -> Liveness:
        """``alive``, ``late``, ``pending`` (never heard, within initdead) or ``dead``."""
        if node == self.self_name:
            return "alive"
        return self._status(node, self._clock())

    def _status(self, node: str, now: float) -> Liveness:
        last = self._last.get(node)
        if not last:
            return "pending" if now - self._started < self.initdead else "dead"
        silent = now - max(last.values())
        if silent > self.dead_after:
            return "dead"
        return "late" if silent > self.warntime else "alive"

    def quorum(self, voters: Collection[str] | None = None) -> bool:
        """A strict majority of ``voters`` (default: this node and every peer) is fresh.

        With two voters (no witness) or one, quorum always holds; see
        :attr:`degraded_reason`.
        """
        return self._quorum(self.peers if voters is None else voters, self._clock())

    def _quorum(self, voters: Collection[str], now: float) -> bool:
        names = set(voters) | {self.self_name}
        if len(names) <= 2:
            return True
        seen = sum(1 for name in names if self._fresh(name, now))
        return 2 * seen > len(names)

    @property
    def degraded_reason(self) -> str | None:
        """Said loudly in the status: a two-node cluster cannot tell a cut from a death."""
        return TWO_NODE_REASON if len(self.peers) == 1 else None

    def _fresh(self, node: str, now: float) -> bool:
        if node == self.self_name:
            return True
        last = self._last.get(node)
        if not last:
            return False
        return now - max(last.values()) <= self.fresh_window

    def next_change(self) -> float | None:
        """Seconds from now until the next moment a peer's liveness or freshness lapses on
        its own (it turns fresh -> not fresh, alive -> late -> dead, or pending -> dead);
        ``None`` when nothing is due. The daemon wakes then instead of at its next interval,
        so a death is acted on when it happens, not up to an interval later."""
        now = self._clock()
        due = [self._started + self.initdead] if any(not t for t in self._last.values()) else []
        for last in self._last.values():
            if last:
                heard = max(last.values())
                due += (heard + self.fresh_window, heard + self.warntime, heard + self.dead_after)
        ahead = [at - now for at in due if at > now]
        return min(ahead) if ahead else None

    def members(self) -> Mapping[str, PeerView]:
        """Every configured peer as seen now (alive, last heard per transport, its heartbeat)."""
        return self.view().peers

    def view(self) -> View:
        """An immutable snapshot of every peer and of quorum at this instant."""
        now = self._clock()
        peers = {name: self._peer(name, now) for name in self.peers}
        return View(
            self_name=self.self_name,
            now=now,
            peers=MappingProxyType(peers),
            voters=1 + len(self.peers),
            quorate=self._quorum(self.peers, now),
            degraded_reason=self.degraded_reason,
        )

    def _peer(self, name: str, now: float) -> PeerView:
        last = self._last[name]
        return PeerView(
            name=name,
            liveness=self._status(name, now),
            fresh=self._fresh(name, now),
            last_heard=MappingProxyType({t: now - at for t, at in last.items()}),
            heartbeat=self._heard.get(name),
        )


__all__ = [
    "NODE_STATES",
    "TWO_NODE_REASON",
    "Heartbeat",
    "HeartbeatFields",
    "Liveness",
    "Membership",
    "NodeState",
    "PeerView",
    "Role",
    "View",
]
