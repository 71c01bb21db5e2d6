"""Selection policies: pure, so tested without sockets."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.policies import POLICIES, Candidate, Failover, LeastLoad, Weighted, make_policy


def site(
    name: str, weight: int = 1, load: float | None = None, at: float | None = None
) -> Candidate:
    return Candidate(
        name=name, base_url=f"http://{name}.test", weight=weight, load=load, load_at=at
    )


def shares(picks: list[str]) -> dict[str, float]:
    counts = Counter(picks)
    return {name: n / len(picks) for name, n in counts.items()}


def test_weighted_shares_match_weights_within_two_percent_over_1000() -> None:
    sites = [site("eu", 2), site("us", 1), site("asia", 3), site("au", 7)]
    policy = Weighted()
    picks = [policy.choose(sites, 0.0).name for _ in range(1000)]  # type: ignore[union-attr]
    total = sum(s.weight for s in sites)
    for s in sites:
        assert abs(shares(picks)[s.name] - s.weight / total) < 0.02


@given(st.lists(st.integers(1, 20), min_size=1, max_size=8), st.integers(1, 5))
def test_weighted_is_exact_over_every_full_cycle(weights: list[int], cycles: int) -> None:
    sites = [site(f"s{i}", w) for i, w in enumerate(weights)]
    policy = Weighted()
    picks = [policy.choose(sites, 0.0).name for _ in range(sum(weights) * cycles)]  # type: ignore[union-attr]
    assert Counter(picks) == {s.name: s.weight * cycles for s in sites}


def test_weighted_interleaves_a_heavy_site() -> None:
    policy = Weighted()
    sites = [site("a", 5), site("b", 1), site("c", 1)]
    picks = "".join(policy.choose(sites, 0.0).name for _ in range(7))  # type: ignore[union-attr]
    assert picks == "aabacaa"  # nginx's smooth sequence, not aaaaabc


def test_weighted_adapts_when_a_site_leaves() -> None:
    policy = Weighted()
    sites = [site("a"), site("b"), site("c")]
    for _ in range(5):
        policy.choose(sites, 0.0)
    remaining = sites[:2]
    picks = [policy.choose(remaining, 0.0).name for _ in range(100)]  # type: ignore[union-attr]
    assert set(picks) == {"a", "b"}
    assert abs(picks.count("a") - picks.count("b")) <= 2


def test_no_candidates_means_no_choice() -> None:
    for name in POLICIES:
        assert make_policy(name).choose([], 0.0) is None


def test_least_load_picks_lowest_load_relative_to_weight() -> None:
    policy = LeastLoad(max_age=30)
    sites = [
        site("a", 1, load=0.30, at=100),
        site("b", 4, load=0.80, at=100),
        site("c", 1, load=0.25, at=100),
    ]
    # b: 0.8 / 4 = 0.2 beats c's 0.25 and a's 0.3
    assert {policy.choose(sites, 101).name for _ in range(10)} == {"b"}  # type: ignore[union-attr]


def test_least_load_ignores_stale_reports() -> None:
    policy = LeastLoad(max_age=10)
    sites = [site("fresh", load=0.9, at=95), site("stale", load=0.0, at=80)]
    assert policy.choose(sites, 100).name == "fresh"  # type: ignore[union-attr]


def test_least_load_without_fresh_reports_falls_back_to_weights() -> None:
    policy = LeastLoad(max_age=10)
    sites = [site("a", 3), site("b", 1, load=0.1, at=0.0)]
    picks = [policy.choose(sites, 100).name for _ in range(400)]  # type: ignore[union-attr]
    assert picks.count("a") == 300


def test_least_load_shares_ties() -> None:
    policy = LeastLoad()
    sites = [site("a", load=0.5, at=1), site("b", load=0.5, at=1), site("c", load=0.9, at=1)]
    picks = [policy.choose(sites, 2).name for _ in range(100)]  # type: ignore[union-attr]
    assert Counter(picks) == {"a": 50, "b": 50}


def test_failover_takes_the_first_in_configured_order() -> None:
    policy = Failover()
    assert policy.choose([site("primary"), site("backup")], 0).name == "primary"  # type: ignore[union-attr]
    assert policy.choose([site("backup")], 0).name == "backup"  # type: ignore[union-attr]


def test_unknown_policy_name() -> None:
    with pytest.raises(KeyError):
        make_policy("random")
