"""Placement's vocabulary: who the client is, where it is, what was decided and why.

Every front (the HTTP hot path, ``${site:POOL}`` in rules, DNS, ``explain``, the embedded
middleware) describes its client with a :class:`Client`, and placement answers with the
sites that should take it. Pure data: no I/O, nothing that raises on client input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from dispatcher.counts import new_cell

#: How a client was located (:attr:`Location.source`).
LOCATED_BY_PREFIX_MAP = "prefix-map"
LOCATED_BY_DATABASE = "database"
NOT_LOCATED = "none"

#: A site's learned round-trip time to a client network: smoothed RTT in seconds, samples.
RttSample = tuple[float, int]
_NO_RTT: Mapping[str, RttSample] = MappingProxyType({})


class Client(NamedTuple):
    """What every front can know of a client (a tuple: built once per request, cheaply).

    ``address`` is the client's IP address as text, already the trusted one (after the
    PROXY protocol and trusted proxies), ``""`` when unknown. ``subnet`` is an EDNS client
    subnet (``"192.0.2.0/24"``, DNS only), ``""`` when none: placement then locates the
    subnet instead of the address. ``host`` is the lower-cased ``Host`` the request came to
    (``b""`` for DNS): a site at that address is never chosen (it would be a loop).
    ``remembered`` names the site the client's affinity stamp names (not yet checked against
    any pool). ``now`` is the monotonic time.
    """

    address: str = ""
    subnet: str = ""
    host: bytes = b""
    remembered: str | None = None
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is, as far as the prefix map, the IP database and RTT tell.

    ``source`` is one of :data:`LOCATED_BY_PREFIX_MAP`, :data:`LOCATED_BY_DATABASE`,
    :data:`NOT_LOCATED`; ``prefix`` the network that matched. ``country`` is ISO 3166-1
    alpha-2 in upper case, ``continent`` a two-letter code (AF AN AS EU NA OC SA),
    ``coordinates`` (latitude, longitude) in degrees. ``rtt`` maps site names to the learned
    RTT of the client's network (only sites with samples for it).
    """

    source: str = NOT_LOCATED
    prefix: str | None = None
    region: str | None = None
    asn: int | None = None
    country: str | None = None
    continent: str | None = None
    coordinates: tuple[float, float] | None = None
    rtt: Mapping[str, RttSample] = field(default_factory=lambda: _NO_RTT)


#: The location of a client nothing is known of.
NOWHERE = Location()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A site that may take new clients, as the current snapshot sees it.

    ``location_base`` is ``base_url`` as bytes, ready to prefix a redirect target; ``netloc``
    its lower-cased authority; ``redirect_head`` the header lines of a plain redirect there
    up to the target (``content-length: 0``, then ``location: `` and ``location_base``).
    ``load`` is the last reported utilisation (0..1) and ``load_at`` the monotonic time it
    was received, both ``None`` when the site never reported. The topology fields
    (``region``, ``country``, ``continent``, ``asn``, ``coordinates``) are the site's,
    configured or located, ``None`` when unknown.

    ``placed`` is the redirect counter of the site while this candidate is current: a list
    of one slot per reason (:data:`dispatcher.counts.REASONS`) the hot path bumps
    (``site.placed[PLACED] += 1``, half the cost of a dictionary keyed by name), owned by
    this candidate alone (each snapshot builds its own).
    :class:`dispatcher.counts.RedirectCounts` adds the cells up and zeroes them.
    """

    name: str
    base_url: str
    weight: int
    location_base: bytes = b""
    netloc: bytes = b""
    redirect_head: bytes = b""
    load: float | None = None
    load_at: float | None = None
    region: str | None = None
    country: str | None = None
    continent: str | None = None
    asn: int | None = None
    coordinates: tuple[float, float] | None = None
    placed: list[int] = field(default_factory=new_cell, compare=False, repr=False)


# --- why a site was or was not chosen (the codes ``explain`` prints) ---

TAKEN = "taken"  # the site placement chose
REMEMBERED = "remembered"  # taken because the client's affinity names it
FAILING_OPEN = "failing-open"  # taken although down: every site is, the pool fails open
DOWN = "down"
DRAINED = "drained"
WEIGHT_ZERO = "weight-0"
OVER_WATERMARK = "over-watermark"  # shedding load: at/above high_watermark
LOWER_TIER = "lower-tier"  # a nearer tier could take the client
NOT_PICKED = "not-picked"  # eligible, same tier, the rotation or weights chose another
IS_HOST = "is-the-request-host"  # the site is the address the request came to (a loop)


@dataclass(frozen=True, slots=True)
class Considered:
    """One site of the pool as placement weighed it for one client (for ``explain``).

    ``tier`` names the nearest policy's tier (``"region"``, ``"asn"``, ``"country"``,
    ``"continent"``, ``"distance"``, ``"rtt"``, ``"rest"``) or is ``None`` for policies
    without tiers; ``distance_km`` and ``rtt`` are given when known.
    """

    site: str
    verdict: str
    tier: str | None = None
    distance_km: float | None = None
    rtt: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """What placement decided for one client of one pool.

    ``sites`` in order (the first is the redirect's; DNS answers the first N); empty when no
    site can take the client (the pool's ``all_down`` then answers). ``located`` is how the
    client was located; ``considered`` every site of the pool with its verdict, filled only
    when explaining.
    """

    pool: str
    sites: tuple[Candidate, ...]
    located: Location = NOWHERE
    considered: tuple[Considered, ...] = ()

    @property
    def site(self) -> Candidate | None:
        return self.sites[0] if self.sites else None
