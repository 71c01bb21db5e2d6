"""Smooth weighted round-robin: many picks at once (the heap stepper) are exactly the
picks of the one-at-a-time definition, from any state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.placement import swrr
from dispatcher.placement.model import Candidate

NAMES = [f"s{i}" for i in range(30)]


def site(name: str, weight: int) -> Candidate:
    return Candidate(name=name, base_url=f"http://{name}.example", weight=weight)


@given(
    st.dictionaries(st.sampled_from(NAMES), st.integers(0, 12), min_size=1),
    st.dictionaries(st.sampled_from([*NAMES, "gone1", "gone2"]), st.integers(-500, 500)),
    st.integers(0, 300),
)
def test_advance_picks_exactly_as_step(
    weights: dict[str, int], state: dict[str, int], count: int
) -> None:
    candidates = tuple(site(name, weight) for name, weight in weights.items())
    one, many = dict(state), dict(state)
    expected = [swrr.step(one, candidates) for _ in range(count)]
    assert swrr.advance(many, candidates, count) == expected
    assert many == one


def test_a_thousand_sites_share_a_period_exactly() -> None:
    candidates = tuple(site(f"s{i}", 1 + i % 3) for i in range(1000))
    current: dict[str, int] = {}
    picks = swrr.advance(current, candidates, sum(s.weight for s in candidates))
    counts: dict[str, int] = {}
    for pick in picks:
        assert pick is not None
        counts[pick.name] = counts.get(pick.name, 0) + 1
    assert counts == {s.name: s.weight for s in candidates}
    assert all(value == 0 for value in current.values())  # back where it started
