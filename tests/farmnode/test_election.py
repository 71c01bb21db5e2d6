"""The election: table-driven cases on one planner, and whole clusters simulated on a fake clock.

The simulation runs every node's real Membership and Planner; heartbeats travel between them
with a random delay below the interval on two transports; nodes die, restart, lose links and
fail monitors. After every step at most one node holds each group; once things settle, every
group has an owner wherever a quorate member lives.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farmnode.cluster.election import GroupRule, Plan, Planner, Step, outranks
from farmnode.cluster.membership import Heartbeat, Membership, Role

INTERVAL, DEADTIME, WARNTIME, INITDEAD = 0.2, 1.0, 0.5, 2.0
DT = 0.025
MAX_DELAY = 0.08  # < interval - step, the assumption of the safety argument
SETTLE = 4 * INTERVAL
EPS = 1e-6
FAILURE_TIMEOUT = 3.0
TRANSPORTS = ("lan", "serial")
GROUPS = ("front", "db")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- one planner, table-driven ---------------------------------------------------------------


def member(
    clock: Clock, peers: Sequence[str] = ("n2",), name: str = "n1"
) -> tuple[Membership, Planner]:
    m = Membership(name, TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, peers)
    return m, planner(name)


def planner(
    name: str = "n1",
    priority: int = 100,
    *,
    role: Role = "member",
    auto_failback: bool = False,
    preempt_delay: float = 0.0,
) -> Planner:
    return Planner(
        name,
        [GroupRule(g, failures_before_move=2, failure_timeout=FAILURE_TIMEOUT) for g in GROUPS],
        priority=priority,
        incarnation=1,
        role=role,
        auto_failback=auto_failback,
        preempt_delay=preempt_delay,
        settle=SETTLE,
    )


def hb(priority: int = 100, groups: Iterable[str] = (), **kw: object) -> Heartbeat:
    return Heartbeat(incarnation=1, priority=priority, groups=frozenset(groups), **kw)  # type: ignore[arg-type]


def advance(clock: Clock, seconds: float) -> None:
    clock.now += seconds


def acquires(plan: Plan) -> set[str]:
    return {s.group for s in plan.steps if s.action == "acquire"}


def releases(plan: Plan) -> set[str]:
    return {s.group for s in plan.steps if s.action == "release"}


def test_waits_for_an_unheard_peer_until_initdead() -> None:
    clock = Clock()
    m, p = member(clock)
    plan = p.plan(m.view())
    assert not plan.steps
    assert "waiting for n2 to be heard (initdead)" in plan.status
    advance(clock, INITDEAD + DT)
    plan = p.plan(m.view())
    assert acquires(plan) == set(GROUPS)
    assert plan.heartbeat.groups == frozenset(GROUPS)  # claimed before resources start
    assert "two-node cluster without a witness" in plan.status


@pytest.mark.parametrize(
    ("mine", "theirs", "other", "i_acquire"),
    [
        (100, 50, "n2", True),
        (50, 100, "n2", False),
        (100, 100, "n2", True),  # equal priority: the name that sorts first wins
        (100, 100, "n0", False),
    ],
)
def test_highest_priority_then_name_wins(
    mine: int, theirs: int, other: str, i_acquire: bool
) -> None:
    clock = Clock()
    m = Membership("n1", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, [other])
    p = planner(priority=mine)
    m.heard(other, "lan", hb(theirs))
    p.plan(m.view())
    advance(clock, SETTLE + EPS)
    m.heard(other, "lan", hb(theirs))
    plan = p.plan(m.view())
    assert (acquires(plan) == set(GROUPS)) is i_acquire
    assert outranks((mine, "n1"), (theirs, other)) is i_acquire


def test_settles_before_acquiring_even_when_every_peer_is_heard() -> None:
    clock = Clock()
    m, p = member(clock)
    m.heard("n2", "serial", hb(10))
    assert "settling" in p.plan(m.view()).status
    advance(clock, SETTLE - DT)
    m.heard("n2", "serial", hb(10))
    assert not p.plan(m.view()).steps
    advance(clock, DT + EPS)
    assert acquires(p.plan(m.view())) == set(GROUPS)


def owner_of_everything(clock: Clock, m: Membership, p: Planner, peer: str = "n2") -> None:
    m.heard(peer, "lan", hb(10))
    p.plan(m.view())
    advance(clock, SETTLE + EPS)
    m.heard(peer, "lan", hb(10))
    assert acquires(p.plan(m.view())) == set(GROUPS)


def test_never_acquires_a_group_a_live_peer_claims() -> None:
    clock = Clock()
    m, p = member(clock)
    m.heard("n2", "lan", hb(10, ["front"]))
    p.plan(m.view())
    advance(clock, SETTLE + EPS)
    m.heard("n2", "lan", hb(10, ["front"]))
    plan = p.plan(m.view())
    assert acquires(plan) == {"db"}
    assert "front: standby (owned by n2)" in plan.status


def test_takes_over_only_when_silent_on_every_transport_for_deadtime() -> None:
    clock = Clock()
    m2 = Membership("n2", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, ["n1"])
    p = planner("n2", priority=10)
    m2.heard("n1", "lan", hb(100, GROUPS))
    advance(clock, SETTLE + EPS)
    for _ in range(20):  # the LAN is cut; the serial line still carries heartbeats
        advance(clock, INTERVAL)
        m2.heard("n1", "serial", hb(100, GROUPS))
        assert not p.plan(m2.view()).steps
    assert m2.alive("n1")
    advance(clock, DEADTIME - DT)
    assert m2.late("n1")
    assert not p.plan(m2.view()).steps
    advance(clock, 2 * DT)
    assert not m2.alive("n1")
    plan = p.plan(m2.view())
    assert acquires(plan) == set(GROUPS)
    assert "previous owner n1 gone" in plan.steps[0].reason


def test_auto_failback_false_keeps_the_owner_when_a_better_node_returns() -> None:
    clock = Clock()
    m, p = member(clock)
    owner_of_everything(clock, m, p)
    for _ in range(50):
        advance(clock, INTERVAL)
        m.heard("n2", "lan", hb(250))
        assert not p.plan(m.view()).steps


@pytest.mark.parametrize("delay", [0.0, 2.0])
def test_auto_failback_true_hands_back_after_preempt_delay(delay: float) -> None:
    clock = Clock()
    m = Membership("n1", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, ["n2"])
    p = planner(auto_failback=True, preempt_delay=delay)
    owner_of_everything(clock, m, p)
    m.heard("n2", "lan", hb(250))
    start = clock.now
    while True:
        plan = p.plan(m.view())
        if plan.steps:
            break
        advance(clock, DT)
        m.heard("n2", "lan", hb(250))
    assert clock.now - start == pytest.approx(delay, abs=DT)
    assert releases(plan) == set(GROUPS)
    assert "handing back to n2" in plan.steps[0].reason
    assert plan.heartbeat.groups == frozenset(GROUPS)  # still claimed while stopping
    for g in GROUPS:
        p.stopped(g)
    m.heard("n2", "lan", hb(250))
    plan = p.plan(m.view())
    assert not plan.steps
    assert plan.heartbeat.groups == frozenset()


def test_a_failed_witness_or_returning_failed_node_is_no_candidate_for_hand_back() -> None:
    clock = Clock()
    m = Membership("n1", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, ["n2"])
    p = planner(auto_failback=True)
    owner_of_everything(clock, m, p)
    m.heard("n2", "lan", hb(250, failed=frozenset(GROUPS)))
    assert not p.plan(m.view()).steps
    m.heard("n2", "lan", hb(250, role="witness"))
    assert not p.plan(m.view()).steps
    m.heard("n2", "lan", hb(250, state="noquorum"))
    assert not p.plan(m.view()).steps


def test_the_lower_ranked_of_two_owners_yields_and_the_higher_announces() -> None:
    clock = Clock()
    m, p = member(clock)
    owner_of_everything(clock, m, p)
    m.heard("n2", "lan", hb(10, ["front"]))  # a healed split brain
    plan = p.plan(m.view())
    assert [(s.action, s.group) for s in plan.steps] == [("announce", "front")]
    assert not p.plan(m.view()).steps  # announced once per detection
    m.heard("n2", "lan", hb(200, ["db"]))
    plan = p.plan(m.view())
    assert releases(plan) == {"db"}
    assert "n2 (priority 200) owns it too and outranks us" in plan.steps[0].reason


def test_a_failing_monitor_moves_the_group_and_bars_it_here_for_failure_timeout() -> None:
    clock = Clock()
    m, p = member(clock)
    owner_of_everything(clock, m, p)
    p.monitor_failed("front", clock.now)
    p.monitor_ok("front")
    p.monitor_failed("front", clock.now)
    m.heard("n2", "lan", hb(10))
    assert not p.plan(m.view()).steps  # two in a row are needed
    p.monitor_failed("front", clock.now)
    plan = p.plan(m.view())
    assert releases(plan) == {"front"}
    assert "monitor failed 2 time(s)" in plan.steps[0].reason
    assert plan.heartbeat.failed == frozenset({"front"})
    p.stopped("front")
    advance(clock, FAILURE_TIMEOUT - DT)
    m.heard("n2", "lan", hb(10))
    assert "front: failed here" in p.plan(m.view()).status
    advance(clock, DT)
    m.heard("n2", "lan", hb(10))
    assert "settling" in p.plan(m.view()).status  # eligible again, but seen first
    advance(clock, SETTLE + EPS)
    m.heard("n2", "lan", hb(10))
    assert acquires(p.plan(m.view())) == {"front"}


def test_losing_quorum_releases_everything_and_a_witness_owns_nothing() -> None:
    clock = Clock()
    m = Membership("n1", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, ["n2", "w"])
    p = planner()
    for _ in range(6):
        m.heard("n2", "lan", hb(10))
        m.heard("w", "lan", hb(0, role="witness"))
        p.plan(m.view())
        advance(clock, INTERVAL)
    assert p.claims == set(GROUPS)
    m.heard("n2", "lan", hb(10))
    advance(clock, m.fresh_window / 2)
    m.heard("w", "lan", hb(0, role="witness"))  # n2 is silent now: the witness keeps quorum
    assert not p.plan(m.view()).steps
    advance(clock, m.fresh_window + DT)
    view = m.view()
    assert not view.quorate
    plan = p.plan(view)
    assert releases(plan) == set(GROUPS)
    assert "lost quorum (1 of 3 voters seen)" in plan.steps[0].reason
    assert plan.heartbeat.state == "noquorum"
    w = planner("w", 0, role="witness")
    mw = Membership("w", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, ["n1", "n2"])
    advance(clock, 2 * INITDEAD)
    assert not w.plan(mw.view()).steps  # alone and without quorum, but a witness anyway
    mw.heard("n1", "lan", hb(100))
    assert "witness (owns nothing)" in w.plan(mw.view()).status


def test_leave_releases_everything_and_stops_being_a_candidate() -> None:
    clock = Clock()
    m, p = member(clock)
    owner_of_everything(clock, m, p)
    p.leave()
    plan = p.plan(m.view())
    assert releases(plan) == set(GROUPS)
    assert plan.heartbeat.state == "leaving"


def test_a_peer_silent_to_us_but_seen_by_a_live_peer_blocks_takeover() -> None:
    clock = Clock()
    m = Membership("n2", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, ["n1", "w"])
    p = planner("n2", 10)
    m.heard("n1", "lan", hb(100, ["front"]))
    witness = hb(0, role="witness", sees=frozenset({"n1", "n2"}))
    while m.alive("n1"):  # n1 <-> n2 cut; the witness still hears n1
        advance(clock, INTERVAL)
        m.heard("w", "lan", witness)
        p.plan(m.view())
    plan = p.plan(m.view())
    assert not acquires(plan)  # n1 may have taken db since we last heard it, too
    assert "front: standby (w still sees n1, silent to us)" in plan.status
    assert plan.heartbeat.state == "active"  # a short partial view only delays
    advance(clock, DEADTIME)
    m.heard("w", "lan", witness)
    plan = p.plan(m.view())
    assert plan.heartbeat.state == "standby"  # a lasting one ends our candidacy
    assert not plan.steps
    m.heard("w", "lan", hb(0, role="witness", sees=frozenset({"n2"})))
    plan = p.plan(m.view())
    assert plan.heartbeat.state == "active"
    assert "settling" in plan.status
    advance(clock, SETTLE + EPS)
    m.heard("w", "lan", hb(0, role="witness", sees=frozenset({"n2"})))
    assert acquires(p.plan(m.view())) == set(GROUPS)


# --- whole clusters --------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    priority: int
    role: Role
    up: bool = False
    membership: Membership | None = None
    planner: Planner | None = None
    holds: set[str] = field(default_factory=set)
    next_send: float = 0.0
    heartbeat: Heartbeat | None = None


class Cluster:
    """Every node's real Membership and Planner on one fake clock; links are queues."""

    def __init__(
        self, nodes: Sequence[tuple[int, Role]], seed: int, *, auto_failback: bool = False
    ) -> None:
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.nodes = {f"n{i}": Node(f"n{i}", pr, role) for i, (pr, role) in enumerate(nodes)}
        self.auto_failback = auto_failback
        self.cut: set[tuple[str, str, str]] = set()
        self.queue: list[tuple[float, int, str, str, str, Heartbeat]] = []
        self.counter = itertools.count()
        self.incarnations = itertools.count(1)
        self.log: list[str] = []

    def start(self, name: str) -> None:
        node = self.nodes[name]
        node.up = True
        node.holds = set()
        peers = [n for n in self.nodes if n != name]
        node.membership = Membership(
            name, TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, self.clock, peers
        )
        node.planner = Planner(
            name,
            [GroupRule(g, 1, FAILURE_TIMEOUT) for g in GROUPS],
            priority=node.priority,
            incarnation=next(self.incarnations),
            role=node.role,
            auto_failback=self.auto_failback,
            preempt_delay=1.0,
            settle=SETTLE,
        )
        node.next_send = self.clock.now + self.rng.uniform(0, INTERVAL)
        node.heartbeat = None

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.up, node.holds, node.membership, node.planner = False, set(), None, None

    def fail_monitor(self, group: str) -> None:
        for node in self.nodes.values():
            if node.up and group in node.holds and node.planner is not None:
                node.planner.monitor_failed(group, self.clock.now)

    def step(self) -> None:
        self.clock.now += DT
        self._deliver()
        for node in self.nodes.values():
            if node.up and node.membership is not None and node.planner is not None:
                plan = node.planner.plan(node.membership.view())
                self._execute(node, node.planner, plan.steps)
                node.heartbeat = plan.heartbeat
                if self.clock.now >= node.next_send:
                    self._send(node, plan.heartbeat)
                    node.next_send += INTERVAL
        self.check_one_owner()

    def _execute(self, node: Node, planner: Planner, steps: Sequence[Step]) -> None:
        for s in steps:
            self.log.append(f"{self.clock.now:.3f} {node.name} {s.action} {s.group}: {s.reason}")
            if s.action == "acquire":
                node.holds.add(s.group)
            elif s.action == "release":
                node.holds.discard(s.group)
                planner.stopped(s.group)

    def _send(self, node: Node, heartbeat: Heartbeat) -> None:
        for dst in self.nodes:
            for t in TRANSPORTS:
                if dst != node.name:
                    at = self.clock.now + self.rng.uniform(0, MAX_DELAY)
                    item = (at, next(self.counter), node.name, dst, t, heartbeat)
                    heapq.heappush(self.queue, item)

    def _deliver(self) -> None:
        while self.queue and self.queue[0][0] <= self.clock.now:
            _, _, src, dst, t, heartbeat = heapq.heappop(self.queue)
            node = self.nodes[dst]
            if (src, dst, t) not in self.cut and node.up and node.membership is not None:
                node.membership.heard(src, t, heartbeat)

    def check_one_owner(self) -> None:
        for g in GROUPS:
            holders = [n.name for n in self.nodes.values() if n.up and g in n.holds]
            assert len(holders) <= 1, (self.clock.now, g, holders, self.log[-12:])
        for node in self.nodes.values():
            assert node.role == "member" or not node.holds

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / DT)):
            self.step()

    def up_members(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.up and n.role == "member"]

    def quorum_possible(self) -> bool:
        voters = len(self.nodes)
        up = sum(1 for n in self.nodes.values() if n.up)
        return voters <= 2 or 2 * up > voters


def test_two_nodes_fail_over_and_keep_the_owner_on_return() -> None:
    cluster = Cluster([(100, "member"), (50, "member")], seed=1)
    cluster.start("n0")
    cluster.start("n1")
    cluster.run(INITDEAD)
    assert cluster.nodes["n0"].holds == set(GROUPS)
    cluster.kill("n0")
    cluster.run(DEADTIME + 2 * INTERVAL)
    assert cluster.nodes["n1"].holds == set(GROUPS)
    cluster.start("n0")
    cluster.run(5.0)
    assert cluster.nodes["n1"].holds == set(GROUPS)  # auto_failback = false


def test_three_voters_with_a_witness_fail_over_and_hand_back() -> None:
    cluster = Cluster([(100, "member"), (50, "member"), (0, "witness")], seed=2, auto_failback=True)
    for name in cluster.nodes:
        cluster.start(name)
    cluster.run(INITDEAD)
    assert cluster.nodes["n0"].holds == set(GROUPS)
    cluster.kill("n0")
    cluster.run(DEADTIME + 3 * INTERVAL)
    assert cluster.nodes["n1"].holds == set(GROUPS)
    cluster.start("n0")
    cluster.run(SETTLE + 1.0 + 3 * INTERVAL)  # settle, preempt_delay, a release and an acquire
    assert cluster.nodes["n0"].holds == set(GROUPS)


EVENT = st.tuples(
    st.floats(0.0, 10.0),
    st.sampled_from(["kill", "start", "cut", "cut1", "isolate", "heal", "fail"]),
    st.integers(0, 4),
    st.integers(0, 4),
    st.integers(0, 1),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(2, 5),
    witness=st.booleans(),
    priorities=st.lists(st.integers(0, 2), min_size=5, max_size=5),
    events=st.lists(EVENT, max_size=12),
    auto_failback=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_random_clusters_never_have_two_owners_and_always_have_one(
    size: int,
    witness: bool,
    priorities: list[int],
    events: list[tuple[float, str, int, int, int]],
    auto_failback: bool,
    seed: int,
) -> None:
    roles: list[Role] = ["member"] * size
    if witness and size >= 3:
        roles[-1] = "witness"
    cluster = Cluster(list(zip(priorities, roles, strict=False)), seed, auto_failback=auto_failback)
    names = list(cluster.nodes)
    for name in names:
        cluster.start(name)
    for at, kind, i, j, t in sorted(events):
        cluster.run(max(0.0, at - (cluster.clock.now - 100.0)))
        apply_event(cluster, names, kind, names[i % size], names[j % size], TRANSPORTS[t])
    cluster.cut.clear()
    cluster.run(INITDEAD + FAILURE_TIMEOUT + SETTLE + DEADTIME + 2.0)
    members = cluster.up_members()
    if members and cluster.quorum_possible():
        for g in GROUPS:
            holders = [n for n in members if g in n.holds]
            assert len(holders) == 1, (g, cluster.log[-12:])
            if auto_failback:
                best = min(members, key=lambda n: (-n.priority, n.name))
                assert holders[0] is best, (g, cluster.log[-12:])


def apply_event(cluster: Cluster, names: list[str], kind: str, a: str, b: str, t: str) -> None:
    if kind == "kill" and cluster.nodes[a].up:
        cluster.kill(a)
    elif kind == "start" and not cluster.nodes[a].up:
        cluster.start(a)
    elif kind == "cut" and a != b and len(names) >= 3:  # every transport, one direction
        cluster.cut.update((a, b, tr) for tr in TRANSPORTS)
    elif kind == "cut1" and a != b:  # one transport both ways: redundancy must carry it
        others = [tr for tr in TRANSPORTS if tr != t]
        if not any((x, y, o) in cluster.cut for x, y in ((a, b), (b, a)) for o in others):
            cluster.cut.update({(a, b, t), (b, a, t)})
    elif kind == "isolate" and len(names) >= 3:  # every link of one node, both ways
        for other in names:
            if other != a:
                cluster.cut.update(
                    (x, y, tr) for x, y in ((a, other), (other, a)) for tr in TRANSPORTS
                )
    elif kind == "heal":
        cluster.cut.clear()
    elif kind == "fail":
        cluster.fail_monitor(GROUPS[TRANSPORTS.index(t)])


def owner(cluster: Cluster, group: str) -> str | None:
    holders = [n.name for n in cluster.nodes.values() if n.up and group in n.holds]
    return holders[0] if holders else None


def started(size: int, seed: int, *, witness: bool = True) -> Cluster:
    roles: list[Role] = ["member"] * size
    if witness:
        roles[-1] = "witness"
    cluster = Cluster([(100 - 10 * i, role) for i, role in enumerate(roles)], seed)
    for name in cluster.nodes:
        cluster.start(name)
    cluster.run(INITDEAD + SETTLE)
    assert owner(cluster, "front") == "n0"
    return cluster


@settings(max_examples=25, deadline=None)
@given(size=st.integers(3, 5), seed=st.integers(0, 2**32), offset=st.floats(0.0, INTERVAL))
def test_an_isolated_owner_releases_before_the_majority_takes_over(
    size: int, seed: int, offset: float
) -> None:
    cluster = started(size, seed)
    cluster.run(offset)
    names = list(cluster.nodes)
    apply_event(cluster, names, "isolate", "n0", "n0", "lan")
    cluster.run(DEADTIME + 4 * INTERVAL)  # every step checks for two owners
    assert owner(cluster, "front") == "n1"
    isolated = cluster.nodes["n0"].heartbeat
    assert isolated is not None
    assert isolated.state == "noquorum"
    assert not isolated.groups
    cluster.cut.clear()
    cluster.run(3.0)
    assert owner(cluster, "front") == "n1"  # auto_failback = false


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), offset=st.floats(0.0, INTERVAL), one_way=st.booleans())
def test_a_cut_between_the_members_keeps_the_owner_while_the_witness_sees_both(
    seed: int, offset: float, one_way: bool
) -> None:
    cluster = started(3, seed)
    cluster.run(offset)
    cluster.cut.update(("n0", "n1", t) for t in TRANSPORTS)
    if not one_way:
        cluster.cut.update(("n1", "n0", t) for t in TRANSPORTS)
    cluster.run(3 * DEADTIME)
    assert owner(cluster, "front") == "n0"
    assert (
        "still sees n0, silent to us"
        in cluster.nodes["n1"]
        .planner.plan(  # type: ignore[union-attr]
            cluster.nodes["n1"].membership.view()  # type: ignore[union-attr]
        )
        .status
    )
    cluster.kill("n0")
    cluster.run(DEADTIME + 3 * INTERVAL + SETTLE)  # n1 was on standby: it settles first
    assert owner(cluster, "front") == "n1"


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_a_member_that_cannot_hear_the_witness_stands_by_for_one_that_can(seed: int) -> None:
    cluster = Cluster([(100, "member"), (50, "member"), (0, "witness")], seed)
    cluster.cut.update(("n2", "n0", t) for t in TRANSPORTS)  # n0 never hears the witness
    for name in cluster.nodes:
        cluster.start(name)
    cluster.run(INITDEAD + DEADTIME + SETTLE + 3 * INTERVAL)
    assert owner(cluster, "front") == "n1"
    assert cluster.nodes["n0"].heartbeat is not None
    assert cluster.nodes["n0"].heartbeat.state == "standby"
    cluster.cut.clear()
    cluster.run(3.0)
    assert owner(cluster, "front") == "n1"  # auto_failback = false
