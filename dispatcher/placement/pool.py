"""A pool as placement sees it: its configuration, and the view a snapshot precomputes.

:class:`PoolConfig` is what the configuration file says of a pool (the configuration module
builds it and re-exports it); :class:`PoolView` is one pool in one snapshot, with
everything a placement reads computed when the snapshot was built, off the hot path.
:class:`Where` is how placement locates a client: the locator (prefix map, IP database)
and the learned RTT plug in through two small protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from dispatcher.placement.model import NOWHERE, Candidate, Client, Location, RttSample
from dispatcher.placement.policy import Policy
from dispatcher.placement.ring import NetworkRing


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """A pool of sites that share one placement policy and one fallback.

    ``options`` holds the policy's declared options, parsed, defaults filled in (see
    :attr:`Policy.options <dispatcher.placement.policy.Policy.options>`).
    """

    name: str
    policy: str = "weighted"
    fallback: str = "sorry"
    redirect_status: int | None = None
    all_down: str = "sorry"
    options: Mapping[str, Any] = field(default_factory=dict)


class Locator(Protocol):
    """Where a client is: the prefix map, then the IP database (``NOWHERE`` if neither
    knows). Must be cheap and never raise on any address or subnet text."""

    def locate(self, address: str, subnet: str = "") -> Location: ...

    def extent(self, subnet: str, length: int) -> int:
        """How far a location of ``subnet`` found at prefix ``length`` holds (a prefix length,
        ``length`` at least): see :meth:`dispatcher.placement.locate.Locator.extent`."""
        ...


class RttSource(Protocol):
    """The learned RTT from each site to the client's network (only sites with enough
    samples). Must be cheap and never raise on any address or subnet text."""

    def lookup(self, address: str, subnet: str = "") -> Mapping[str, RttSample]: ...


@dataclass(frozen=True, slots=True)
class Where:
    """How a snapshot locates clients; with neither part, every client is ``NOWHERE``."""

    locator: Locator | None = None
    rtt: RttSource | None = None

    def locate(self, client: Client) -> Location:
        locator, rtt = self.locator, self.rtt
        located = locator.locate(client.address, client.subnet) if locator else NOWHERE
        if rtt is not None:
            samples = rtt.lookup(client.address, client.subnet)
            if samples:
                located = replace(located, rtt=samples)
        return located

    def extent(self, subnet: str, length: int) -> int:
        """The prefix length over which the location of ``subnet`` at prefix ``length``
        holds (``length`` without a locator)."""
        locator = self.locator
        return length if locator is None else locator.extent(subnet, length)


#: Locates nobody.
NO_WHERE = Where()


@dataclass(frozen=True, slots=True)
class PoolView:
    """One pool in one snapshot.

    ``candidates`` are the sites that may take new clients, in configured order (while
    ``failing_open``, the sites that would if health were ignored); ``by_name`` the same by
    name. ``members`` names every site of the pool in configured order, and ``excluded``
    gives the verdict of each one that is not a candidate (down, drained, weight-0), for
    ``explain``. ``ring`` is the network affinity's consistent hash (None without it);
    ``where`` how to locate a client. ``plain`` (computed) is true when a placement reads
    nothing of the client: a policy that reads neither the client nor its location, and
    no ring; the hot path then skips building a :class:`Client`.
    """

    config: PoolConfig
    policy: Policy
    candidates: tuple[Candidate, ...]
    status: int
    by_name: Mapping[str, Candidate] = field(default_factory=dict)
    failing_open: bool = False
    members: tuple[str, ...] = ()
    excluded: Mapping[str, str] = field(default_factory=dict)
    ring: NetworkRing | None = None
    where: Where = NO_WHERE
    plain: bool = False

    def __post_init__(self) -> None:
        if not self.by_name and self.candidates:
            object.__setattr__(self, "by_name", {c.name: c for c in self.candidates})
        if not self.members:
            object.__setattr__(self, "members", tuple(c.name for c in self.candidates))
        policy = self.policy
        plain = not policy.reads_client and not policy.locates and self.ring is None
        object.__setattr__(self, "plain", plain)

    @property
    def name(self) -> str:
        return self.config.name
