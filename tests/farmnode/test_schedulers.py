"""The schedulers, pure: one suite over every scheduler, then each one's own semantics."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmnode.errors import SchedulerError
from farmnode.switch.schedulers import SCHEDULERS, RealServer, Scheduler, make_scheduler
from farmnode.switch.tables import MH_DEFAULT_SIZE, client_hash, is_prime, maglev_table, sh_table

ALL = sorted(SCHEDULERS)
PICKS = 10_000
WEIGHTS = (1, 2, 3, 4)


def servers(weights: Sequence[int], actives: Sequence[int] = ()) -> list[RealServer]:
    """Real servers 10.0.0.1:80, 10.0.0.2:80... with these weights and active counts."""
    made = [RealServer(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights)]
    for server, active in zip(made, actives, strict=False):
        server.active = active
    return made


def scheduler(name: str, pool: Sequence[RealServer], **params: object) -> Scheduler:
    if name == "twos" and "rng" not in params:
        params["rng"] = random.Random(5)
    made = make_scheduler(name, **params)
    made.update(pool)
    return made


def clients(n: int) -> list[str]:
    """``n`` distinct client addresses spread over 10.0.0.0/8."""
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]


def picks_counting(sched: Scheduler, n: int = PICKS) -> Counter[str]:
    """Pick ``n`` times, each pick opening a connection that stays open."""
    counts: Counter[str] = Counter()
    for client in clients(n):
        server = sched.pick(client)
        assert server is not None
        server.active += 1
        counts[server.key] += 1
    return counts


# -- the registry ------------------------------------------------------------------------


def test_registry_has_every_ipvs_scheduler_and_the_kernel_ones() -> None:
    assert set(SCHEDULERS) == {
        "rr",
        "wrr",
        "lc",
        "wlc",
        "sed",
        "nq",
        "sh",
        "mh",
        "fo",
        "ovf",
        "twos",
    }
    assert {n for n, cls in SCHEDULERS.items() if cls.kernel} == {"rr", "wrr", "sh", "mh", "fo"}
    for name, cls in SCHEDULERS.items():
        assert cls.name == name


def test_make_scheduler_rejects_unknown_names_and_parameters() -> None:
    with pytest.raises(SchedulerError, match=r"unknown scheduler 'lblc'.*rr"):
        make_scheduler("lblc")
    with pytest.raises(SchedulerError, match="no parameter size"):
        make_scheduler("rr", size=251)
    with pytest.raises(SchedulerError, match="not a prime"):
        make_scheduler("mh", size=256)
    with pytest.raises(SchedulerError, match="prime integer"):
        make_scheduler("sh", size="251")
    with pytest.raises(SchedulerError, match=r"random\.Random"):
        make_scheduler("twos", rng=42)
    assert make_scheduler("mh", size=251).pick("10.0.0.1") is None


# -- invariants over every scheduler -----------------------------------------------------

server_states = st.lists(
    st.tuples(
        st.integers(0, 5),  # configured weight
        st.booleans(),  # up
        st.one_of(st.none(), st.integers(0, 5)),  # agent weight
        st.integers(0, 6),  # active
        st.integers(0, 3),  # inactive
    ),
    max_size=6,
)


def build(states: Sequence[tuple[int, bool, int | None, int, int]]) -> list[RealServer]:
    pool = servers([w for w, *_ in states])
    for server, (_, up, agent, active, inactive) in zip(pool, states, strict=True):
        server.up, server.agent_weight = up, agent
        server.active, server.inactive = active, inactive
    return pool


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=60, deadline=None)
@given(states=server_states, client=st.ip_addresses().map(str), seed=st.integers(0, 99))
def test_picks_only_available_servers_and_none_only_when_it_must(
    name: str, states: list[tuple[int, bool, int | None, int, int]], client: str, seed: int
) -> None:
    pool = build(states)
    sched = scheduler(name, pool, size=251) if name in ("sh", "mh") else scheduler(name, pool)
    if name == "twos":
        sched = scheduler(name, pool, rng=random.Random(seed))
    available = [s for s in pool if s.available]
    for _ in range(3):
        picked = sched.pick(client)
        if picked is None:
            full = all(s.active >= s.effective_weight for s in available)
            assert not available or (name == "ovf" and full)
        else:
            assert picked in available


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(states=server_states, client=st.ip_addresses().map(str), data=st.data())
def test_pick_excluding_never_returns_an_excluded_server(
    name: str,
    states: list[tuple[int, bool, int | None, int, int]],
    client: str,
    data: st.DataObject,
) -> None:
    pool = build(states)
    sched = scheduler(name, pool, size=251) if name in ("sh", "mh") else scheduler(name, pool)
    keys = [s.key for s in pool]
    exclude = set(data.draw(st.lists(st.sampled_from(keys)) if keys else st.just([])))
    picked = sched.pick_excluding(client, exclude)
    rest = [s for s in pool if s.available and s.key not in exclude]
    if picked is None:
        assert not rest or name == "ovf"
    else:
        assert picked in rest


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("ovf",)])
def test_pick_excluding_finds_the_remaining_server(name: str) -> None:
    pool = servers((1, 1, 1))
    sched = scheduler(name, pool)
    exclude = {pool[0].key, pool[2].key}
    for client in clients(20):
        assert sched.pick_excluding(client, exclude) is pool[1]


@pytest.mark.parametrize("name", ALL)
def test_an_update_takes_servers_out_and_back(name: str) -> None:
    pool = servers((1, 1, 1))
    sched = scheduler(name, pool)
    pool[0].up = False
    pool[1].weight = 0
    sched.update(pool)
    assert {sched.pick(c) for c in clients(50)} == {pool[2]}
    pool[2].agent_weight = 0
    sched.update(pool)
    assert sched.pick("10.9.9.9") is None
    pool[0].up = True
    sched.update(pool)
    assert sched.pick("10.9.9.9") is pool[0]


# -- distribution over 10,000 picks ------------------------------------------------------

total_weight = sum(WEIGHTS)
PROPORTIONAL = [w / total_weight for w in WEIGHTS]
EQUAL = [1 / len(WEIGHTS)] * len(WEIGHTS)

# (expected shares, tolerance in share points). Deterministic schedulers are exact to a
# pick or two; hashed (sh, mh) and random (twos) ones sample, hence 2 points.
DISTRIBUTION = {
    "rr": (EQUAL, 0.0002),
    "wrr": (PROPORTIONAL, 0.0002),
    "lc": (EQUAL, 0.0002),
    "wlc": (PROPORTIONAL, 0.0002),
    "sed": (PROPORTIONAL, 0.0002),
    "nq": (PROPORTIONAL, 0.0002),
    "sh": (PROPORTIONAL, 0.02),
    "mh": (PROPORTIONAL, 0.02),
    "twos": (PROPORTIONAL, 0.02),
    "fo": ([0.0, 0.0, 0.0, 1.0], 0.0),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTION))
def test_shares_over_ten_thousand_picks_follow_the_weights(name: str) -> None:
    expected, tolerance = DISTRIBUTION[name]
    pool = servers(WEIGHTS)
    counts = picks_counting(scheduler(name, pool))
    for server, share in zip(pool, expected, strict=True):
        assert abs(counts[server.key] / PICKS - share) <= tolerance, (name, counts)


@pytest.mark.parametrize("name", ["sh", "mh", "twos"])
def test_random_and_hashed_shares_hold_without_load_feedback(name: str) -> None:
    """Without connections counted (twos then chooses by weight alone) shares still hold."""
    pool = servers(WEIGHTS)
    sched = scheduler(name, pool)
    counts = Counter(s.key for c in clients(PICKS) if (s := sched.pick(c)) is not None)
    for server, share in zip(pool, PROPORTIONAL, strict=True):
        assert abs(counts[server.key] / PICKS - share) <= 0.02, counts


# -- rr and wrr --------------------------------------------------------------------------


def test_rr_takes_turns_and_keeps_its_place_across_updates() -> None:
    pool = servers((1, 5, 1, 1))
    sched = scheduler("rr", pool)
    assert [sched.pick("c") for _ in range(5)] == [pool[0], pool[1], pool[2], pool[3], pool[0]]
    pool[2].up = False
    sched.update(pool)
    assert [sched.pick("c") for _ in range(4)] == [pool[1], pool[3], pool[0], pool[1]]


def test_wrr_interleaves_smoothly_with_exact_cycle_shares() -> None:
    pool = servers((5, 1, 1))
    sched = scheduler("wrr", pool)
    a, b, c = pool
    assert [sched.pick("x") for _ in range(7)] == [a, a, b, a, c, a, a]


def test_wrr_reduces_weights_by_their_gcd_and_steps_live_past_the_limit() -> None:
    pool = servers((300, 100, 200))
    cached = scheduler("wrr", pool)
    live = scheduler("wrr", pool, precompute_limit=0)
    sequence = [cached.pick("x") for _ in range(60)]
    assert sequence == [live.pick("x") for _ in range(60)]
    for start in range(0, 60, 6):  # the reduced cycle is 3 + 1 + 2 = 6 picks
        assert Counter(s.key for s in sequence[start : start + 6] if s) == {
            pool[0].key: 3,
            pool[1].key: 1,
            pool[2].key: 2,
        }


# -- lc, wlc, sed, nq: by active connections ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "weights", "actives", "inactives", "winner"),
    [
        ("lc", (1, 1, 1), (3, 1, 2), (0, 0, 0), 1),
        ("lc", (10, 1), (1, 0), (0, 0), 1),  # weights do not matter to lc
        ("lc", (1, 1), (2, 2), (5, 0), 1),  # inactive breaks the tie
        ("lc", (1, 1), (0, 1), (255, 0), 0),  # 255 inactive < 1 active (x256)
        ("lc", (1, 1), (2, 2), (0, 0), 0),  # a tie goes to the first
        ("wlc", (1, 3), (1, 2), (0, 0), 1),  # 256/1 > 512/3
        ("wlc", (1, 2), (1, 2), (0, 0), 0),  # 256/1 == 512/2: first
        ("wlc", (2, 2), (1, 1), (0, 3), 0),
        ("sed", (1, 3), (0, 2), (0, 0), 0),  # 1/1 == 3/3: first
        ("sed", (1, 3), (0, 1), (0, 0), 1),  # 1/1 > 2/3
        ("sed", (1, 1), (1, 1), (9, 0), 0),  # sed ignores inactive
        ("nq", (1, 10), (0, 5), (0, 0), 0),  # an idle server first, whatever sed says
        ("nq", (1, 10), (1, 5), (0, 0), 1),  # nobody idle: sed (2/1 > 6/10)
        ("nq", (1, 10, 1), (1, 5, 0), (0, 0, 0), 2),
    ],
)
def test_connection_based_schedulers_pick_by_active_connections(
    name: str,
    weights: tuple[int, ...],
    actives: tuple[int, ...],
    inactives: tuple[int, ...],
    winner: int,
) -> None:
    pool = servers(weights, actives)
    for server, inactive in zip(pool, inactives, strict=True):
        server.inactive = inactive
    assert scheduler(name, pool).pick("10.1.1.1") is pool[winner]


@pytest.mark.parametrize("name", ["lc", "wlc", "sed", "nq"])
def test_connection_based_schedulers_follow_connections_as_they_close(name: str) -> None:
    pool = servers((1, 1))
    sched = scheduler(name, pool)
    first = sched.pick("c")
    assert first is pool[0]
    first.active += 1
    second = sched.pick("c")
    assert second is pool[1]
    first.active -= 1
    second.active += 5
    assert sched.pick("c") is pool[0]


# -- fo and ovf --------------------------------------------------------------------------


def test_fo_takes_the_heaviest_available_server() -> None:
    pool = servers((2, 5, 5, 1))
    sched = scheduler("fo", pool)
    assert sched.pick("c") is pool[1]  # the first of the two heaviest
    pool[1].up = False
    sched.update(pool)
    assert sched.pick("c") is pool[2]
    pool[2].agent_weight = 0
    sched.update(pool)
    assert sched.pick("c") is pool[0]


def test_ovf_fills_the_heaviest_up_to_its_weight_then_overflows() -> None:
    pool = servers((1, 3, 0))
    sched = scheduler("ovf", pool)
    picked = []
    for _ in range(5):
        server = sched.pick("c")
        picked.append(server)
        if server is not None:
            server.active += 1
    assert picked == [pool[1], pool[1], pool[1], pool[0], None]
    pool[1].active -= 1
    assert sched.pick("c") is pool[1]


# -- twos ------------------------------------------------------------------------------


class ScriptedRandom(random.Random):
    """A ``random.Random`` whose ``randrange`` answers from a script (to pin both choices)."""

    def __init__(self, values: Sequence[int]) -> None:
        super().__init__(0)
        self.values = list(values)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        value = self.values.pop(0)
        assert 0 <= value < start
        return value


def test_twos_takes_the_less_loaded_of_its_two_weighted_choices() -> None:
    pool = servers((1, 2, 1), actives=(4, 4, 0))  # cumulative weights 1, 3, 4
    # draws: 0 -> pool[0], 1 or 2 -> pool[1], 3 -> pool[2]
    sched = scheduler("twos", pool, rng=ScriptedRandom([0, 2, 3, 1, 1, 2, 0, 0]))
    assert sched.pick("c") is pool[1]  # 4*256/1 vs 4*256/2: the heavier wins
    assert sched.pick("c") is pool[2]  # an idle one beats a busy one
    assert sched.pick("c") is pool[1]  # both choices the same server
    assert sched.pick("c") is pool[0]


def test_twos_mostly_avoids_a_loaded_server() -> None:
    pool = servers((1, 1), actives=(100, 0))
    sched = scheduler("twos", pool, rng=random.Random(7))
    loaded = sum(sched.pick("c") is pool[0] for _ in range(PICKS))
    assert abs(loaded / PICKS - 0.25) < 0.02  # only when both choices are the loaded one


# -- sh ---------------------------------------------------------------------------------


def test_sh_sends_a_client_to_the_same_server_every_time() -> None:
    pool = servers(WEIGHTS)
    sched = scheduler("sh", pool)
    first = {c: sched.pick(c) for c in clients(500)}
    sched.update(pool)  # same membership: same table
    again = scheduler("sh", servers(WEIGHTS))
    for client, server in first.items():
        assert sched.pick(client) is server
        other = again.pick(client)
        assert other is not None
        assert server is not None
        assert other.key == server.key
    assert len({s.key for s in first.values() if s}) == 4


def test_sh_table_deals_buckets_by_weight() -> None:
    table = sh_table([("a", 2), ("b", 4), ("c", 6)], 7)
    assert table == [0, 1, 1, 2, 2, 2, 0]
    assert sh_table([], 7) == []


# -- mh: Maglev ---------------------------------------------------------------------------


def keys(n: int) -> list[str]:
    return [f"10.1.{i >> 8}.{i & 255}:80" for i in range(n)]


def test_maglev_table_rejects_what_it_cannot_build() -> None:
    with pytest.raises(SchedulerError, match="not a prime"):
        maglev_table([("a", 1)], 100)
    with pytest.raises(SchedulerError, match="do not fit"):
        maglev_table([(k, 1) for k in keys(8)], 7)
    with pytest.raises(SchedulerError, match="weight 0"):
        maglev_table([("a", 1), ("b", 0)], 7)
    with pytest.raises(SchedulerError, match="twice"):
        maglev_table([("a", 1), ("a", 2)], 7)
    assert maglev_table([], 7) == []
    assert is_prime(MH_DEFAULT_SIZE)


def test_maglev_table_gives_each_server_slots_in_proportion_to_its_weight() -> None:
    entries = [(k, w) for k, w in zip(keys(4), (1, 2, 3, 4), strict=True)]
    table = maglev_table(entries, 4093)
    assert len(table) == 4093
    counts = Counter(table)
    rounds = 4093 / 10  # one round hands out 1 + 2 + 3 + 4 slots
    for i, (_, weight) in enumerate(entries):
        assert abs(counts[i] - weight * rounds) <= weight


def test_maglev_weights_are_reduced_by_their_gcd() -> None:
    assert maglev_table([("a", 10), ("b", 20)], 251) == maglev_table([("a", 1), ("b", 2)], 251)


MAGLEV_SCRIPT = """
import hashlib, json
from farmnode.switch.tables import maglev_table
entries = [("10.0.0.%d:80" % i, 1 + i % 3) for i in range(1, 9)]
print(hashlib.sha256(json.dumps(maglev_table(entries, 4093)).encode()).hexdigest())
"""


def test_maglev_table_is_the_same_in_every_process() -> None:
    """The nftables plane renders it into the kernel; a restart must give the same table.

    Two interpreters with different string-hash seeds must agree with this one.
    """
    import json

    entries = [(f"10.0.0.{i}:80", 1 + i % 3) for i in range(1, 9)]
    here = hashlib.sha256(json.dumps(maglev_table(entries, 4093)).encode()).hexdigest()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", MAGLEV_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == here


@pytest.mark.parametrize(("n", "size"), [(3, 4093), (5, 4093), (10, 4093), (10, MH_DEFAULT_SIZE)])
def test_maglev_removing_one_of_n_moves_about_one_nth_of_the_clients(n: int, size: int) -> None:
    """Maglev's promise, honestly: the removed server's clients all move (they must), and
    a few of the others' move too (Maglev gives up perfect consistency for even load), so
    the total stays within 1.5 x 1/N, and most servers' clients stay where they were."""
    pool = [RealServer(f"10.1.0.{i}", 80, 1) for i in range(1, n + 1)]
    sched = scheduler("mh", pool, size=size)
    population = clients(PICKS)
    before = {c: sched.pick(c) for c in population}
    for removed in pool:
        removed.up = False
        sched.update(pool)
        after = {c: sched.pick(c) for c in population}
        moved = [c for c in population if after[c] is not before[c]]
        assert all(after[c] is not removed for c in population)
        assert all(c in moved for c in population if before[c] is removed)
        assert len(moved) / PICKS <= 1.5 / n, (removed.key, len(moved))
        others_moved = sum(1 for c in moved if before[c] is not removed)
        assert others_moved / PICKS <= 0.5 / n
        removed.up = True
        sched.update(pool)
        assert {c: sched.pick(c) for c in population} == before  # back: the same table


def test_maglev_adding_a_server_moves_clients_only_to_it_mostly() -> None:
    n = 10
    pool = [RealServer(f"10.1.0.{i}", 80, 1) for i in range(1, n + 2)]
    pool[-1].up = False
    sched = scheduler("mh", pool)
    population = clients(PICKS)
    before = {c: sched.pick(c) for c in population}
    pool[-1].up = True
    sched.update(pool)
    moved = [c for c in population if sched.pick(c) is not before[c]]
    to_new = sum(1 for c in moved if sched.pick(c) is pool[-1])
    assert len(moved) / PICKS <= 1.5 / (n + 1)
    assert to_new >= 0.8 * len(moved)


def test_mh_exclusion_rehashes_deterministically() -> None:
    pool = servers((1, 1, 1))
    sched = scheduler("mh", pool, size=251)
    for client in clients(50):
        usual = sched.pick(client)
        assert usual is not None
        other = sched.pick_excluding(client, {usual.key})
        assert other is not None
        assert other is not usual
        assert sched.pick_excluding(client, {usual.key}) is other


def test_client_hash_is_stable_and_spreads_neighbours() -> None:
    assert client_hash("192.0.2.1") == client_hash("192.0.2.1")
    assert client_hash("192.0.2.1", 1) != client_hash("192.0.2.1")
    buckets = Counter(client_hash(c) % 16 for c in clients(4096))
    assert min(buckets.values()) > 4096 / 16 * 0.8
