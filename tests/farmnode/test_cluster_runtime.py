"""The cluster runtime for real: nodes in one process, heartbeats over UDP on 127.0.0.1.

Each node manages one group, ``front``, holding one ``script`` resource: a small shell
script in ``tmp_path`` that marks the node as holding the resource (``up-NODE``) and
appends ``NODE start`` / ``NODE stop`` to a log shared by every node, so the order of
starts and stops across nodes can be read back. Files ``fail-NODE``, ``nostart-NODE`` and
``nostop-NODE`` make its status, start or stop fail there. While a test waits, every poll
checks that no two live nodes hold the resource at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from farmnode.agents import ResourceGroup, ScriptAgent
from farmnode.agents.context import AttributeRefused
from farmnode.cluster.protocol import Heartbeat, TransportError, encode
from farmnode.cluster.runtime import ClusterRuntime
from farmnode.cluster.settings import ClusterSettings, parse_cluster
from farmnode.cluster.transports import UdpUnicast
from farmnode.errors import ConfigError
from tests.ports import free_ports

pytestmark = pytest.mark.anyio

KEY = "runtime-test-key-0123456789abcdef"
CLUSTER = "lab"
INTERVAL = 0.05
DEADTIME = 0.5
INITDEAD = 1.0
WAIT = 8.0  # generous: the machine is shared

SCRIPT = """#!/bin/sh
dir='{dir}'
node='{node}'
case "$1" in
start) if [ -e "$dir/nostart-$node" ]; then echo "cannot start"; exit 1; fi
    echo "$node start" >> "$dir/log"; touch "$dir/up-$node" ;;
stop) if [ -e "$dir/nostop-$node" ]; then echo "stuck"; exit 1; fi
    if [ -e "$dir/up-$node" ]; then echo "$node stop" >> "$dir/log"; rm -f "$dir/up-$node"; fi ;;
status) [ -e "$dir/fail-$node" ] && exit 4; [ -e "$dir/up-$node" ] && exit 0; exit 3 ;;
*) exit 2 ;;
esac
"""

NOTIFY = """#!/bin/sh
echo "$FARM_CLUSTER_NODE $FARM_CLUSTER_EVENT $FARM_CLUSTER_GROUP | $*" >> '{dir}/notify.out'
"""


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def cluster_tables(
    node: str,
    ports: dict[str, int],
    tmp_path: Path,
    *,
    priority: int = 100,
    witness: bool = False,
    monitor_interval: float = 5.0,
    notify: str | None = None,
    interval: float = INTERVAL,
    initdead: float = INITDEAD,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``node``'s [cluster] and [[groups]] tables: one udp transport, the others as peers;
    unless a witness, one group ``front`` of one ``script`` resource (:data:`SCRIPT`)."""
    cluster: dict[str, Any] = {
        "name": CLUSTER,
        "key": KEY,
        "priority": priority,
        "interval": interval,
        "deadtime": DEADTIME,
        "initdead": initdead,
        "transports": [{"kind": "udp", "bind": f"127.0.0.1:{ports[node]}"}],
        "peers": [
            {"name": name, "addresses": [f"127.0.0.1:{port}"]}
            for name, port in ports.items()
            if name != node
        ],
    }
    if notify is not None:
        cluster["notify"] = notify
    groups: list[dict[str, Any]] = []
    if witness:
        cluster["role"] = "witness"
    else:
        script = executable(tmp_path / f"agent-{node}", SCRIPT.format(dir=tmp_path, node=node))
        resource = {"agent": "script", "path": script, "monitor_interval": monitor_interval}
        groups = [{"name": "front", "resources": [resource]}]
    return cluster, groups


def settings(node: str, ports: dict[str, int], tmp_path: Path, **options: Any) -> ClusterSettings:
    """``node``'s validated [cluster] and [[groups]] (:func:`cluster_tables`)."""
    cluster, groups = cluster_tables(node, ports, tmp_path, **options)
    parsed = parse_cluster(cluster, groups, f"{node}.toml", {}, node_name=node)
    assert parsed is not None
    return parsed


class Lab:
    """Runtimes of one cluster; checks at every poll that no two live nodes hold ``front``."""

    def __init__(self, tmp_path: Path, nodes: dict[str, ClusterRuntime]) -> None:
        self.dir = tmp_path
        self.nodes = nodes
        self.dead: set[str] = set()  # abandoned: what they hold does not count

    def holders(self) -> list[str]:
        return sorted(
            name
            for name in self.nodes
            if name not in self.dead and (self.dir / f"up-{name}").exists()
        )

    def log(self) -> list[str]:
        path = self.dir / "log"
        return path.read_text().splitlines() if path.exists() else []

    async def until(self, done: Callable[[], bool], timeout: float = WAIT) -> float:
        """Poll every 20 ms until ``done()``; returns the seconds it took."""
        began = time.monotonic()
        async with asyncio.timeout(timeout):
            while True:
                holders = self.holders()
                assert len(holders) <= 1, f"two nodes hold the resource: {holders}"
                if done():
                    return time.monotonic() - began
                await asyncio.sleep(0.02)

    def owned_by(self, name: str) -> Callable[[], bool]:
        """Everyone alive sees ``name`` as the owner, and only ``name`` holds the resource."""

        def check() -> bool:
            live = [rt for n, rt in self.nodes.items() if n not in self.dead and rt.running]
            return self.holders() == [name] and all(rt.owner("front") == name for rt in live)

        return check


@contextlib.asynccontextmanager
async def lab(tmp_path: Path, runtimes: dict[str, ClusterRuntime]) -> AsyncIterator[Lab]:
    """Start every runtime; on the way out, abandon whatever still runs."""
    try:
        for runtime in runtimes.values():
            await runtime.start()
        yield Lab(tmp_path, runtimes)
    finally:
        for runtime in runtimes.values():
            if runtime.running:
                await runtime.abandon()


def two_nodes(tmp_path: Path, **extra: Any) -> dict[str, ClusterRuntime]:
    ports = dict(zip(("n1", "n2"), free_ports(2), strict=True))
    return {
        "n1": ClusterRuntime(settings("n1", ports, tmp_path, priority=200, **extra), "n1"),
        "n2": ClusterRuntime(settings("n2", ports, tmp_path, priority=100, **extra), "n2"),
    }


def first(lines: Sequence[str], line: str) -> int:
    return list(lines).index(line)


# --- start-up ---------------------------------------------------------------------------------


async def test_start_up_elects_exactly_one_owner_with_a_witness(tmp_path: Path) -> None:
    ports = dict(zip(("n1", "n2", "w"), free_ports(3), strict=True))
    notify = executable(tmp_path / "notify.sh", NOTIFY.format(dir=tmp_path))
    events: list[tuple[str, str, str]] = []
    runtimes = {
        "n1": ClusterRuntime(
            settings("n1", ports, tmp_path, priority=200, notify=notify),
            "n1",
            notify=lambda *event: events.append(event),
        ),
        "n2": ClusterRuntime(settings("n2", ports, tmp_path, priority=100), "n2"),
        "w": ClusterRuntime(settings("w", ports, tmp_path, witness=True), "w"),
    }
    (tmp_path / "up-n2").touch()  # left over by a kill -9: cleaned up at start
    async with lab(tmp_path, runtimes) as cluster:
        assert not (tmp_path / "up-n2").exists()
        await cluster.until(cluster.owned_by("n1"))
        await cluster.until((tmp_path / "notify.out").exists)
        n1, n2, w = runtimes["n1"], runtimes["n2"], runtimes["w"]
        assert await n1.cycle() == "n1 (member, active, priority 200); front: owned here"
        assert await n2.cycle() == "n2 (member, active, priority 100); front: standby (owned by n1)"
        assert (await w.cycle()).startswith("w (witness, active")
        status = n2.status()
        assert status["quorum"] == {"quorate": True, "voters": 3, "seen": 3, "warnings": []}
        assert status["groups"]["front"] == {
            "owner": "n1",
            "claimed_by": ["n1"],
            "local": "stopped",
            "resources": {},  # a script agent keeps nothing to show
        }
        member = status["members"]["n1"]
        assert member["alive"]
        assert (member["state"], member["priority"]) == ("active", 200)
        assert list(member["last_heard"]) == [f"udp:127.0.0.1:{ports['n2']}"]
        assert status["members"]["w"]["role"] == "witness"
        assert status["counters"]["receiver"]["accepted"] > 0
        assert n1.status()["groups"]["front"]["local"] == "running"
    assert cluster.log() == ["n2 stop", "n1 start"]  # the clean-up, then the election
    assert events[0][:2] == ("acquire", "front")
    assert "highest-ranked candidate" in events[0][2]
    line = (tmp_path / "notify.out").read_text().splitlines()[0]
    assert line.startswith("n1 acquire front | acquire front highest-ranked candidate")


async def test_a_transport_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        ports = {"n1": taken.getsockname()[1], "n2": free_ports(1)[0]}
        runtime = ClusterRuntime(settings("n1", ports, tmp_path), "n1")
        with pytest.raises(TransportError, match=r"udp:127\.0\.0\.1"):
            await runtime.start()
    assert not runtime.running


# --- failover ---------------------------------------------------------------------------------


async def test_clean_stop_hands_the_group_over(tmp_path: Path) -> None:
    runtimes = two_nodes(tmp_path)
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        assert "WARNING two-node cluster" in runtimes["n2"].last_status
        assert runtimes["n2"].status()["quorum"]["warnings"]
        await runtimes["n1"].stop()
        assert not runtimes["n1"].running
        assert runtimes["n1"].planner.claims == frozenset()
        took = await cluster.until(cluster.owned_by("n2"))
        assert took < WAIT
        assert runtimes["n2"].membership.view().peers["n1"].heartbeat is not None
        peer = runtimes["n2"].status()["members"]["n1"]
        assert (peer["state"], peer["groups"]) == ("leaving", [])
    assert cluster.log() == ["n1 start", "n1 stop", "n2 start"]


@pytest.mark.parametrize("after", [0.1, 0.3, 0.6])
async def test_stop_ends_at_once_whenever_it_comes(after: float) -> None:
    """A member without groups (nothing to release): stop() wakes the loop and cancels it
    at once. On Python 3.11 ``asyncio.wait_for`` swallowed that cancellation when the loop's
    wake-up fell in the same tick, and stop() never returned (every round at 0.1 and 0.3 s;
    farmnode.waits)."""
    ports = free_ports(2)
    cluster = {
        "name": CLUSTER,
        "key": KEY,
        "interval": 0.2,
        "deadtime": 1.0,
        "initdead": 2.0,
        "transports": [{"kind": "udp", "bind": f"127.0.0.1:{ports[0]}"}],
        "peers": [{"name": "n2", "addresses": [f"127.0.0.1:{ports[1]}"]}],
    }
    parsed = parse_cluster(cluster, [], "n1.toml", {}, node_name="n1")
    assert parsed is not None
    for _ in range(3):
        runtime = ClusterRuntime(parsed, "n1")
        await runtime.start()
        try:
            await asyncio.sleep(after)
            began = time.monotonic()
            async with asyncio.timeout(3.0):  # fails rather than hangs
                await runtime.stop()
            assert time.monotonic() - began < 1.0
            assert (runtime.running, runtime.last_status) == (False, "stopped")
        finally:
            if runtime.running:
                await runtime.abandon()


async def test_a_restarted_node_has_a_new_incarnation_and_does_not_preempt(
    tmp_path: Path,
) -> None:
    runtimes = two_nodes(tmp_path)
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        n1, n2 = runtimes["n1"], runtimes["n2"]
        first_run = n1.incarnation
        await n1.stop()
        await cluster.until(cluster.owned_by("n2"))
        await n1.start()
        assert n1.incarnation > first_run
        await cluster.until(lambda: n2.receiver.restarts["n1"] == 1)
        await cluster.until(lambda: n2.status()["members"]["n1"]["state"] == "active")
        await asyncio.sleep(10 * INTERVAL)  # settled: auto_failback is off, n2 keeps it
        assert cluster.owned_by("n2")()
    assert cluster.log() == ["n1 start", "n1 stop", "n2 start"]


async def test_a_crashed_owner_is_replaced_after_deadtime(tmp_path: Path) -> None:
    runtimes = two_nodes(tmp_path)
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        await runtimes["n1"].abandon()  # kill -9: nothing released
        cluster.dead.add("n1")
        took = await cluster.until(cluster.owned_by("n2"))
        # never before the dead node has been silent for deadtime (minus its last interval)
        assert took >= DEADTIME - 2 * INTERVAL
        assert runtimes["n2"].status()["members"]["n1"]["liveness"] == "dead"
    assert (tmp_path / "up-n1").exists()  # a crash leaves its resources behind
    assert cluster.log() == ["n1 start", "n2 start"]


async def test_a_failing_monitor_moves_the_group(tmp_path: Path) -> None:
    runtimes = two_nodes(tmp_path, monitor_interval=0.3)
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        (tmp_path / "fail-n1").touch()
        await cluster.until(cluster.owned_by("n2"))
        status = await runtimes["n1"].cycle()
        assert "front: failed here; may own it again in" in status
        assert runtimes["n2"].status()["members"]["n1"]["state"] == "active"
        await asyncio.sleep(5 * INTERVAL)
        assert cluster.owned_by("n2")()  # n1 does not take it back
    assert cluster.log() == ["n1 start", "n1 stop", "n2 start"]


async def test_a_failed_start_moves_the_group(tmp_path: Path) -> None:
    (tmp_path / "nostart-n1").touch()
    runtimes = two_nodes(tmp_path)
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n2"))
        assert runtimes["n1"].status()["groups"]["front"]["local"] == "stopped"
        assert "front: failed here" in await runtimes["n1"].cycle()
    assert cluster.log() == ["n2 start"]


async def test_a_failed_stop_keeps_the_claim_until_a_retry_succeeds(tmp_path: Path) -> None:
    runtimes = two_nodes(tmp_path, monitor_interval=0.3)
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        (tmp_path / "nostop-n1").touch()
        (tmp_path / "fail-n1").touch()
        n1 = runtimes["n1"]
        await cluster.until(lambda: n1.status()["groups"]["front"]["local"] == "stop_failed")
        await asyncio.sleep(10 * INTERVAL)
        assert runtimes["n2"].owner("front") == "n1"  # still claimed: nobody takes it
        assert cluster.holders() == ["n1"]
        (tmp_path / "nostop-n1").unlink()
        await cluster.until(cluster.owned_by("n2"))
    assert cluster.log() == ["n1 start", "n1 stop", "n2 start"]


async def test_a_member_that_loses_quorum_releases(tmp_path: Path) -> None:
    ports = dict(zip(("n1", "n2", "w"), free_ports(3), strict=True))
    events: list[tuple[str, str, str]] = []
    runtimes = {
        "n1": ClusterRuntime(
            settings("n1", ports, tmp_path, priority=200),
            "n1",
            notify=lambda *event: events.append(event),
        ),
        "n2": ClusterRuntime(settings("n2", ports, tmp_path, priority=100), "n2"),
        "w": ClusterRuntime(settings("w", ports, tmp_path, witness=True), "w"),
    }
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        for name in ("n2", "w"):
            await runtimes[name].abandon()
            cluster.dead.add(name)
        n1 = runtimes["n1"]
        await cluster.until(lambda: n1.status()["groups"]["front"]["local"] == "stopped")
        assert n1.status()["quorum"]["quorate"] is False
        status = await n1.cycle()
        assert (
            status == "n1 (member, noquorum, priority 200); front: no quorum (1 of 3 voters seen)"
        )
    assert cluster.log() == ["n1 start", "n1 stop"]
    assert [event[0] for event in events] == ["acquire", "release"]
    assert events[1][2] == "lost quorum (1 of 3 voters seen)"


# --- forged and foreign heartbeats ------------------------------------------------------------


async def test_forged_foreign_and_stale_heartbeats_change_nothing(tmp_path: Path) -> None:
    runtimes = two_nodes(tmp_path)
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        n1 = runtimes["n1"]
        before = n1.status()["members"]["n2"]
        claim = Heartbeat(CLUSTER, "n2", 2**63, 10**9, 0, "active", 255, ("front",), quorum=True)
        forged = encode(claim, b"not-the-cluster-key-at-all")
        foreign = encode(claim._replace(cluster="other"), KEY.encode())
        stale = encode(claim._replace(incarnation=1), KEY.encode())
        transport = n1.transports[0]
        assert isinstance(transport, UdpUnicast)
        assert transport.local_address is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for payload in (forged, foreign, stale):
                sock.sendto(payload, transport.local_address)
        await cluster.until(lambda: n1.receiver.stats["stale_incarnation"] >= 1)
        counters = n1.status()["counters"]["receiver"]
        assert counters["mac"] == 1
        assert counters["cluster"] == 1
        await asyncio.sleep(4 * INTERVAL)
        assert cluster.owned_by("n1")()
        after = n1.status()["members"]["n2"]
        assert (after["priority"], after["groups"]) == (before["priority"], before["groups"])
    assert cluster.log() == ["n1 start"]


def test_groups_must_match_the_configuration(tmp_path: Path) -> None:
    ports = {"n1": 6940, "n2": 6941}
    config = settings("n1", ports, tmp_path)
    other = ResourceGroup("back", [ScriptAgent({"path": "/bin/true"}, name="s")])
    with pytest.raises(ConfigError, match="exactly the groups of"):
        ClusterRuntime(config, "n1", {"back": other})


# --- node attributes --------------------------------------------------------------------------


async def test_attributes_reach_the_peers_and_outlive_their_node(tmp_path: Path) -> None:
    """What an agent publishes rides every heartbeat; a peer keeps the last value after the
    node died (that is when a promotion needs it), marked not alive."""
    runtimes = two_nodes(tmp_path)
    n1, n2 = runtimes["n1"], runtimes["n2"]
    for runtime in runtimes.values():
        agent = runtime.groups["front"].group.agents[0]
        assert agent.context is runtime  # every agent is bound to its node's cluster
    async with lab(tmp_path, runtimes) as cluster:
        await cluster.until(cluster.owned_by("n1"))
        n1.publish("pg.role", "primary")
        n1.publish("pg.lsn", "83886080")
        await cluster.until(lambda: "n1" in n2.observed("pg.lsn"))
        seen = n2.observed("pg.role")["n1"]
        assert (seen.value, seen.alive) == ("primary", True)
        assert n1.observed("pg.role")["n1"].age == 0.0
        n1.publish("pg.lsn", None)  # withdrawn
        await cluster.until(lambda: "n1" not in n2.observed("pg.lsn"))
        await n1.abandon()
        cluster.dead.add("n1")
        await cluster.until(lambda: not n2.observed("pg.role")["n1"].alive)
        last = n2.observed("pg.role")["n1"]
        assert last.value == "primary"
        assert last.age >= DEADTIME
        assert not n2.alive("n1")
        assert n2.alive("n2")


def test_attributes_the_heartbeat_cannot_carry_are_refused(tmp_path: Path) -> None:
    runtime = two_nodes(tmp_path)["n1"]
    for key, value in [("Pg.Role", "x"), ("1st", "x"), ("k" * 33, "x"), ("pg.lsn", "x" * 121)]:
        with pytest.raises(AttributeRefused):
            runtime.publish(key, value)
    for index in range(8):
        runtime.publish(f"k{index}", "v" * 100)
    with pytest.raises(AttributeRefused, match="at most 8"):
        runtime.publish("k8", "v")
    runtime.publish("k0", None)
    runtime.publish("k8", "v")  # room again
    assert sorted(runtime.observed("k8")) == ["n1"]
