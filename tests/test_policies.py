"""Selection policies (pure, so tested without sockets), and what a pool does when all is down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.placement.catalog import REGISTRY, make_policy
from dispatcher.placement.engine import pick
from dispatcher.placement.model import NOWHERE, Candidate, Client
from dispatcher.placement.policies import Failover, LeastLoad, Weighted
from dispatcher.placement.policy import Policy
from dispatcher.placement.pool import PoolView
from dispatcher.snapshot import Snapshot, build_snapshot
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml


def site(
    name: str, weight: int = 1, load: float | None = None, at: float | None = None
) -> Candidate:
    return Candidate(
        name=name, base_url=f"http://{name}.test", weight=weight, load=load, load_at=at
    )


def choose(policy: Policy, sites: Sequence[Candidate], now: float = 0.0) -> Candidate | None:
    """The policy's pick for a client at time ``now`` that nothing is known of."""
    return policy.choose(sites, Client(now=now), NOWHERE)


def shares(picks: list[str]) -> dict[str, float]:
    counts = Counter(picks)
    return {name: n / len(picks) for name, n in counts.items()}


def test_weighted_shares_match_weights_within_two_percent_over_1000() -> None:
    sites = [site("eu", 2), site("us", 1), site("asia", 3), site("au", 7)]
    policy = Weighted()
    picks = [choose(policy, sites, 0.0).name for _ in range(1000)]  # type: ignore[union-attr]
    total = sum(s.weight for s in sites)
    for s in sites:
        assert abs(shares(picks)[s.name] - s.weight / total) < 0.02


@given(st.lists(st.integers(1, 20), min_size=1, max_size=8), st.integers(1, 5))
def test_weighted_is_exact_over_every_full_cycle(weights: list[int], cycles: int) -> None:
    sites = [site(f"s{i}", w) for i, w in enumerate(weights)]
    policy = Weighted()
    picks = [choose(policy, sites, 0.0).name for _ in range(sum(weights) * cycles)]  # type: ignore[union-attr]
    assert Counter(picks) == {s.name: s.weight * cycles for s in sites}


def test_weighted_interleaves_a_heavy_site() -> None:
    policy = Weighted()
    sites = [site("a", 5), site("b", 1), site("c", 1)]
    picks = "".join(choose(policy, sites, 0.0).name for _ in range(7))  # type: ignore[union-attr]
    assert picks == "aabacaa"  # nginx's smooth sequence, not aaaaabc


def test_weighted_adapts_when_a_site_leaves() -> None:
    policy = Weighted()
    sites = [site("a"), site("b"), site("c")]
    for _ in range(5):
        choose(policy, sites, 0.0)
    remaining = sites[:2]
    picks = [choose(policy, remaining, 0.0).name for _ in range(100)]  # type: ignore[union-attr]
    assert set(picks) == {"a", "b"}
    assert abs(picks.count("a") - picks.count("b")) <= 2


def test_no_candidates_means_no_choice() -> None:
    for name in REGISTRY:
        assert choose(make_policy(name), []) is None
        policy, none = make_policy(name), ()  # a snapshot's empty pool, again and again
        assert [choose(policy, none, 0.0) for _ in range(3)] == [None, None, None]


def test_least_load_picks_lowest_load_relative_to_weight() -> None:
    policy = LeastLoad({"load_max_age": 30})
    sites = [
        site("a", 1, load=0.30, at=100),
        site("b", 4, load=0.80, at=100),
        site("c", 1, load=0.25, at=100),
    ]
    # b: 0.8 / 4 = 0.2 beats c's 0.25 and a's 0.3
    assert {choose(policy, sites, 101).name for _ in range(10)} == {"b"}  # type: ignore[union-attr]


def test_least_load_ignores_stale_reports() -> None:
    policy = LeastLoad({"load_max_age": 10})
    sites = [site("fresh", load=0.9, at=95), site("stale", load=0.0, at=80)]
    assert choose(policy, sites, 100).name == "fresh"  # type: ignore[union-attr]


def test_least_load_without_fresh_reports_falls_back_to_weights() -> None:
    policy = LeastLoad({"load_max_age": 10})
    sites = [site("a", 3), site("b", 1, load=0.1, at=0.0)]
    picks = [choose(policy, sites, 100).name for _ in range(400)]  # type: ignore[union-attr]
    assert picks.count("a") == 300


def test_least_load_shares_ties() -> None:
    policy = LeastLoad()
    sites = [site("a", load=0.5, at=1), site("b", load=0.5, at=1), site("c", load=0.9, at=1)]
    picks = [choose(policy, sites, 2).name for _ in range(100)]  # type: ignore[union-attr]
    assert Counter(picks) == {"a": 50, "b": 50}


def test_failover_takes_the_first_in_configured_order() -> None:
    policy = Failover()
    assert choose(policy, [site("primary"), site("backup")], 0).name == "primary"  # type: ignore[union-attr]
    assert choose(policy, [site("backup")], 0).name == "backup"  # type: ignore[union-attr]


def test_unknown_policy_name() -> None:
    with pytest.raises(KeyError):
        make_policy("random")


def test_least_load_reads_its_max_age_option() -> None:
    assert LeastLoad().max_age == 30.0
    assert make_policy("least-load", {"load_max_age": 5.0}).settings == {"load_max_age": 5.0}


# --- a pool whose sites are all down: sorry, or fail open (Route 53) ----------------------


def pool_snapshot(
    specs: list[SiteSpec],
    up: set[str],
    *,
    all_down: str = "fail-open",
    policy: str = "weighted",
    previous: Snapshot | None = None,
) -> PoolView:
    return pool_snapshot_whole(
        specs, up, all_down=all_down, policy=policy, previous=previous
    ).pools["default"]


def pool_snapshot_whole(
    specs: list[SiteSpec],
    up: set[str],
    *,
    all_down: str = "fail-open",
    policy: str = "weighted",
    previous: Snapshot | None = None,
) -> Snapshot:
    config = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"]},
            "pools": {"default": {"policy": policy, "all_down": all_down}},
        }
    )
    return build_snapshot(
        config,
        revision=1,
        sites=specs,
        health=lambda name: Health("up" if name in up else "down", None),
        loads={},
        previous=previous,
    )


EU = SiteSpec("eu", "http://127.0.0.2:9001", weight=1)
US = SiteSpec("us", "http://127.0.0.3:9001", weight=3)
DRAINED = SiteSpec("drained", "http://127.0.0.4:9001", drained=True)
ZERO = SiteSpec("zero", "http://127.0.0.5:9001", weight=0)
EVERY = [EU, US, DRAINED, ZERO]


def names(pool: PoolView) -> list[str]:
    return [c.name for c in pool.candidates]


def test_sorry_is_the_default_and_keeps_todays_behaviour() -> None:
    pool = pool_snapshot(EVERY, up=set(), all_down="sorry")
    assert (names(pool), pool.failing_open, pick(pool, Client())) == ([], False, None)


def test_fail_open_sends_clients_to_the_down_sites_by_the_pools_policy() -> None:
    pool = pool_snapshot(EVERY, up=set())
    assert (names(pool), pool.failing_open) == (["eu", "us"], True)  # drained, weight 0: out
    picks = [pick(pool, Client()) for _ in range(400)]
    assert shares([p.name for p in picks if p is not None]) == {"eu": 0.25, "us": 0.75}
    assert pick(pool, Client(remembered="us")).name == "us"  # type: ignore[union-attr]
    failover = pool_snapshot(EVERY, up=set(), policy="failover")
    assert pick(failover, Client()) == failover.candidates[0]
    assert failover.candidates[0].name == "eu"


@pytest.mark.parametrize(
    ("specs", "up", "expected", "failing_open"),
    [
        (EVERY, {"us"}, ["us"], False),  # one site up: the ordinary rules
        (EVERY, {"drained", "zero"}, ["eu", "us"], True),  # up but unable to take clients
        ([DRAINED, ZERO], set(), [], False),  # nothing to fail open to: the fallback answers
        ([], set(), [], False),
    ],
)
def test_fail_open_when_every_site_that_could_take_clients_is_down(
    specs: list[SiteSpec], up: set[str], expected: list[str], failing_open: bool
) -> None:
    pool = pool_snapshot(specs, up)
    assert (names(pool), pool.failing_open) == (expected, failing_open)


def test_entering_and_leaving_fail_open_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="webfarm.farm")
    previous: Snapshot | None = None
    states: list[bool] = []
    for up in [{"eu"}, set(), set(), set(), {"us"}, {"us"}, set(), set()]:
        previous = pool_snapshot_whole(EVERY, up, previous=previous)
        states.append(previous.default_pool.failing_open)
    assert states == [False, True, True, True, False, False, True, True]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "pool default: every site is down, failing open: sending clients to eu, us anyway",
        "pool default: no longer failing open; sites up: us",
        "pool default: every site is down, failing open: sending clients to eu, us anyway",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_new_policy_for_the_pool_does_not_log_the_same_outage_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="webfarm.farm")
    first = pool_snapshot_whole(EVERY, up=set())
    again = pool_snapshot(EVERY, up=set(), policy="failover", previous=first)
    assert (again.policy.name, again.failing_open) == ("failover", True)
    assert len(caplog.records) == 1


# --- and for real: a dispatcher whose sites all fail their checks ------------------------


async def located(dispatcher: RunningDispatcher, sites: dict[str, LoopbackSite]) -> str | None:
    response = await dispatcher.public.get("/page")
    if response.status_code == 503:
        return None
    assert response.status_code == 302, response.text
    return next(n for n, s in sites.items() if response.headers["location"] == f"{s.url}/page")


def failing_open(dispatcher: RunningDispatcher) -> bool:
    return dispatcher.runner.farm.snapshot.default_pool.failing_open


@pytest.mark.anyio
async def test_a_fail_open_dispatcher_keeps_sending_clients_and_says_so(
    sites: dict[str, LoopbackSite], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="webfarm.farm")
    for site in sites.values():
        site.app.health_status = 503  # every check fails: a broken check, or a real outage
    config = tmp_path / "farm.toml"
    config.write_text(
        farm_toml(
            {name: (site, 1) for name, site in sites.items()},
            database_url=f"sqlite:///{tmp_path / 'farm.db'}",
            pool='policy = "weighted"\nfallback = "sorry"\nall_down = "fail-open"',
        )
    )
    dispatcher = RunningDispatcher(await RunningDispatcher.start_runner(config))
    try:
        assert {await located(dispatcher, sites) for _ in range(30)} == set(sites)
        assert failing_open(dispatcher)
        pool = (await dispatcher.admin.get("/api/v1/status")).json()["pools"]["default"]
        assert (pool["all_down"], pool["failing_open"]) == ("fail-open", True)
        sites["eu"].app.health_status = 200
        deadline = time.monotonic() + 5
        while failing_open(dispatcher):
            assert time.monotonic() < deadline, "eu never came back"
            await asyncio.sleep(0.05)
        assert {await located(dispatcher, sites) for _ in range(10)} == {"eu"}
    finally:
        await dispatcher.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "webfarm.farm"]
    assert warnings == [
        "pool default: every site is down, failing open: sending clients to eu, us, asia anyway",
        "pool default: no longer failing open; sites up: eu",
    ]


NAMES = [f"s{i}" for i in range(40)]  # more than 4 * 1 + 16: departed ones are forgotten


def reference_weighted(current: dict[str, int], candidates: list[Candidate]) -> Candidate:
    """Smooth weighted round-robin, the plain loop (what Weighted's shortcut must equal)."""
    best, best_value, total = candidates[0], 0, 0
    for i, s in enumerate(candidates):
        current[s.name] = current.get(s.name, 0) + s.weight
        total += s.weight
        if i == 0 or current[s.name] > best_value:
            best, best_value = s, current[s.name]
    current[best.name] = best_value - total
    if len(current) > 4 * len(candidates) + 16:  # departed sites forgotten
        names = {s.name for s in candidates}
        for name in [n for n in current if n not in names]:
            del current[name]
    return best


@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.sampled_from(NAMES), st.integers(1, 90)), min_size=1),
            st.booleans(),
            st.integers(1, 400),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_weighted_shortcut_picks_exactly_as_the_loop(
    phases: list[tuple[list[tuple[str, int]], bool, int]],
) -> None:
    # phases of calls: a candidate set (a snapshot's tuple, or a list as pool.choose and
    # least-load pass), and how many picks; the sets change between phases, as sites come
    # and go and weights change
    policy, current = Weighted(), dict[str, int]()
    for pairs, as_tuple, count in phases:
        unique = dict(pairs)
        sites = [site(name, weight) for name, weight in unique.items()]
        given_sites: tuple[Candidate, ...] | list[Candidate] = tuple(sites) if as_tuple else sites
        for _ in range(count):
            assert choose(policy, given_sites, 0.0) == reference_weighted(current, sites)


def test_weighted_shortcut_forgets_departed_sites_when_the_loop_does() -> None:
    # pairs of sites that come and go, a pick or a full period each, then the first return:
    # they resume where the loop would have them (forgotten past 4 * n + 16 names)
    policy, current = Weighted(), dict[str, int]()
    phases = [(f"a{i}", f"b{i}") for i in range(12)] + [("a0", "b0"), ("a1", "b1")]
    for count in (1, 3, 4):
        for a, b in phases:
            sites = [site(a, 2), site(b, 1)]
            snapshot = tuple(sites)
            for _ in range(count):
                assert choose(policy, snapshot, 0.0) == reference_weighted(current, sites)
