"""The placement step (dispatcher.placement.engine), pure: remembered site, network hash,
the policy's pick, never the request's Host; order for DNS; explain's verdicts."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.placement import engine
from dispatcher.placement.build import Hashing
from dispatcher.placement.model import (
    DOWN,
    DRAINED,
    FAILING_OPEN,
    IS_HOST,
    LOCATED_BY_PREFIX_MAP,
    NOT_PICKED,
    REMEMBERED,
    TAKEN,
    WEIGHT_ZERO,
    Candidate,
    Client,
    Considered,
    Location,
    RttSample,
)
from dispatcher.placement.policy import Policy
from dispatcher.placement.pool import PoolView, Where
from tests.placement.support import pool_of, spec

SITES = [spec("eu", 2), spec("us"), spec("asia")]


def host_of(name: str) -> bytes:
    return f"{name}.example".encode()


def test_the_policy_picks_when_nothing_is_remembered() -> None:
    pool = pool_of(SITES)
    picks = Counter(engine.pick(pool, Client()).name for _ in range(400))  # type: ignore[union-attr]
    assert picks == {"eu": 200, "us": 100, "asia": 100}
    assert pool.plain  # weighted reads nothing of the client: no Client on the hot path
    plain = Counter(engine.pick_plain(pool, b"").name for _ in range(400))  # type: ignore[union-attr]
    assert plain == picks


def test_a_remembered_site_is_taken_while_the_pool_can_take_the_client_there() -> None:
    pool = pool_of(SITES)
    assert {engine.pick(pool, Client(remembered="us")).name for _ in range(10)} == {"us"}  # type: ignore[union-attr]
    for unable in (
        pool_of(SITES, down={"us"}),
        pool_of([spec("eu", 2), spec("us", drained=True), spec("asia")]),
        pool_of([spec("eu", 2), spec("us", 0), spec("asia")]),
    ):
        assert engine.pick(unable, Client(remembered="us")).name != "us"  # type: ignore[union-attr]
    unknown = engine.pick(pool, Client(remembered="nowhere"))
    assert unknown is not None


def test_never_the_site_at_the_requests_host() -> None:
    pool = pool_of(SITES)
    for client in (Client(host=host_of("eu")), Client(host=host_of("eu"), remembered="eu")):
        assert {engine.pick(pool, client).name for _ in range(20)} == {"us", "asia"}  # type: ignore[union-attr]
    assert {engine.pick_plain(pool, host_of("us")).name for _ in range(20)} == {"eu", "asia"}  # type: ignore[union-attr]
    alone = pool_of([spec("eu")])
    assert engine.pick(alone, Client(host=host_of("eu"))) is None
    assert engine.place(alone, Client(host=host_of("eu"))).sites == ()


def test_no_site_means_no_placement() -> None:
    for pool in (pool_of([]), pool_of(SITES, down={"eu", "us", "asia"})):
        assert engine.pick(pool, Client()) is None
        assert engine.pick_plain(pool, b"") is None
        assert engine.place(pool, Client()).site is None
        assert engine.order(pool, Client(), 3).sites == ()


def test_fail_open_places_on_the_down_sites() -> None:
    pool = pool_of(SITES, down={"eu", "us", "asia"}, all_down="fail-open")
    assert pool.failing_open
    assert engine.pick(pool, Client(remembered="asia")).name == "asia"  # type: ignore[union-attr]
    explained = engine.explain(copy_policy(pool), Client())
    verdicts = {c.site: c.verdict for c in explained.considered}
    assert sorted(verdicts.values()) == [FAILING_OPEN, NOT_PICKED, NOT_PICKED]


@given(st.integers(0, 5), st.sampled_from(["", "eu", "us", "asia"]), st.sampled_from([None, "us"]))
def test_order_starts_with_the_pick_and_never_repeats(
    count: int, at: str, remembered: str | None
) -> None:
    host = host_of(at) if at else b""
    client = Client(host=host, remembered=remembered)
    pool = pool_of(SITES)
    twin = copy_policy(pool)
    ordered = engine.order(pool, client, count).sites
    names = [s.name for s in ordered]
    assert len(names) == len(set(names)) == min(count, 3 - bool(at))
    assert at not in names
    if ordered:
        assert ordered[0] == engine.pick(twin, client)


# --- explain ------------------------------------------------------------------------------


def copy_policy(pool: PoolView) -> PoolView:
    return replace(pool, policy=copy.deepcopy(pool.policy))


def verdicts(considered: Sequence[Considered]) -> dict[str, str]:
    return {c.site: c.verdict for c in considered}


def test_explain_gives_every_site_its_verdict_in_configured_order() -> None:
    specs = [
        spec("eu", 2),
        spec("us"),
        spec("asia"),
        spec("gone"),
        spec("resting", drained=True),
        spec("nil", 0),
    ]
    pool = pool_of(specs, down={"gone", "resting"})
    explained = engine.explain(copy_policy(pool), Client(host=host_of("us")))
    assert [c.site for c in explained.considered] == [s.name for s in specs]
    assert verdicts(explained.considered) == {
        "eu": TAKEN,
        "us": IS_HOST,
        "asia": NOT_PICKED,
        "gone": DOWN,
        "resting": DRAINED,  # drained is named before down
        "nil": WEIGHT_ZERO,
    }
    assert [s.name for s in explained.sites] == ["eu"]


def test_explain_names_the_site_a_request_would_get() -> None:
    pool = pool_of(SITES)
    for _ in range(7):  # wherever the rotation is
        dry = copy_policy(pool)
        explained = engine.explain(dry, Client())
        assert explained.site == engine.pick(pool, Client())


def test_explain_marks_a_remembered_site() -> None:
    pool = pool_of(SITES)
    explained = engine.explain(copy_policy(pool), Client(remembered="asia"))
    assert verdicts(explained.considered) == {
        "eu": NOT_PICKED,
        "us": NOT_PICKED,
        "asia": REMEMBERED,
    }
    assert "stamp" in next(c.detail for c in explained.considered if c.site == "asia")
    hashed = pool_of(SITES, hashing=Hashing())
    explained = engine.explain(copy_policy(hashed), Client(address="198.51.100.7"))
    taken = next(c for c in explained.considered if c.verdict == REMEMBERED)
    assert "network 198.51.100.0/24" in taken.detail
    assert explained.site == engine.pick(hashed, Client(address="198.51.100.99"))


# --- locating -----------------------------------------------------------------------------


class PrefixLocator:
    """A locator as the prefix map would answer: one region for one /8, nothing else."""

    def __init__(self) -> None:
        self.calls = 0

    def locate(self, address: str, subnet: str = "") -> Location:
        self.calls += 1
        if (subnet or address).startswith("10."):
            return Location(LOCATED_BY_PREFIX_MAP, "10.0.0.0/8", region="eu")
        return Location()

    def extent(self, subnet: str, length: int) -> int:
        return length  # (nothing longer inside /8)


class LearnedRtt:
    def lookup(self, address: str, subnet: str = "") -> Mapping[str, RttSample]:
        return {"eu": (0.012, 40)} if address.startswith("10.") else {}


class SameRegion(Policy):
    """A policy that locates: the first site whose name is the client's region."""

    name = "test-same-region"
    locates = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Location] = []

    def choose(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> Candidate | None:
        self.seen.append(located)
        return next((c for c in candidates if c.name == located.region), None) or (
            candidates[-1] if candidates else None
        )


def test_the_client_is_located_only_for_a_policy_that_reads_where_it_is() -> None:
    locator = PrefixLocator()
    where = Where(locator, LearnedRtt())
    weighted = pool_of(SITES, where=where)
    engine.pick(weighted, Client(address="10.1.2.3"))
    engine.place(weighted, Client(address="10.1.2.3"))
    assert locator.calls == 0
    policy = SameRegion()
    locating = replace(pool_of(SITES, where=where), policy=policy)
    assert not locating.plain
    assert engine.pick(locating, Client(address="10.1.2.3")).name == "eu"  # type: ignore[union-attr]
    assert engine.pick(locating, Client(address="192.0.2.1")).name == "asia"  # type: ignore[union-attr]
    assert policy.seen[0].rtt == {"eu": (0.012, 40)}  # the learned RTT joins the location
    placed = engine.place(locating, Client(address="10.9.9.9"))
    assert (placed.located.region, placed.site.name) == ("eu", "eu")  # type: ignore[union-attr]
    by_subnet = engine.place(locating, Client(address="192.0.2.1", subnet="10.2.0.0/16"))
    assert by_subnet.located.prefix == "10.0.0.0/8"


def test_explain_shows_the_location_and_the_learned_rtt_whatever_the_policy() -> None:
    pool = pool_of(SITES, where=Where(PrefixLocator(), LearnedRtt()))
    explained = engine.explain(copy_policy(pool), Client(address="10.0.0.1"))
    assert (explained.located.source, explained.located.region) == (LOCATED_BY_PREFIX_MAP, "eu")
    assert {c.site: c.rtt for c in explained.considered} == {"eu": 0.012, "us": None, "asia": None}


@settings(max_examples=50)
@given(st.lists(st.booleans(), min_size=3, max_size=3), st.text(max_size=20))
def test_placement_never_raises_on_any_client_text(up: list[bool], address: str) -> None:
    down = {s.name for s, ok in zip(SITES, up, strict=True) if not ok}
    pool = pool_of(SITES, down=down, hashing=Hashing(), where=Where(PrefixLocator()))
    for client in (Client(address=address), Client(subnet=address), Client(remembered=address)):
        site = engine.pick(pool, client)
        assert site is None or site.name not in down
        engine.explain(copy_policy(pool), client)
