"""The nearest policy's pure core: tiers of sites by where the client is, great-circle
distance, and the shed-load hysteresis. No state, no I/O; :mod:`dispatcher.placement.nearest`
keeps the state and the caches.

A client's *ladder* is the pool's candidates split into tiers, nearest first: every site
lands in the first tier it matches, and a tier lists its sites in configured order.

1. ``rtt``: sites with enough learned RTT samples for the client's network, in bands: the
   first band holds the sites within ``rtt_band`` times the lowest RTT, the next band starts
   at the lowest RTT left, and so on (RTTs under :data:`RTT_FLOOR` count as that much when
   the band is drawn, so loopback-fast sites are one band, not one each).
2. ``region`` (the prefix map's), ``asn``, ``country``, ``continent``: equal to the client's.
3. ``distance``: the remaining sites with coordinates, when the client has coordinates, in
   bands of ``distance_band`` times the nearest distance left (distances under
   :data:`DISTANCE_FLOOR_KM` count as that much when the band is drawn).
4. ``rest``: everything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import NamedTuple

from dispatcher.placement.model import Candidate

#: Mean Earth radius (IUGG), in km.
EARTH_RADIUS_KM = 6371.0088
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM
#: Distances below this count as this much when a distance band is drawn (one metro area).
DISTANCE_FLOOR_KM = 100.0
#: RTTs below this (seconds) count as this much when an RTT band is drawn.
RTT_FLOOR = 0.001

TIER_RTT = "rtt"
TIER_REGION = "region"
TIER_ASN = "asn"
TIER_COUNTRY = "country"
TIER_CONTINENT = "continent"
TIER_DISTANCE = "distance"
TIER_REST = "rest"
#: Every tier name, nearest first.
TIERS = (TIER_RTT, TIER_REGION, TIER_ASN, TIER_COUNTRY, TIER_CONTINENT, TIER_DISTANCE, TIER_REST)

#: A point prepared for the haversine formula: latitude and longitude in radians, cos(lat).
Point = tuple[float, float, float]


def valid_coordinates(value: object) -> tuple[float, float] | None:
    """``value`` as (latitude, longitude) when it is a pair of finite degrees in range
    (latitude -90..90, longitude -180..180), else ``None``: bad coordinates from a database
    make a site or client unplaced by distance, never an error."""
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    lat, lon = value
    for part in (lat, lon):
        if isinstance(part, bool) or not isinstance(part, int | float):
            return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # (NaN fails both)
        return None
    return float(lat), float(lon)


def prepared(coordinates: object) -> Point | None:
    """``coordinates`` ready for :func:`haversine_km`, ``None`` when they are not valid."""
    valid = valid_coordinates(coordinates)
    if valid is None:
        return None
    lat, lon = math.radians(valid[0]), math.radians(valid[1])
    return lat, lon, math.cos(lat)


def haversine_km(a: Point, b: Point) -> float:
    """Great-circle distance between two prepared points (exactly symmetric, 0 for one
    point, at most half the circumference)."""
    half = math.sin((b[0] - a[0]) * 0.5)
    across = math.sin((b[1] - a[1]) * 0.5)
    h = half * half + a[2] * b[2] * across * across
    return 2.0 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in km between two (latitude, longitude) pairs in degrees;
    ``ValueError`` when either is not valid coordinates."""
    pa, pb = prepared(a), prepared(b)
    if pa is None or pb is None:
        raise ValueError(f"not (latitude, longitude) in degrees: {a!r}, {b!r}")
    return haversine_km(pa, pb)


class Place(NamedTuple):
    """A candidate as the ranking reads it, prepared once per candidate tuple: codes in upper
    case, coordinates as a :data:`Point`, ``position`` its place in configured order."""

    site: Candidate
    position: int
    region: str | None
    asn: int | None
    country: str | None
    continent: str | None
    point: Point | None


def places(candidates: Iterable[Candidate]) -> tuple[Place, ...]:
    return tuple(
        Place(
            site,
            index,
            site.region,
            site.asn,
            _upper(site.country),
            _upper(site.continent),
            prepared(site.coordinates),
        )
        for index, site in enumerate(candidates)
    )


class Where(NamedTuple):
    """The client's side of the ranking (from :class:`~dispatcher.placement.model.Location`)."""

    region: str | None = None
    asn: int | None = None
    country: str | None = None
    continent: str | None = None
    point: Point | None = None


def located_at(
    region: str | None,
    asn: int | None,
    country: str | None,
    continent: str | None,
    coordinates: object,
) -> Where:
    return Where(region, asn, _upper(country), _upper(continent), prepared(coordinates))


class Tier(NamedTuple):
    """One rung of a ladder: its ``name`` (one of :data:`TIERS`), its sites in configured
    order, and for a band the upper bound it was drawn with (km or seconds)."""

    name: str
    sites: tuple[Candidate, ...]
    bound: float | None = None


def ladder(
    sites: Sequence[Place],
    client: Where,
    measured: Mapping[str, float],
    distance_band: float,
    rtt_band: float,
) -> tuple[Tier, ...]:
    """The tiers of ``sites`` for ``client``, nearest first; ``measured`` maps the names of
    the sites with enough RTT samples for the client's network to their RTT (seconds)."""
    tiers: list[Tier] = []
    rest = list(sites)
    if measured:
        timed = [(measured[p.site.name], p) for p in rest if p.site.name in measured]
        rest = [p for p in rest if p.site.name not in measured]
        tiers += _bands(TIER_RTT, timed, RTT_FLOOR, rtt_band)
    for name, value, key in (
        (TIER_REGION, client.region, _region),
        (TIER_ASN, client.asn, _asn),
        (TIER_COUNTRY, client.country, _country),
        (TIER_CONTINENT, client.continent, _continent),
    ):
        if value is None or not rest:
            continue
        same = [p for p in rest if key(p) == value]
        if same:
            tiers.append(Tier(name, tuple(p.site for p in same)))
            rest = [p for p in rest if key(p) != value]
    origin = client.point
    if origin is not None and rest:
        located = [(haversine_km(origin, p.point), p) for p in rest if p.point is not None]
        rest = [p for p in rest if p.point is None]
        tiers += _bands(TIER_DISTANCE, located, DISTANCE_FLOOR_KM, distance_band)
    if rest:
        tiers.append(Tier(TIER_REST, tuple(p.site for p in rest)))
    return tuple(tiers)


def _bands(name: str, valued: list[tuple[float, Place]], floor: float, band: float) -> list[Tier]:
    """Successive bands of ``valued`` (value, place): each holds the places up to ``band``
    times the lowest value left (at least ``floor``), listed in configured order."""
    valued.sort(key=lambda vp: (vp[0], vp[1].position))
    tiers: list[Tier] = []
    start = 0
    while start < len(valued):
        bound = max(valued[start][0], floor) * band
        end = start + 1
        while end < len(valued) and valued[end][0] <= bound:
            end += 1
        members = sorted(valued[start:end], key=lambda vp: vp[1].position)
        tiers.append(Tier(name, tuple(p.site for _, p in members), bound))
        start = end
    return tiers


def _upper(code: str | None) -> str | None:
    return code.upper() if code else None


_region: Callable[[Place], object] = attrgetter("region")
_asn: Callable[[Place], object] = attrgetter("asn")
_country: Callable[[Place], object] = attrgetter("country")
_continent: Callable[[Place], object] = attrgetter("continent")


# --- shed load (NS1's high and low watermarks) ---------------------------------------------


class Watermarks(NamedTuple):
    """When a site sheds load: a fresh report at or above ``high`` starts it, one below
    ``low`` ends it; a report older than ``max_age`` seconds is no report."""

    high: float
    low: float
    max_age: float


def fresh_load(site: Candidate, now: float, max_age: float) -> float | None:
    """The site's reported load if the report is at most ``max_age`` seconds old."""
    load, at = site.load, site.load_at
    if load is None or at is None or now - at > max_age:
        return None
    return load


def shedding_after(
    candidates: Sequence[Candidate],
    shedding: Collection[str],
    now: float,
    marks: Watermarks,
) -> tuple[frozenset[str], float]:
    """Which of ``candidates`` shed load now, given which did before (``shedding``), and
    the time when a report used for that goes stale (``inf`` when none will).

    A site with no fresh report does not shed. Names in ``shedding`` that are not among
    ``candidates`` (a site briefly left out) keep their state, up to as many as there are
    candidates plus 16, so the state stays bounded under any sequence of site names.
    """
    now_shedding: set[str] = set()
    expires = math.inf
    names = set()
    for site in candidates:
        names.add(site.name)
        load = fresh_load(site, now, marks.max_age)
        if load is None:
            continue
        expires = min(expires, site.load_at + marks.max_age)  # type: ignore[operator]
        if load >= marks.high or (site.name in shedding and not load < marks.low):
            now_shedding.add(site.name)
    absent = [name for name in shedding if name not in names]
    if len(absent) <= len(names) + 16:
        now_shedding.update(absent)
    return frozenset(now_shedding), expires
