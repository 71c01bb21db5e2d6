"""The nearest policy (pure, so tested without sockets): one worked example per tier, shed
load with its hysteresis, explain's verdicts, and hypothesis for the ranking's promises."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.errors import ConfigError
from dispatcher.placement.model import (
    LOWER_TIER,
    NOT_PICKED,
    OVER_WATERMARK,
    TAKEN,
    Candidate,
    Client,
    Location,
    RttSample,
)
from dispatcher.placement.nearest import MAX_BOARDS, MAX_LADDERS, MAX_ROTATIONS, Nearest
from dispatcher.placement.policy import REGISTRY
from dispatcher.placement.ranking import (
    DISTANCE_FLOOR_KM,
    HALF_CIRCUMFERENCE_KM,
    RTT_FLOOR,
    great_circle_km,
)

PARIS = (48.8566, 2.3522)
FRANKFURT = (50.1109, 8.6821)
NEW_YORK = (40.7128, -74.0060)
SAN_FRANCISCO = (37.7749, -122.4194)
TOKYO = (35.6762, 139.6503)
SINGAPORE = (1.3521, 103.8198)
SYDNEY = (-33.8688, 151.2093)
SAO_PAULO = (-23.5505, -46.6333)


def site(
    name: str,
    weight: int = 1,
    *,
    region: str | None = None,
    asn: int | None = None,
    country: str | None = None,
    continent: str | None = None,
    at: tuple[float, float] | None = None,
    load: float | None = None,
) -> Candidate:
    return Candidate(
        name=name,
        base_url=f"http://{name}.test",
        weight=weight,
        region=region,
        asn=asn,
        country=country,
        continent=continent,
        coordinates=at,
        load=load,
        load_at=None if load is None else 0.0,
    )


#: The farm of the worked examples (docs/dispatching.md tells the same story).
FARM = (
    site("paris", region="eu-west", asn=3215, country="FR", continent="EU", at=PARIS),
    site("frankfurt", 2, region="eu-central", country="DE", continent="EU", at=FRANKFURT),
    site("newyork", region="us-east", country="US", continent="NA", at=NEW_YORK),
    site("sanfrancisco", region="us-west", country="US", continent="NA", at=SAN_FRANCISCO),
    site("tokyo", country="JP", continent="AS", at=TOKYO),
    site("singapore", country="SG", continent="AS", at=SINGAPORE),
)
NOW = Client(address="192.0.2.1", now=1.0)


def picks(
    policy: Nearest, candidates: Sequence[Candidate], located: Location, n: int = 60
) -> Counter[str]:
    chosen = [policy.choose(candidates, NOW, located) for _ in range(n)]
    return Counter(c.name for c in chosen if c is not None)


# --- one worked example per tier ------------------------------------------------------------


def test_same_region_wins_over_everything_geographic() -> None:
    # a client the prefix map puts in eu-central, though the database says France
    where = Location(region="eu-central", asn=3215, country="FR", continent="EU", coordinates=PARIS)
    assert picks(Nearest(), FARM, where) == {"frankfurt": 60}


def test_same_asn_wins_over_same_country() -> None:
    # a client of AS3215 (the network paris sits in), located in Germany
    where = Location(asn=3215, country="DE", continent="EU", coordinates=FRANKFURT)
    assert picks(Nearest(), FARM, where) == {"paris": 60}


def test_same_country_shares_by_weight() -> None:
    farm = (*FARM[:3], site("sanfrancisco", 3, country="US", continent="NA", at=SAN_FRANCISCO))
    where = Location(country="US", continent="NA", coordinates=(41.88, -87.63))  # Chicago
    assert picks(Nearest(), farm, where, 80) == {"newyork": 20, "sanfrancisco": 60}


def test_same_continent_when_no_site_in_the_country() -> None:
    where = Location(country="IT", continent="EU", coordinates=(41.9, 12.5))  # Rome
    # frankfurt weighs 2, paris 1: the continent tier shares by weight, distance plays no part
    assert picks(Nearest(), FARM, where) == {"frankfurt": 40, "paris": 20}


def test_distance_band_when_no_site_on_the_continent() -> None:
    where = Location(country="AU", continent="OC", coordinates=SYDNEY)
    # Singapore is 6,300 km away, Tokyo 7,800 km: both within 1.5 x 6,300; the rest beyond
    assert picks(Nearest(), FARM, where) == {"singapore": 30, "tokyo": 30}
    narrow = Nearest({"distance_band": 1.2})
    assert picks(narrow, FARM, where) == {"singapore": 60}


def test_nearby_sites_share_the_first_distance_band_by_the_floor() -> None:
    farm = (site("a", at=(10.0, 10.0)), site("b", at=(10.5, 10.5)), site("c", at=(12.0, 10.0)))
    where = Location(coordinates=(10.0, 10.01))  # 1 km from a, 78 km from b, 222 km from c
    # the band is 1.5 x max(1 km, 100 km): a and b share it, c is in the next band
    assert picks(Nearest(), farm, where) == {"a": 30, "b": 30}


def test_the_rest_when_nothing_is_known() -> None:
    assert picks(Nearest(), FARM, Location(), 70) == {
        "paris": 10,
        "frankfurt": 20,
        "newyork": 10,
        "sanfrancisco": 10,
        "tokyo": 10,
        "singapore": 10,
    }


def test_sites_without_topology_come_after_every_geographic_tier() -> None:
    farm = (site("plain", 5), site("tokyo", country="JP", continent="AS", at=TOKYO))
    where = Location(country="BR", continent="SA", coordinates=SAO_PAULO)
    assert picks(Nearest(), farm, where) == {"tokyo": 60}  # distance beats "rest"


def rtt(**samples: RttSample) -> MappingProxyType[str, RttSample]:
    return MappingProxyType(samples)


def test_learned_rtt_outranks_geography() -> None:
    # a French client whose network reaches newyork in 12 ms, frankfurt in 15 ms, paris in 40
    where = Location(
        region="eu-west",
        country="FR",
        continent="EU",
        rtt=rtt(newyork=(0.012, 50), frankfurt=(0.015, 50), paris=(0.040, 50)),
    )
    # band: 1.5 x 12 ms = 18 ms -> newyork (weight 1) and frankfurt (weight 2)
    assert picks(Nearest(), FARM, where) == {"newyork": 20, "frankfurt": 40}


def test_rtt_with_too_few_samples_falls_back_to_geography() -> None:
    where = Location(region="eu-west", rtt=rtt(newyork=(0.001, 9)))
    assert picks(Nearest(), FARM, where) == {"paris": 60}
    assert picks(Nearest({"rtt_min_samples": 9}), FARM, where) == {"newyork": 60}


def test_rtt_below_the_floor_counts_as_the_floor() -> None:
    where = Location(rtt=rtt(paris=(0.00005, 20), tokyo=(0.0014, 20), newyork=(0.0016, 20)))
    # 1.5 x max(0.05 ms, 1 ms) = 1.5 ms: paris and tokyo share the band, newyork does not
    assert RTT_FLOOR == 0.001
    assert picks(Nearest(), FARM, where) == {"paris": 30, "tokyo": 30}


def test_measured_sites_come_before_unmeasured_ones() -> None:
    where = Location(region="eu-west", rtt=rtt(tokyo=(0.2, 20), singapore=(0.18, 20)))
    order = Nearest().order(FARM, NOW, where, 10)
    assert [s.name for s in order[:2]] in (["tokyo", "singapore"], ["singapore", "tokyo"])
    assert order[2].name == "paris"  # then the geographic tiers


# --- shed load -------------------------------------------------------------------------------


def with_load(candidates: Sequence[Candidate], **loads: float) -> tuple[Candidate, ...]:
    """A new snapshot: the same sites, the loads given reported at time 0."""
    return tuple(
        Candidate(
            c.name,
            c.base_url,
            c.weight,
            region=c.region,
            country=c.country,
            continent=c.continent,
            asn=c.asn,
            coordinates=c.coordinates,
            load=loads.get(c.name, c.load),
            load_at=0.0 if c.name in loads else c.load_at,
        )
        for c in candidates
    )


EU = Location(country="IT", continent="EU")  # frankfurt and paris share a tier


def test_a_site_at_the_high_watermark_sheds_to_its_tier() -> None:
    policy = Nearest()
    farm = with_load(FARM, frankfurt=0.9, paris=0.5)
    assert picks(policy, farm, EU) == {"paris": 60}
    assert policy.shedding == {"frankfurt"}


def test_a_whole_tier_shedding_hands_over_to_the_next() -> None:
    policy = Nearest()
    farm = with_load(FARM, frankfurt=0.95, paris=0.91)
    # no site of Europe takes clients: the next tier is the rest of the world
    assert set(picks(policy, farm, EU)) == {"newyork", "sanfrancisco", "tokyo", "singapore"}


def test_everyone_shedding_still_answers_from_the_nearest_tier() -> None:
    farm = with_load(FARM, **{c.name: 1.0 for c in FARM})
    assert picks(Nearest(), farm, EU) == {"frankfurt": 40, "paris": 20}


def test_hysteresis_keeps_shedding_until_below_the_low_watermark() -> None:
    policy = Nearest({"high_watermark": 0.9, "low_watermark": 0.75})
    sequence = [(0.5, True), (0.9, False), (0.85, False), (0.76, False), (0.75, False)]
    sequence += [(0.74, True), (0.85, True), (0.89, True), (0.9, False), (0.1, True)]
    for load, takes in sequence:
        farm = with_load(FARM, frankfurt=load, paris=0.1)
        assert ("frankfurt" in picks(policy, farm, EU, 3)) is takes, load


def test_a_stale_report_is_no_report() -> None:
    policy = Nearest({"load_max_age": 10.0})
    farm = with_load(FARM, frankfurt=0.99)  # reported at time 0
    assert "frankfurt" not in picks(policy, farm, EU)
    later = Client(now=10.5)
    chosen = Counter(policy.choose(farm, later, EU).name for _ in range(30))  # type: ignore[union-attr]
    assert chosen == {"frankfurt": 20, "paris": 10}
    assert policy.shedding == frozenset()


def test_watermark_options_are_checked_together() -> None:
    with pytest.raises(ConfigError) as caught:
        Nearest({"high_watermark": 0.5, "low_watermark": 0.6}, where="pools.eu")
    assert caught.value.path == "pools.eu.low_watermark"
    assert "at most high_watermark (0.5)" in str(caught.value)
    Nearest({"high_watermark": 0.5, "low_watermark": 0.5})  # equal is fine: no hysteresis


# --- order and explain ----------------------------------------------------------------------


def test_order_goes_tier_by_tier_with_shedding_sites_last() -> None:
    farm = with_load(FARM, paris=0.95)
    where = Location(region="eu-west", country="FR", continent="EU", coordinates=PARIS)
    names = [s.name for s in Nearest().order(farm, NOW, where, 10)]
    assert names[0] == "frankfurt"  # paris sheds: the continent tier takes the client
    assert names[-1] == "paris"
    assert set(names[1:5]) == {"newyork", "sanfrancisco", "tokyo", "singapore"}
    assert len(names) == len(FARM)
    assert Nearest().order(farm, NOW, where, 2)[1].name != "paris"
    assert Nearest().order(farm, NOW, where, 0) == ()


def test_consider_names_tier_distance_rtt_and_verdict() -> None:
    farm = with_load(FARM, paris=0.95)
    where = Location(country="FR", continent="EU", coordinates=PARIS, rtt=rtt(tokyo=(0.25, 3)))
    seen = {c.site: c for c in Nearest().consider(farm, NOW, where)}
    assert set(seen) == {c.name for c in FARM}
    assert (seen["paris"].tier, seen["paris"].verdict) == ("country", OVER_WATERMARK)
    assert "shedding load (load 0.95" in seen["paris"].detail
    assert (seen["frankfurt"].tier, seen["frankfurt"].verdict) == ("continent", TAKEN)
    assert seen["frankfurt"].distance_km == pytest.approx(479, abs=2)
    assert seen["paris"].distance_km == 0.0
    assert (seen["tokyo"].tier, seen["tokyo"].verdict) == ("distance", LOWER_TIER)
    assert seen["tokyo"].rtt == 0.25
    assert "fewer than rtt_min_samples 10" in seen["tokyo"].detail
    assert "a nearer tier takes the client (continent)" in seen["tokyo"].detail
    rotation = {c.site: c.verdict for c in Nearest().consider(FARM, NOW, Location())}
    assert sorted(rotation.values()) == [NOT_PICKED] * 5 + [TAKEN]


def test_empty_candidates() -> None:
    policy = Nearest()
    assert policy.choose((), NOW, EU) is None
    assert policy.order((), NOW, EU, 3) == ()
    assert policy.consider((), NOW, EU) == []


def test_a_list_of_candidates_is_read_afresh_every_time() -> None:
    farm = list(FARM)
    policy = Nearest()
    assert policy.choose(farm, NOW, Location(region="us-east")).name == "newyork"  # type: ignore[union-attr]
    farm[2] = site("newyork", region="elsewhere")
    assert policy.choose(farm, NOW, Location(region="us-east")).name != "newyork"  # type: ignore[union-attr]


# --- the registry and the options -----------------------------------------------------------


def test_registered_with_its_options() -> None:
    assert REGISTRY["nearest"] is Nearest
    assert Nearest.locates
    assert set(Nearest.options) == {
        "high_watermark",
        "low_watermark",
        "load_max_age",
        "rtt_min_samples",
        "rtt_band",
        "distance_band",
    }
    assert Nearest().settings == {k: o.default for k, o in Nearest.options.items()}


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("high_watermark", 1.5),
        ("high_watermark", "0.9"),
        ("high_watermark", True),
        ("low_watermark", -0.1),
        ("low_watermark", math.nan),
        ("rtt_min_samples", 0),
        ("rtt_min_samples", 2.5),
        ("rtt_band", 0.9),
        ("distance_band", math.inf),
        ("load_max_age", 0),
        ("load_max_age", "x" * 10_000),
    ],
)
def test_a_bad_option_names_its_key(key: str, bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Nearest.options[key].parse(bad, f"pools.eu.{key}")
    assert caught.value.path == f"pools.eu.{key}"
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("key", "good", "parsed"),
    [
        ("high_watermark", 1, 1.0),
        ("low_watermark", 0, 0.0),
        ("rtt_min_samples", 1, 1),
        ("rtt_band", 2, 2.0),
        ("load_max_age", 5, 5.0),
    ],
)
def test_a_good_option_parses(key: str, good: object, parsed: object) -> None:
    value = Nearest.options[key].parse(good, f"pools.eu.{key}")
    assert value == parsed
    assert type(value) is type(parsed)


# --- great-circle distance ------------------------------------------------------------------

latitudes = st.floats(-90, 90, allow_nan=False)
longitudes = st.floats(-180, 180, allow_nan=False)
points = st.tuples(latitudes, longitudes)


def test_great_circle_known_distances() -> None:
    assert great_circle_km(PARIS, NEW_YORK) == pytest.approx(5837, rel=0.005)
    assert great_circle_km(SYDNEY, SINGAPORE) == pytest.approx(6300, rel=0.01)
    assert great_circle_km((0.0, 179.9), (0.0, -179.9)) == pytest.approx(22.24, rel=0.01)
    assert great_circle_km((90.0, 0.0), (90.0, 123.0)) == pytest.approx(0.0, abs=1e-6)
    assert great_circle_km((90.0, 0.0), (-90.0, 77.0)) == pytest.approx(HALF_CIRCUMFERENCE_KM)
    assert great_circle_km((0.0, 0.0), (0.0, 180.0)) == pytest.approx(HALF_CIRCUMFERENCE_KM)
    with pytest.raises(ValueError, match="latitude"):
        great_circle_km((91.0, 0.0), (0.0, 0.0))


@given(points, points)
def test_great_circle_is_symmetric_and_bounded(
    a: tuple[float, float], b: tuple[float, float]
) -> None:
    d = great_circle_km(a, b)
    assert d == great_circle_km(b, a)
    assert 0.0 <= d <= HALF_CIRCUMFERENCE_KM * (1 + 1e-12)
    assert great_circle_km(a, a) == 0.0


@given(points, points, points)
def test_great_circle_triangle_inequality(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]
) -> None:
    assert great_circle_km(a, c) <= great_circle_km(a, b) + great_circle_km(b, c) + 1e-6


@given(latitudes, longitudes, longitudes)
def test_poles_and_the_antimeridian(lat: float, lon1: float, lon2: float) -> None:
    assert great_circle_km((90.0, lon1), (90.0, lon2)) < 1e-6
    assert great_circle_km((-90.0, lon1), (-90.0, lon2)) < 1e-6
    assert great_circle_km((lat, 180.0), (lat, -180.0)) < 1e-6


# --- hypothesis: the ranking's promises -----------------------------------------------------

LEVELS = ["region", "asn", "country", "continent"]


@st.composite
def farms(draw: st.DrawFn) -> tuple[Candidate, ...]:
    count = draw(st.integers(1, 12))
    out = []
    for i in range(count):
        out.append(
            Candidate(
                name=f"s{i}",
                base_url=f"http://s{i}.test",
                weight=draw(st.integers(1, 5)),
                region=draw(st.sampled_from([None, "r1", "r2"])),
                asn=draw(st.sampled_from([None, 1, 2])),
                country=draw(st.sampled_from([None, "FR", "US"])),
                continent=draw(st.sampled_from([None, "EU", "NA"])),
                coordinates=draw(st.none() | points),
                load=draw(st.none() | st.floats(0, 1)),
                load_at=0.0,
            )
        )
    return tuple(out)


locations = st.builds(
    Location,
    region=st.sampled_from([None, "r1", "r2"]),
    asn=st.sampled_from([None, 1, 2]),
    country=st.sampled_from([None, "FR", "US"]),
    continent=st.sampled_from([None, "EU", "NA"]),
    coordinates=st.none() | points,
)


def level(c: Candidate, where: Location) -> int:
    """The reference ranking: 0-3 the same region/ASN/country/continent, 4 distance, 5 rest."""
    for i, attr in enumerate(LEVELS):
        mine = getattr(where, attr)
        if mine is not None and getattr(c, attr) == mine:
            return i
    if where.coordinates is not None and c.coordinates is not None:
        return 4
    return 5


@given(farms(), locations, st.integers(1, 30))
def test_no_nearer_tier_is_skipped_while_it_has_a_site_taking_clients(
    farm: tuple[Candidate, ...], where: Location, rounds: int
) -> None:
    policy = Nearest()
    for _ in range(rounds):
        chosen = policy.choose(farm, NOW, where)
        assert chosen is not None
        assert any(chosen is c for c in farm)  # the same object, a candidate
        takers = [c for c in farm if c.name not in policy.shedding]
        if chosen.name in policy.shedding:
            assert not takers  # a shedding site only when every site sheds
            continue
        for other in takers:
            assert level(other, where) >= level(chosen, where)
            if level(other, where) == level(chosen, where) == 4:
                assert where.coordinates is not None
                mine = great_circle_km(where.coordinates, chosen.coordinates)  # type: ignore[arg-type]
                theirs = great_circle_km(where.coordinates, other.coordinates)  # type: ignore[arg-type]
                assert max(theirs, DISTANCE_FLOOR_KM) * 1.5 >= mine - 1e-9


@given(farms(), st.dictionaries(st.sampled_from([f"s{i}" for i in range(12)]), st.floats(0, 0.5)))
def test_rtt_band_holds(farm: tuple[Candidate, ...], samples: dict[str, float]) -> None:
    where = Location(rtt=MappingProxyType({n: (v, 10) for n, v in samples.items()}))
    policy = Nearest()
    chosen = policy.choose(farm, NOW, where)
    assert chosen is not None
    measured = [c for c in farm if c.name in samples and c.name not in policy.shedding]
    if chosen.name in samples and chosen.name not in policy.shedding:
        for other in measured:
            assert max(samples[other.name], RTT_FLOOR) * 1.5 >= samples[chosen.name] - 1e-12
    elif measured:
        pytest.fail(f"{chosen.name} chosen over measured sites {measured}")


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(1, 4))
def test_weights_decide_within_the_tier(weights: list[int], cycles: int) -> None:
    tier = [site(f"in{i}", w, country="FR") for i, w in enumerate(weights)]
    farm = (site("out", 50, country="US"), *tier, site("far", 9, country="DE"))
    policy = Nearest()
    seen = picks(policy, farm, Location(country="FR"), sum(weights) * cycles)
    assert seen == {c.name: c.weight * cycles for c in tier}


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_hysteresis_matches_the_state_machine(loads: list[float]) -> None:
    policy = Nearest({"high_watermark": 0.8, "low_watermark": 0.6})
    shedding = False
    for load in loads:
        if load >= 0.8:
            shedding = True
        elif load < 0.6:
            shedding = False
        farm = with_load(FARM, frankfurt=load, paris=0.0)
        assert ("frankfurt" in picks(policy, farm, EU, 3)) is not shedding


@given(
    st.lists(
        st.lists(st.tuples(st.text(min_size=1, max_size=6), st.floats(0, 1)), max_size=8),
        min_size=1,
        max_size=30,
    )
)
def test_state_stays_bounded_under_random_site_names(rounds: list[list[tuple[str, float]]]) -> None:
    policy = Nearest()
    for round_ in rounds:
        farm = tuple(
            Candidate(name, "http://x.test", 1, load=load, load_at=0.0)
            for name, load in dict(round_).items()
        )
        policy.order(farm, NOW, Location(country="FR"), 3)
        if farm:  # (no candidates: nothing is placed, the state stays as it was)
            assert len(policy.shedding) <= 2 * len(farm) + 16
        assert len(policy._boards) <= MAX_BOARDS
        assert len(policy._rotations) <= MAX_ROTATIONS


def test_caches_stay_bounded_under_many_client_locations() -> None:
    policy = Nearest()
    for i in range(MAX_LADDERS + 50):
        where = Location(coordinates=(i / 100, 0.0))
        assert policy.choose(FARM, NOW, where) is not None
    board = policy._board
    assert board is not None
    assert len(board.by_place) <= MAX_LADDERS
    assert len(board.interned) <= 2 * MAX_LADDERS


@given(farms(), locations)
def test_choose_order_and_consider_agree(farm: tuple[Candidate, ...], where: Location) -> None:
    chosen = Nearest().choose(farm, NOW, where)
    ordered = Nearest().order(farm, NOW, where, len(farm))
    verdicts = Nearest().consider(farm, NOW, where)
    assert chosen is ordered[0]
    assert sorted(c.name for c in ordered) == sorted(c.name for c in farm)
    assert [v.site for v in verdicts if v.verdict == TAKEN] == [chosen.name]
    assert sorted(v.site for v in verdicts) == sorted(c.name for c in farm)


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50) | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.sampled_from(sorted(Nearest.options)), toml_values)
def test_any_option_value_parses_in_range_or_names_its_key(key: str, raw: object) -> None:
    option = Nearest.options[key]
    error: ConfigError | None = None
    try:
        value = option.parse(raw, f"pools.eu.{key}")
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.path == f"pools.eu.{key}"
        assert len(str(error)) < 200
        return
    assert type(value) is type(option.default)
    assert math.isfinite(value)
    settings = {key: value}
    if key == "low_watermark":
        settings["high_watermark"] = 1.0
    if key == "high_watermark":
        settings["low_watermark"] = 0.0
    Nearest(settings)  # a parsed value always makes a policy
