"""Membership: dead only when silent on every transport for deadtime; late, pending, quorum."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmnode.cluster.membership import SLACK, TWO_NODE_REASON, Heartbeat, Membership

INTERVAL, DEADTIME, WARNTIME, INITDEAD = 0.2, 1.0, 0.5, 2.0
TRANSPORTS = ("udp:10.213.0.11:6940", "serial:/dev/ttyS1")
LAN, SERIAL = TRANSPORTS


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def membership(clock: Clock, peers: tuple[str, ...] = ("n2",)) -> Membership:
    return Membership("n1", TRANSPORTS, INTERVAL, DEADTIME, WARNTIME, INITDEAD, clock, peers)


HB = Heartbeat(incarnation=3, priority=100, groups=frozenset({"front"}))


def test_an_unheard_peer_is_pending_for_initdead_then_dead() -> None:
    clock = Clock()
    m = membership(clock)
    assert m.status("n2") == "pending"
    assert m.alive("n2")
    assert m.members()["n2"].heartbeat is None
    clock.now += INITDEAD
    assert m.status("n2") == "dead"
    assert m.alive("n1")  # this node is always alive to itself


def test_a_peer_is_late_after_warntime_and_dead_only_after_deadtime_on_every_transport() -> None:
    clock = Clock()
    m = membership(clock)
    assert m.heard("n2", LAN, HB)
    clock.now += 0.7
    assert m.heard("n2", SERIAL, HB)  # the LAN went quiet; the serial line carries on
    clock.now += 0.6
    assert m.status("n2") == "late"
    assert m.late("n2")
    peer = m.members()["n2"]
    assert peer.last_heard == {LAN: pytest.approx(1.3), SERIAL: pytest.approx(0.6)}
    assert peer.silent_for == pytest.approx(0.6)
    assert peer.claims("front")
    assert peer.candidate("front")
    clock.now += 0.5
    assert m.status("n2") == "dead"
    assert not m.members()["n2"].claims("front")
    assert m.heard("n2", LAN, HB)  # back
    assert m.status("n2") == "alive"


def test_unknown_nodes_transports_and_stale_incarnations_are_ignored() -> None:
    clock = Clock()
    m = membership(clock)
    assert not m.heard("n9", LAN, HB)
    assert not m.heard("n2", "udp:1.2.3.4:1", HB)
    assert m.heard("n2", LAN, HB)
    old = Heartbeat(incarnation=2, groups=frozenset({"db"}))
    assert not m.heard("n2", LAN, old)  # a delayed message of a previous run
    assert m.members()["n2"].heartbeat == HB
    clock.now += DEADTIME + 0.1
    assert m.heard("n2", LAN, old)  # after a death, any incarnation is news


def test_quorum_is_a_strict_majority_of_fresh_voters() -> None:
    clock = Clock()
    m = membership(clock, ("n2", "n3", "w", "n5"))
    assert not m.quorum()
    m.heard("n2", LAN, HB)
    assert not m.quorum()  # 2 of 5
    m.heard("w", SERIAL, HB)
    assert m.quorum()  # 3 of 5
    assert m.quorum(["n1", "n2"])  # two voters: always
    clock.now += m.fresh_window + 0.01
    assert m.alive("n2")  # alive, but no longer fresh: it does not hold quorum up
    assert not m.quorum()
    assert m.degraded_reason is None
    view = m.view()
    assert (view.voters, view.quorate) == (5, False)
    assert view.sees == frozenset({"n2", "w"})


def test_a_two_node_cluster_is_always_quorate_and_says_why_it_is_fragile() -> None:
    clock = Clock()
    m = membership(clock)
    clock.now += 10 * DEADTIME
    view = m.view()
    assert view.quorate
    assert view.degraded_reason == TWO_NODE_REASON
    assert "relies on redundant transports" in TWO_NODE_REASON


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(0.0, 0.7), st.sampled_from(TRANSPORTS), st.booleans()), max_size=30
    )
)
def test_alive_exactly_when_heard_on_some_transport_within_deadtime(
    events: list[tuple[float, str, bool]],
) -> None:
    clock = Clock()
    m = membership(clock)
    last: dict[str, float] = {}
    start = clock.now
    for gap, transport, send in events:
        clock.now += gap
        if send:
            m.heard("n2", transport, HB)
            last[transport] = clock.now
        silent = clock.now - max(last.values()) if last else None
        dead_after = DEADTIME + SLACK * INTERVAL  # deadtime, plus slack for jitter
        expected = (clock.now - start < INITDEAD) if silent is None else silent <= dead_after
        assert m.alive("n2") is expected
        if silent is not None:
            assert m.late("n2") is (WARNTIME < silent <= dead_after)
            assert dict(m.members()["n2"].last_heard) == pytest.approx(
                {t: clock.now - at for t, at in last.items()}
            )


def test_the_wire_protocols_heartbeat_is_read_as_it_is() -> None:
    from farmnode.cluster.election import GroupRule, Planner
    from farmnode.cluster.protocol import Heartbeat as Wire

    clock = Clock()
    m = membership(clock)
    wire = Wire("eu", "n2", 7, 1, 0, "active", 200, ("front",), True, "member", (), ("n1",))
    assert m.heard("n2", SERIAL, wire)
    peer = m.members()["n2"]
    assert peer.claims("front")
    assert peer.candidate("db")
    assert not m.heard("n2", SERIAL, wire._replace(incarnation=6))
    p = Planner("n1", [GroupRule("front"), GroupRule("db")], priority=100, incarnation=1)
    plan = p.plan(m.view())
    assert "front: standby (owned by n2)" in plan.status
    for state in ("starting", "standby", "noquorum", "leaving"):
        assert m.heard("n2", SERIAL, wire._replace(state=state, groups=()))
        assert not m.members()["n2"].candidate("db")


def test_next_change_is_the_next_deadline_of_any_peer() -> None:
    """The loop wakes when a peer's freshness, warntime or deadtime lapses, not an interval
    later: a death is acted on when it happens."""
    clock = Clock()
    m = membership(clock, peers=("n2", "n3"))
    assert m.next_change() == pytest.approx(INITDEAD)  # both pending until initdead
    m.heard("n2", LAN, HB)
    m.heard("n3", LAN, HB)
    slack = SLACK * INTERVAL  # 0.02: a heartbeat that late still counts
    assert m.fresh_window == pytest.approx(0.6 + slack)
    assert m.next_change() == pytest.approx(WARNTIME)  # 0.5: late first
    clock.now += 0.55
    assert m.next_change() == pytest.approx(0.05 + slack)  # then no longer fresh (quorum)
    clock.now += 0.1
    m.heard("n3", LAN, HB)  # n3 again: n2's deadtime (1.0 + slack) is now the nearest
    assert m.next_change() == pytest.approx(DEADTIME + slack - 0.65)
    clock.now += 0.38
    assert m.status("n2") == "dead"
    assert m.next_change() == pytest.approx(WARNTIME - 0.38)  # n3 turns late next
    clock.now += 1.0
    assert m.next_change() is None  # every deadline is behind: nothing lapses by itself


def test_a_heartbeat_a_little_late_is_not_a_loss() -> None:
    """Four heartbeats lost on the grid make a silence of exactly five intervals (=
    deadtime): a fifth that comes a few milliseconds late keeps the peer alive; the quorum
    window likewise survives two losses and a late third."""
    clock = Clock()
    m = membership(clock, peers=("n2", "n3"))
    m.heard("n2", LAN, HB)
    m.heard("n3", LAN, HB)
    clock.now += 3 * INTERVAL + 0.005
    assert m.quorum()
    clock.now = 50.0 + DEADTIME + 0.005
    assert m.alive("n2")
    clock.now = 50.0 + DEADTIME + SLACK * INTERVAL + 0.001
    assert not m.alive("n2")
