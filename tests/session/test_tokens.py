"""The affinity stamp, the hand-off token and the replay guard."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dispatcher.errors import InvalidValue
from dispatcher.session import (
    AffinityStamp,
    BadToken,
    HandoffToken,
    ReplayGuard,
    StateCodec,
    TokenExpired,
    TokenReplayed,
    WrongTarget,
)
from dispatcher.session.tokens import AFFINITY_SALT, HANDOFF_SALT

from .support import FakeClock

KEYS = ["k1", "k2"]


# --- affinity ---------------------------------------------------------------------------


def test_a_stamp_names_the_site_and_when_it_was_issued() -> None:
    clock = FakeClock(1_700_000_000)
    stamps = AffinityStamp(KEYS, lifetime=600, clock=clock)
    stamp = stamps.decode(stamps.encode("eu"))
    assert (stamp.site, stamp.issued_at) == ("eu", 1_700_000_000)


def test_a_stamp_is_short() -> None:
    assert len(AffinityStamp(KEYS).encode("eu-west")) < 60


def test_a_stamp_expires_after_its_lifetime() -> None:
    clock = FakeClock()
    stamps = AffinityStamp(KEYS, lifetime=600, clock=clock)
    token = stamps.encode("eu")
    clock.advance(600)
    assert stamps.site_of(token) == "eu"
    clock.advance(1)
    with pytest.raises(TokenExpired):
        stamps.decode(token)
    assert stamps.site_of(token) is None


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c"])
def test_site_of_never_raises(token: str | None) -> None:
    assert AffinityStamp(KEYS).site_of(token) is None


def test_stamps_and_other_tokens_do_not_mix() -> None:
    stamps, handoffs = AffinityStamp(KEYS), HandoffToken(KEYS)
    with pytest.raises(BadToken):
        stamps.decode(handoffs.encode("eu", {"a": 1}))
    with pytest.raises(BadToken):
        handoffs.decode(stamps.encode("eu"), target="eu")


def test_a_stamp_whose_payload_is_not_a_site_name_is_bad() -> None:
    forged = StateCodec(KEYS, salt=AFFINITY_SALT).dumps(["eu"])
    with pytest.raises(BadToken, match="not a site name"):
        AffinityStamp(KEYS).decode(forged)


def test_the_affinity_cookie() -> None:
    stamps = AffinityStamp(KEYS, lifetime=900)
    header = stamps.cookie("eu", secure=True, domain=".example.com")
    name_value, *attrs = header.split("; ")
    name, _, token = name_value.partition("=")
    assert name == "farm_site"
    assert stamps.decode(token).site == "eu"
    assert attrs == [
        "Path=/",
        "Max-Age=900",
        "Domain=.example.com",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
    ]


def test_an_empty_site_name_is_refused() -> None:
    with pytest.raises(InvalidValue):
        AffinityStamp(KEYS).encode("")


# --- hand-off ---------------------------------------------------------------------------


def test_a_handoff_carries_a_session_to_one_site() -> None:
    clock = FakeClock()
    tokens = HandoffToken(KEYS, clock=clock)
    handoff = tokens.decode(tokens.encode("us", {"user": "alice"}), target="us")
    assert handoff.session == {"user": "alice"}
    assert handoff.target == "us"
    assert handoff.issued_at == int(clock.now)
    assert len(handoff.token_id) == 16


def test_every_handoff_has_its_own_id() -> None:
    tokens = HandoffToken(KEYS)
    ids = {tokens.decode(tokens.encode("us", {}), target="us").token_id for _ in range(50)}
    assert len(ids) == 50


def test_a_handoff_for_another_site_is_wrong_target() -> None:
    tokens = HandoffToken(KEYS)
    with pytest.raises(WrongTarget) as caught:
        tokens.decode(tokens.encode("us", {}), target="eu")
    assert (caught.value.expected, caught.value.actual) == ("eu", "us")


def test_a_handoff_expires_after_its_lifetime() -> None:
    clock = FakeClock()
    tokens = HandoffToken(KEYS, lifetime=10, clock=clock)
    token = tokens.encode("us", {})
    clock.advance(11)
    with pytest.raises(TokenExpired):
        tokens.decode(token, target="us")


@pytest.mark.parametrize("lifetime", [0, 61, -1, True])
def test_a_handoff_lifetime_is_at_most_60_seconds(lifetime: Any) -> None:
    with pytest.raises(InvalidValue, match="handoff_lifetime"):
        HandoffToken(KEYS, lifetime=lifetime)


@pytest.mark.parametrize(
    "payload",
    [{"i": "x", "t": "eu"}, {"i": 1, "t": "eu", "s": {}}, {"i": "x", "t": "eu", "s": []}, "eu"],
)
def test_a_malformed_handoff_payload_is_bad(payload: Any) -> None:
    forged = StateCodec(KEYS, salt=HANDOFF_SALT).dumps(payload)
    with pytest.raises(BadToken, match="malformed"):
        HandoffToken(KEYS).decode(forged, target="eu")


def test_redeem_is_single_use() -> None:
    tokens = HandoffToken(KEYS)
    guard = ReplayGuard.for_tokens(tokens)
    token = tokens.encode("eu", {"a": 1})
    assert tokens.redeem(token, target="eu", guard=guard).session == {"a": 1}
    with pytest.raises(TokenReplayed):
        tokens.redeem(token, target="eu", guard=guard)


def test_a_token_that_fails_verification_claims_nothing() -> None:
    tokens = HandoffToken(KEYS)
    guard = ReplayGuard.for_tokens(tokens)
    token = tokens.encode("us", {})
    with pytest.raises(WrongTarget):
        tokens.redeem(token, target="eu", guard=guard)
    assert len(guard) == 0
    tokens.redeem(token, target="us", guard=guard)


def test_a_relay_retargets_a_token_once() -> None:
    tokens = HandoffToken(KEYS)
    guard = ReplayGuard.for_tokens(tokens)
    token = tokens.encode("dispatcher", {"cart": [1]})
    relayed = tokens.retarget(token, via="dispatcher", to="us", guard=guard)
    assert tokens.decode(relayed, target="us").session == {"cart": [1]}
    with pytest.raises(TokenReplayed):
        tokens.retarget(token, via="dispatcher", to="us", guard=guard)


# --- replay guard -----------------------------------------------------------------------


def test_the_guard_forgets_ids_after_their_ttl() -> None:
    clock = FakeClock(100.0)
    guard = ReplayGuard(ttl=10, clock=clock)
    guard.claim("a")
    clock.advance(9.9)
    with pytest.raises(TokenReplayed):
        guard.claim("a")
    clock.advance(0.2)
    guard.claim("a")
    assert len(guard) == 1


def test_the_guard_is_bounded_and_counts_early_evictions() -> None:
    guard = ReplayGuard(ttl=60, capacity=3, clock=FakeClock())
    for token_id in "abcd":
        guard.claim(token_id)
    assert len(guard) == 3
    assert guard.evicted == 1
    guard.claim("a")  # forgotten early: the price of a bound
    with pytest.raises(TokenReplayed):
        guard.claim("d")


def test_the_guard_remembers_as_long_as_a_token_verifies() -> None:
    guard = ReplayGuard.for_tokens(HandoffToken(KEYS, lifetime=60))
    assert guard.ttl >= 60 + 5 + 1


@pytest.mark.parametrize(("ttl", "capacity"), [(0, 10), (10, 0)])
def test_the_guard_validates_its_bounds(ttl: float, capacity: int) -> None:
    with pytest.raises(InvalidValue):
        ReplayGuard(ttl=ttl, capacity=capacity)


def test_concurrent_claims_of_one_id_let_exactly_one_through() -> None:
    guard = ReplayGuard(ttl=60)
    wins: list[int] = []
    barrier = threading.Barrier(8, timeout=5)

    def claim(n: int) -> None:
        barrier.wait()
        try:
            guard.claim("same")
        except TokenReplayed:
            return
        wins.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert len(wins) == 1
