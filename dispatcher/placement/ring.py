"""Network affinity as a consistent hash: a client's network always lands on the same site.

Each pool that network affinity serves gets a :class:`NetworkRing` when its snapshot is
built: a Maglev table (:mod:`dispatcher.maglev`) of the pool's sites, weighted, computed
from nothing but their names and weights. Every worker and every replica builds the same
table, so they place a network identically with no shared state and nothing to expire.

The table holds every site of the pool with a weight above zero, whatever its health or
drain: a lookup that lands on a site that cannot take clients now rehashes (a new salt each
round, as IPVS's ``*-fallback`` schedulers do) until it lands on one that can. So a site
going down or being drained moves exactly its own networks, spread over the others by
weight, and they come back when it does. Registering or removing a site, or changing a
weight, rebuilds the table: Maglev then moves a little more than the departing site's
share (about 1/N of the networks in all).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dispatcher.maglev import MH_DEFAULT_SIZE, client_hash, maglev_table
from dispatcher.placement.model import Candidate, Client

#: Salted rounds before a lookup whose sites are mostly unavailable takes the fallback.
ROUNDS = 16
#: Addresses whose first slot a ring remembers (a memo of a pure function: it changes no
#: answer, it saves masking and hashing a returning address); emptied when full.
MEMO_SIZE = 16_384


@dataclass(frozen=True, slots=True)
class NetworkRing:
    """A pool's Maglev table of site names, and how a client address becomes a network.

    ``members`` are the ``(name, weight)`` pairs the table was built from (a snapshot
    reuses the ring while they stay the same); ``slots`` the table itself.
    """

    members: tuple[tuple[str, int], ...]
    slots: tuple[str, ...]
    netmask: int = 24
    netmask6: int = 64
    #: address (or subnet) -> (network, its hash, its first slot's site), or None
    memo: dict[str, tuple[str, int, str] | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(
        cls, members: Sequence[tuple[str, int]], *, netmask: int = 24, netmask6: int = 64
    ) -> NetworkRing:
        """The ring of ``members`` (distinct names, weights above zero): ~30-70 ms of CPU,
        so snapshots reuse a ring whose members did not change (:meth:`same`)."""
        entries = tuple(members)
        table = maglev_table(entries, MH_DEFAULT_SIZE)
        return cls(entries, tuple(entries[i][0] for i in table), netmask, netmask6)

    def same(self, members: Sequence[tuple[str, int]], netmask: int, netmask6: int) -> bool:
        return (
            self.members == tuple(members) and self.netmask == netmask and self.netmask6 == netmask6
        )

    def network(self, client: Client) -> str | None:
        """The client's network (``198.51.100.0/24``): its EDNS client subnet if it has
        one, else its address, masked to the configured prefix; None if neither is an IP."""
        if client.subnet:
            return subnet_network(client.subnet, self.netmask, self.netmask6)
        return client_network(client.address, self.netmask, self.netmask6)

    def site(
        self,
        client: Client,
        available: Mapping[str, Candidate],
        candidates: Sequence[Candidate],
    ) -> Candidate | None:
        """The site the client's network hashes to among ``available`` (the pool's
        candidates by name); None when the client has no network or nothing is available."""
        if not available:
            return None
        text = client.subnet or client.address
        memo = self.memo
        try:
            first = memo[text]
        except KeyError:
            first = self._first(client)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[text] = first
        if first is None:
            return None
        key, h, name = first
        site = available.get(name)
        if site is not None:
            return site
        slots = self.slots
        size = len(slots)
        salt = 1
        while site is None and salt <= ROUNDS:
            site = available.get(slots[client_hash(key, salt) % size])
            salt += 1
        if site is None:  # most of the table is unavailable: any candidate, still by hash
            site = candidates[h % len(candidates)] if candidates else None
        return site

    def _first(self, client: Client) -> tuple[str, int, str] | None:
        """The client's network, its hash, and the site of its first slot."""
        key = self.network(client)
        if key is None:
            return None
        h = client_hash(key)
        return key, h, self.slots[h % len(self.slots)]


def client_network(address: str, netmask: int, netmask6: int) -> str | None:
    """``address`` masked to its network (``192.0.2.0/24``), or None if it is not an IP."""
    if netmask == 24 and address.count(".") == 3 and address.replace(".", "").isdigit():
        return address.rpartition(".")[0] + ".0/24"  # the common case, without ipaddress
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    prefix = netmask if ip.version == 4 else netmask6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def subnet_network(subnet: str, netmask: int, netmask6: int) -> str | None:
    """An EDNS client subnet (``192.0.2.0/24``) as a ring key: masked to the configured
    prefix when it is longer, kept as it is when it is shorter; None if it is not one."""
    try:
        network = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return None
    prefix = netmask if network.version == 4 else netmask6
    if network.prefixlen > prefix:
        network = network.supernet(new_prefix=prefix)
    return str(network)
