"""The ``nearest`` policy: the nearest tier that can take the client, the weights inside it.

Tiers (see :mod:`dispatcher.placement.ranking`): learned RTT bands, then same region, same
ASN, same country, same continent, great-circle distance bands, the rest. The first tier
with a site that takes new clients wins, and smooth weighted round-robin picks inside it.

A site *sheds load* (NS1's shed-load filter, with hysteresis) from a fresh load report at or
above ``high_watermark`` until one below ``low_watermark``: while shedding it takes no new
clients as long as some site of its tier does not shed; a tier whose every site sheds gives
way to the next; when every candidate sheds, the nearest tier takes clients by weight anyway.

The cost of a request is a few dictionary lookups: for one candidate tuple (a snapshot's)
the sites are prepared once, and the ladder of each distinct client location is computed
once and kept (at most :data:`MAX_LADDERS` per tuple), with the sub-tuple its rotation
reads, so the rotation runs on its precomputed schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from dispatcher.errors import ConfigError
from dispatcher.placement.model import (
    LOWER_TIER,
    NOT_PICKED,
    OVER_WATERMARK,
    TAKEN,
    Candidate,
    Client,
    Considered,
    Location,
)
from dispatcher.placement.policies import Weighted
from dispatcher.placement.policy import Option, Policy, register
from dispatcher.placement.ranking import (
    TIER_ASN,
    TIER_CONTINENT,
    TIER_COUNTRY,
    TIER_DISTANCE,
    TIER_REGION,
    TIER_RTT,
    Place,
    Tier,
    Watermarks,
    fresh_load,
    haversine_km,
    ladder,
    located_at,
    places,
    prepared,
    shedding_after,
)

#: The source named by the configuration errors the options raise (the loader re-labels).
CONFIG_SOURCE = "<config>"
#: Ladders kept per candidate tuple (distinct client locations); past it the oldest goes.
MAX_LADDERS = 4096
#: Candidate tuples whose preparation is kept (a pool's, and the odd filtered copy).
MAX_BOARDS = 4
#: Rotations kept (one per distinct set of sites a tier offers).
MAX_ROTATIONS = 1024

_Pick = Callable[[Sequence[Candidate], Client, Location], "Candidate | None"]
_GeoKey = tuple[Any, ...]


# --- options -------------------------------------------------------------------------------


def _shown(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(raw: object, where_: str, low: float, high: float, what: str) -> float:
    if (
        isinstance(raw, bool)
        or not isinstance(raw, int | float)
        or not math.isfinite(raw)
        or not low <= raw <= high
    ):
        raise ConfigError(CONFIG_SOURCE, where_, f"{what}, got {_shown(raw)}")
    return float(raw)


def parse_load(raw: object, where_: str) -> float:
    """A load watermark: a number from 0 to 1 (a site's reported utilisation)."""
    return _number(raw, where_, 0.0, 1.0, "a load from 0 to 1")


def parse_band(raw: object, where_: str) -> float:
    """A band factor: a number from 1 to 100."""
    return _number(raw, where_, 1.0, 100.0, "a factor from 1 to 100")


def parse_seconds(raw: object, where_: str) -> float:
    """A report's maximum age: 0.1 to 86400 seconds."""
    return _number(raw, where_, 0.1, 86_400.0, "a number of seconds from 0.1 to 86400")


def parse_samples(raw: object, where_: str) -> int:
    """A sample count: a whole number from 1 to 1,000,000."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 1_000_000:
        raise ConfigError(
            CONFIG_SOURCE, where_, f"a whole number from 1 to 1000000, got {_shown(raw)}"
        )
    return raw


OPTIONS: Mapping[str, Option] = MappingProxyType(
    {
        "high_watermark": Option(
            parse_load,
            0.9,
            "a site whose fresh load report is at or above this (0-1) starts shedding load",
        ),
        "low_watermark": Option(
            parse_load,
            0.75,
            "a shedding site takes new clients again once its load is below this (0-1, "
            "at most high_watermark)",
        ),
        "load_max_age": Option(
            parse_seconds, 30.0, "seconds a load report counts; an older one is no report"
        ),
        "rtt_min_samples": Option(
            parse_samples,
            10,
            "learned RTT samples a site needs for the client's network before RTT ranks it",
        ),
        "rtt_band": Option(
            parse_band, 1.5, "sites within this factor of the lowest RTT share the RTT tier"
        ),
        "distance_band": Option(
            parse_band,
            1.5,
            "sites within this factor of the nearest distance (at least 100 km) share a "
            "distance tier",
        ),
    }
)


# --- per candidate tuple and per client location -------------------------------------------


class _Ladder(NamedTuple):
    """A client location's tiers, and what ``choose`` needs: the sites of the first tier
    that takes clients (``chosen``) and the rotation that picks among them."""

    tiers: tuple[Tier, ...]
    chosen: int
    pick_from: tuple[Candidate, ...]
    pick: _Pick
    all_shedding: bool


class _Board:
    """One candidate tuple, prepared: its places, and the ladders computed for it so far
    (valid for one shedding ``generation``)."""

    __slots__ = (
        "by_place",
        "by_rtt",
        "candidates",
        "expires",
        "generation",
        "interned",
        "names",
        "places",
    )

    def __init__(self, candidates: tuple[Candidate, ...]) -> None:
        self.candidates = candidates
        self.places: tuple[Place, ...] = places(candidates)
        self.names = frozenset(site.name for site in candidates)
        self.expires = -math.inf  # (evaluate shedding at once)
        self.generation = -1
        self.by_place: dict[_GeoKey, _Ladder] = {}
        self.by_rtt: dict[int, tuple[Mapping[str, Any], _GeoKey, _Ladder]] = {}
        self.interned: dict[tuple[str, ...], tuple[Candidate, ...]] = {}

    def restart(self, generation: int) -> None:
        self.generation = generation
        self.by_place.clear()
        self.by_rtt.clear()
        self.interned.clear()


@register
class Nearest(Policy):
    """The nearest tier that can take the client; smooth weighted round-robin inside it.

    ``where`` is the pool's key path (``"pools.eu"``), used to name ``low_watermark`` when
    it is above ``high_watermark`` (a :class:`ConfigError`).
    """

    name = "nearest"
    locates = True
    options = OPTIONS

    def __init__(self, settings: Mapping[str, Any] | None = None, *, where: str = "") -> None:
        super().__init__(settings)
        values = {key: option.default for key, option in self.options.items()}
        values.update(self.settings)
        self.settings = values
        high, low = values["high_watermark"], values["low_watermark"]
        if low > high:
            raise ConfigError(
                CONFIG_SOURCE,
                f"{where}.low_watermark" if where else "low_watermark",
                f"at most high_watermark ({high:g}), got {low:g}",
            )
        self.marks = Watermarks(high, low, values["load_max_age"])
        self.rtt_min_samples: int = values["rtt_min_samples"]
        self.rtt_band: float = values["rtt_band"]
        self.distance_band: float = values["distance_band"]
        self._shedding: frozenset[str] = frozenset()
        self._generation = 0
        self._board: _Board | None = None
        self._boards: dict[int, _Board] = {}
        self._rotations: dict[tuple[str, ...], Weighted] = {}

    @property
    def shedding(self) -> frozenset[str]:
        """The names of the sites shedding load, as of the last call."""
        return self._shedding

    # --- the contract ---

    def choose(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> Candidate | None:
        now = client.now
        board = self._board
        if (
            board is None
            or board.candidates is not candidates
            or now > board.expires
            or board.generation != self._generation
        ):
            if not candidates:
                return None
            board = self._bind(candidates, now)
        if not located.rtt:  # (the common case, inline: a client located by place alone)
            key = (
                located.region,
                located.asn,
                located.country,
                located.continent,
                located.coordinates,
            )
            found = board.by_place.get(key)
            if found is not None:
                return found.pick(found.pick_from, client, located)
        found = self._ladder(board, located)
        return found.pick(found.pick_from, client, located)

    def order(
        self, candidates: Sequence[Candidate], client: Client, located: Location, count: int
    ) -> tuple[Candidate, ...]:
        """Sites that take clients tier by tier (the rotation's pick first, then the others
        in configured order), then the shedding ones in the same order."""
        placed = self._placed(candidates, client, located) if count > 0 else None
        if placed is None:
            return ()
        first, found = placed
        takers: list[Candidate] = [first]
        shedding: list[Candidate] = []
        for tier in found.tiers:
            for site in tier.sites:
                if site is not first:
                    (shedding if site.name in self._shedding else takers).append(site)
        return (*takers, *shedding)[:count]

    def consider(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> list[Considered]:
        """A verdict for every candidate, in preference order (nearest tier first)."""
        placed = self._placed(candidates, client, located)
        if placed is None:
            return []
        chosen, found = placed
        explain = _Explainer(self, located, client.now, found)
        return [
            explain.site(site, index, tier, chosen)
            for index, tier in enumerate(found.tiers)
            for site in tier.sites
        ]

    def _placed(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> tuple[Candidate, _Ladder] | None:
        """What :meth:`choose` does, with the ladder it read."""
        if not candidates:
            return None
        found = self._ladder(self._bind(candidates, client.now), located)
        chosen = found.pick(found.pick_from, client, located)
        return None if chosen is None else (chosen, found)

    # --- state and caches ---

    def _bind(self, candidates: Sequence[Candidate], now: float) -> _Board:
        board = self._board
        if (
            board is not None
            and board.candidates is candidates
            and now <= board.expires
            and board.generation == self._generation
        ):
            return board
        # (a list may change under us: a copy of it is bound, afresh on every call)
        frozen = candidates if isinstance(candidates, tuple) else tuple(candidates)
        key = id(frozen)
        board = self._boards.get(key)
        if board is None or board.candidates is not frozen:
            board = _Board(frozen)
            self._boards[key] = board
            if len(self._boards) > MAX_BOARDS:
                del self._boards[next(iter(self._boards))]
        if now > board.expires:
            shedding, board.expires = shedding_after(
                board.candidates, self._shedding, now, self.marks
            )
            if shedding != self._shedding:
                self._shedding = shedding
                self._generation += 1
        if board.generation != self._generation:
            board.restart(self._generation)
        self._board = board
        return board

    def _ladder(self, board: _Board, located: Location) -> _Ladder:
        rtt = located.rtt
        key = (located.region, located.asn, located.country, located.continent, located.coordinates)
        if rtt:
            hit = board.by_rtt.get(id(rtt))
            if hit is not None and hit[0] is rtt and hit[1] == key:
                return hit[2]
            found = self._build(board, key, self._measured(board, rtt))
            _make_room(board.by_rtt, MAX_LADDERS)
            board.by_rtt[id(rtt)] = (rtt, key, found)
            return found
        found_place = board.by_place.get(key)
        if found_place is None:
            found_place = self._build(board, key, {})
            _make_room(board.by_place, MAX_LADDERS)
            board.by_place[key] = found_place
        return found_place

    def _measured(self, board: _Board, rtt: Mapping[str, Any]) -> dict[str, float]:
        """The RTT of each candidate with at least ``rtt_min_samples`` samples."""
        measured: dict[str, float] = {}
        for name in board.names:
            sample = rtt.get(name)
            if sample is None:
                continue
            srtt, samples = sample
            if samples >= self.rtt_min_samples and math.isfinite(srtt) and srtt >= 0:
                measured[name] = float(srtt)
        return measured

    def _build(self, board: _Board, key: _GeoKey, measured: Mapping[str, float]) -> _Ladder:
        tiers = ladder(board.places, located_at(*key), measured, self.distance_band, self.rtt_band)
        shedding = self._shedding
        for chosen, tier in enumerate(tiers):
            takers = tuple(site for site in tier.sites if site.name not in shedding)
            if takers:
                return self._rung(board, tiers, chosen, takers, all_shedding=False)
        return self._rung(board, tiers, 0, tiers[0].sites, all_shedding=True)

    def _rung(
        self,
        board: _Board,
        tiers: tuple[Tier, ...],
        chosen: int,
        takers: tuple[Candidate, ...],
        *,
        all_shedding: bool,
    ) -> _Ladder:
        """The ladder, with ``takers`` interned (one tuple object per set of sites, so the
        rotation sees the same tuple every time and keeps to its schedule)."""
        names = tuple(site.name for site in takers)
        interned = board.interned.get(names)
        if interned is None:
            _make_room(board.interned, 2 * MAX_LADDERS)
            board.interned[names] = takers
        else:
            takers = interned
        rotation = self._rotations.get(names)
        if rotation is None:
            _make_room(self._rotations, MAX_ROTATIONS)
            rotation = self._rotations[names] = Weighted()
        return _Ladder(tiers, chosen, takers, rotation.choose, all_shedding)


def _make_room(cache: dict[Any, Any], limit: int) -> None:
    """Drop the oldest entry of ``cache`` when it holds ``limit`` (first in, first out)."""
    if len(cache) >= limit:
        del cache[next(iter(cache))]


class _Explainer:
    """Verdicts and details for :meth:`Nearest.consider` (the explain path, not the hot one)."""

    def __init__(self, policy: Nearest, located: Location, now: float, found: _Ladder) -> None:
        self.policy = policy
        self.located = located
        self.now = now
        self.found = found
        self.origin = prepared(located.coordinates)

    def site(self, site: Candidate, index: int, tier: Tier, chosen: Candidate) -> Considered:
        found = self.found
        shedding = site.name in self.policy.shedding
        if site is chosen:
            verdict = TAKEN
        elif index < found.chosen:
            verdict = OVER_WATERMARK
        elif index == found.chosen:
            verdict = OVER_WATERMARK if shedding and not found.all_shedding else NOT_PICKED
        else:
            verdict = LOWER_TIER
        distance = self._distance(site)
        rtt, samples = self._rtt(site)
        notes = [self._why(site, tier, distance, rtt, samples)]
        if shedding:
            notes.append(self._load(site))
        if verdict == LOWER_TIER:
            notes.append(f"a nearer tier takes the client ({_tier(found.tiers[found.chosen])})")
        elif found.all_shedding and index == found.chosen:
            notes.append("every site sheds load: the nearest tier takes clients anyway")
        return Considered(
            site.name,
            verdict,
            tier=tier.name,
            distance_km=None if distance is None else round(distance, 1),
            rtt=rtt,
            detail="; ".join(notes),
        )

    def _why(
        self, site: Candidate, tier: Tier, distance: float | None, rtt: float | None, samples: int
    ) -> str:
        located = self.located
        if tier.name == TIER_RTT and rtt is not None:
            return f"RTT {rtt * 1000:.1f} ms over {samples} samples ({_band(tier)})"
        if tier.name == TIER_DISTANCE and distance is not None:
            why = f"{distance:.0f} km ({_band(tier)})"
        else:
            why = {
                TIER_REGION: f"same region {located.region}",
                TIER_ASN: f"same ASN {located.asn}",
                TIER_COUNTRY: f"same country {located.country}",
                TIER_CONTINENT: f"same continent {located.continent}",
            }.get(tier.name, "no nearer match")
        if rtt is not None:
            minimum = self.policy.rtt_min_samples
            why += f" (RTT from {samples} samples, fewer than rtt_min_samples {minimum})"
        return why

    def _load(self, site: Candidate) -> str:
        marks = self.policy.marks
        load = fresh_load(site, self.now, marks.max_age)
        shown = "unknown" if load is None else f"{load:g}"
        return (
            f"shedding load (load {shown}: reached high_watermark {marks.high:g}, "
            f"not yet below low_watermark {marks.low:g})"
        )

    def _distance(self, site: Candidate) -> float | None:
        point = prepared(site.coordinates)
        if self.origin is None or point is None:
            return None
        return haversine_km(self.origin, point)

    def _rtt(self, site: Candidate) -> tuple[float | None, int]:
        sample = self.located.rtt.get(site.name)
        if sample is None or not math.isfinite(sample[0]):
            return None, 0
        return float(sample[0]), int(sample[1])


def _tier(tier: Tier) -> str:
    """A tier as explain names it: ``"distance, band up to 1500 km"``."""
    return tier.name if tier.bound is None else f"{tier.name}, {_band(tier)}"


def _band(tier: Tier) -> str:
    bound = tier.bound or 0.0
    if tier.name == TIER_RTT:
        return f"band up to {bound * 1000:.1f} ms"
    return f"band up to {bound:.0f} km"
