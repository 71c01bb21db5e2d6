"""Network affinity's consistent hash (dispatcher.placement.ring): every replica places a
network identically, and a site that leaves moves its own networks and (almost) no others."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.placement import engine
from dispatcher.placement.build import Hashing
from dispatcher.placement.model import Client
from dispatcher.placement.ring import MEMO_SIZE, NetworkRing, client_network, subnet_network
from tests.placement.support import pool_of, spec

NETWORKS = 3000


def networks(seed: int, count: int = NETWORKS) -> list[Client]:
    rng = random.Random(seed)
    return [
        Client(address=f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.7")
        for _ in range(count)
    ]


def placed(ring: NetworkRing, names: list[str], clients: list[Client]) -> list[str]:
    available = {s.name: s for s in pool_of([spec(n) for n in names]).candidates}
    candidates = list(available.values())
    return [ring.site(c, available, candidates).name for c in clients]  # type: ignore[union-attr]


@settings(max_examples=12, deadline=None)
@given(st.integers(2, 12), st.data())
def test_a_site_that_goes_down_moves_only_its_own_networks(n: int, data: st.DataObject) -> None:
    names = [f"site{i}" for i in range(n)]
    gone = data.draw(st.sampled_from(names))
    clients = networks(data.draw(st.integers(0, 1000)))
    pool = pool_of([spec(name) for name in names], hashing=Hashing())
    without = pool_of([spec(name) for name in names], down={gone}, hashing=Hashing(), held=pool)
    assert without.ring is pool.ring  # the table holds health-independent members: reused
    before = [engine.pick(pool, c).name for c in clients]  # type: ignore[union-attr]
    after = [engine.pick(without, c).name for c in clients]  # type: ignore[union-attr]
    moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert all(before[i] == gone for i in moved)  # only the departed site's networks move
    assert len(moved) == before.count(gone)  # ... all of them
    assert len(moved) <= 1.5 / n * len(clients)
    assert gone not in after
    back = [engine.pick(pool, c).name for c in clients]  # type: ignore[union-attr]
    assert back == before  # and come back with it


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 12), st.data())
def test_a_site_that_leaves_the_pool_moves_at_most_one_and_a_half_nth(
    n: int, data: st.DataObject
) -> None:
    names = [f"site{i}" for i in range(n)]
    gone = data.draw(st.sampled_from(names))
    clients = networks(data.draw(st.integers(0, 1000)))
    rest = [name for name in names if name != gone]
    before = placed(NetworkRing.build([(name, 1) for name in names]), names, clients)
    after = placed(NetworkRing.build([(name, 1) for name in rest]), rest, clients)
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert moved >= before.count(gone)
    assert moved <= 1.5 / n * len(clients)  # Maglev: a little more than its own share


RING_DIGEST = """
import hashlib, sys
from dispatcher.placement.ring import NetworkRing
ring = NetworkRing.build([("eu", 3), ("us", 1), ("asia", 2)])
print(hashlib.sha256("|".join(ring.slots).encode()).hexdigest())
"""


def test_every_replica_builds_the_same_ring() -> None:
    # other processes, other hash seeds (a replica elsewhere): the same table
    digests = {
        subprocess.run(
            [sys.executable, "-c", RING_DIGEST],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        for seed in ("1", "2")
    }
    members = [("eu", 3), ("us", 1), ("asia", 2)]
    one = NetworkRing.build(members)
    assert digests == {hashlib.sha256("|".join(one.slots).encode()).hexdigest() + "\n"}
    shares = Counter(one.slots)
    total = len(one.slots)
    for name, weight in members:  # slots by weight (Maglev: exact within a round)
        assert abs(shares[name] / total - weight / 6) < 0.01


def test_weights_share_the_networks() -> None:
    pool = pool_of([spec("eu", 3), spec("us", 1)], hashing=Hashing())
    counts = Counter(engine.pick(pool, c).name for c in networks(7))  # type: ignore[union-attr]
    assert abs(counts["eu"] / NETWORKS - 0.75) < 0.04


def test_a_drained_site_moves_its_networks_and_a_rebuilt_snapshot_keeps_the_ring() -> None:
    specs = [spec("eu"), spec("us"), spec("asia")]
    pool = pool_of(specs, hashing=Hashing())
    drained = pool_of(
        [spec("eu"), spec("us", drained=True), spec("asia")], hashing=Hashing(), held=pool
    )
    assert drained.ring is pool.ring
    clients = networks(3)
    for client in clients:
        before = engine.pick(pool, client).name  # type: ignore[union-attr]
        after = engine.pick(drained, client).name  # type: ignore[union-attr]
        assert after == before or before == "us"
    reweighed = pool_of([spec("eu", 2), spec("us"), spec("asia")], hashing=Hashing(), held=pool)
    assert reweighed.ring is not pool.ring
    assert pool_of(specs, hashing=Hashing(16, 48), held=pool).ring is not pool.ring


def test_a_pool_with_nothing_up_still_hashes_when_failing_open() -> None:
    specs = [spec("eu"), spec("us"), spec("asia")]
    pool = pool_of(specs, down={"eu", "us", "asia"}, all_down="fail-open", hashing=Hashing())
    client = Client(address="203.0.113.5")
    assert {engine.pick(pool, client).name for _ in range(5)} == {  # type: ignore[union-attr]
        engine.pick(pool_of(specs, hashing=Hashing()), client).name  # type: ignore[union-attr]
    }
    assert engine.pick(pool_of(specs, down={"eu", "us", "asia"}, hashing=Hashing()), client) is None


def test_most_of_the_pool_down_still_lands_on_an_available_site_by_hash() -> None:
    specs = [spec(f"s{i}") for i in range(40)]
    pool = pool_of(specs, down={f"s{i}" for i in range(39)}, hashing=Hashing())
    assert {engine.pick(pool, c).name for c in networks(1, 200)} == {"s39"}  # type: ignore[union-attr]


def test_a_client_without_a_network_is_placed_by_the_policy() -> None:
    pool = pool_of([spec("eu"), spec("us")], hashing=Hashing())
    assert not pool.plain
    seen = {engine.pick(pool, Client(address="")).name for _ in range(4)}  # type: ignore[union-attr]
    assert seen == {"eu", "us"}


@pytest.mark.parametrize(
    ("subnet", "v4", "v6", "key"),
    [
        ("198.51.100.0/24", 24, 64, "198.51.100.0/24"),
        ("198.51.100.77/32", 24, 64, "198.51.100.0/24"),
        ("198.51.0.0/16", 24, 64, "198.51.0.0/16"),  # shorter than the netmask: as it is
        ("2001:db8:1:2::/56", 24, 48, "2001:db8:1::/48"),
        ("bogus", 24, 64, None),
    ],
)
def test_a_client_subnet_is_a_network_too(subnet: str, v4: int, v6: int, key: str | None) -> None:
    assert subnet_network(subnet, v4, v6) == key


def test_a_subnet_and_an_address_in_it_hash_alike() -> None:
    ring = NetworkRing.build([("eu", 1), ("us", 1), ("asia", 1)])
    assert ring.network(Client(subnet="198.51.100.0/24")) == ring.network(
        Client(address="198.51.100.200")
    )
    assert client_network("198.51.100.200", 24, 64) == "198.51.100.0/24"


def test_the_rings_memo_is_bounded_and_changes_no_answer() -> None:
    pool = pool_of([spec("eu"), spec("us"), spec("asia")], hashing=Hashing())
    ring = pool.ring
    assert ring is not None
    clients = networks(11, MEMO_SIZE + 500)
    first = [engine.pick(pool, c) for c in clients]
    assert 0 < len(ring.memo) <= MEMO_SIZE
    fresh = pool_of([spec("eu"), spec("us"), spec("asia")], hashing=Hashing())
    assert [engine.pick(fresh, c) for c in reversed(clients)] == first[::-1]
