"""More of the cluster lab (issue 6), with real ``farmnode serve`` processes in namespaces.

The same topology as ``tests/farmnode/test_cluster_lab.py`` (its helpers are reused): a
bridge namespace as the LAN, nodes n1 (priority 150), n2 (priority 100), the witness w and
a client, all in 10.213.70.0/24; removed afterwards, also on failure.

- Forged, replayed and foreign-cluster heartbeats, sent from the client namespace to the
  nodes' heartbeat ports while n1 owns ``front``: each is dropped and counted under its
  reason in ``farmnode status --json`` (``mac``, ``replay``, ``cluster``), and the floating
  address never moves (polled every 50 ms; never two holders).
- Debian's ``IPaddr2`` (resource-agents) as the group's only resource, through the ``ocf``
  agent: one holder at start-up, and the standby holds the address after ``kill -9`` of the
  owner (the time is printed with ``-s``, not asserted).

Needs root: without it each test skips with the reason (under CI=true that is a failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farmnode.cluster.protocol import Heartbeat, encode
from tests.conftest import skip_or_fail
from tests.farmnode.netns import Lab, unavailable_reason
from tests.farmnode.test_cluster_lab import (
    DEADTIME,
    HB_PORT,
    HOSTS,
    INITDEAD,
    INTERVAL,
    POLL,
    PREFIX,
    VIP,
    WAIT,
    ClusterLab,
    Member,
    Responder,
    _config,
    _mac,
    wait,
)

KEY = b"lab-cluster-key-0123456789"  # the key _config writes
IPADDR2 = Path("/usr/lib/ocf/resource.d/heartbeat/IPaddr2")
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800


def _ocf_config(name: str, dev: str) -> str:
    """The lab's node config with the group ``front`` held by Debian's IPaddr2 instead."""
    base = _config(name, dev)
    if name == "w":
        return base
    head, _, rest = base.partition("\n[[services]]")
    cluster = "\n[cluster]" + rest.partition("\n[cluster]")[2].partition("\n[[groups]]")[0]
    return (
        head
        + cluster
        + f"""
[[groups]]
name = "front"
[[groups.resources]]
agent = "ocf"
name = "vip"
type = "heartbeat/IPaddr2"
params = {{ ip = "{VIP}", cidr_netmask = 24, nic = "{dev}" }}
monitor_interval = 2.0
"""
    )


def _build(tmp: Path, config: Callable[[str, str], str], lab: Lab) -> ClusterLab:
    lan = lab.namespace("lan")
    lab.bridge(lan)
    members = {}
    for name, host in HOSTS.items():
        ns = lab.namespace(name)
        dev = lab.attach(ns, f"{PREFIX}.{host}/24", lan)
        path = tmp / f"{name}.toml"
        path.write_text(config(name, dev))
        members[name] = Member(name, ns, dev, _mac(ns, dev), path, tmp / f"{name}.log")
    client = lab.namespace("client")
    lab.attach(client, f"{PREFIX}.2/24", lan)
    return ClusterLab(lab, client, members, tmp)


@contextlib.contextmanager
def _lab(tmp: Path, config: Callable[[str, str], str]) -> Iterator[ClusterLab]:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    responders: list[Responder] = []
    with Lab() as lab:
        built = _build(tmp, config, lab)
        try:
            for name in ("n1", "n2"):
                responders.append(Responder(built.members[name].ns, name))
            yield built
        finally:
            lab.close()  # the farmnode processes first, while their namespaces exist
            for responder in responders:
                responder.close()
            for member in built.members.values():
                for out in member.logs:
                    out.close()


def _start_and_settle(lab: ClusterLab) -> float:
    """Start every node; the seconds until n1 alone holds the address (never two)."""
    began = time.monotonic()
    for name in HOSTS:
        lab.start(name)

    def one_owner() -> bool:
        held = lab.holders()
        assert len(held) <= 1, f"two owners at start-up: {held}\n{lab.logs()}"
        return len(held) == 1

    wait("one node holds the floating address", one_owner, lab)
    took = time.monotonic() - began
    _hold_steady(lab, 1.0)
    return took


def _hold_steady(lab: ClusterLab, seconds: float) -> int:
    """Poll every 50 ms for ``seconds``: n1 alone holds the address; the number of polls."""
    deadline = time.monotonic() + seconds
    polls = 0
    while time.monotonic() < deadline:
        held = lab.holders()
        assert held == {"n1"}, f"the address moved: held by {held}\n{lab.logs()}"
        polls += 1
        time.sleep(POLL)
    return polls


# --- forged, replayed and foreign-cluster heartbeats -----------------------------------------


def _capture_from_n1(lab: ClusterLab) -> bytes:
    """One real heartbeat datagram that n1 sent to n2, read off n1's bridge port.

    ETH_P_ALL: a bridge port hands its frames to the bridge before any per-protocol tap.
    """
    lan = lab.lab.namespaces[0]
    sniffer = lan.call(
        lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    )
    with sniffer:
        sniffer.bind(("p-n1", ETH_P_ALL))
        sniffer.settimeout(0.5)
        target = socket.inet_aton(f"{PREFIX}.{HOSTS['n2']}")
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                frame = sniffer.recv(2048)
                ip = frame[14:]
                ihl = (ip[0] & 0x0F) * 4
                _, dport, _, _ = struct.unpack_from("!HHHH", ip, ihl)
                if ip[9] == socket.IPPROTO_UDP and ip[16:20] == target and dport == HB_PORT:
                    return bytes(ip[ihl + 8 :])
    pytest.fail(f"no heartbeat from n1 to n2 seen on the LAN within {WAIT} s")


def _receiver(lab: ClusterLab, name: str) -> dict[str, int]:
    counters = lab.status(name)["cluster"]["counters"]["receiver"]
    return {str(k): int(v) for k, v in counters.items()}


def _grew(before: dict[str, int], after: dict[str, int], reason: str) -> int:
    return after.get(reason, 0) - before.get(reason, 0)


def _fake(node: str, sequence: int, *, cluster: str = "lab", priority: int = 100) -> Heartbeat:
    return Heartbeat(
        cluster=cluster,
        node=node,
        incarnation=time.time_ns(),
        sequence=sequence,
        sent=time.monotonic_ns(),
        state="active",
        priority=priority,
        groups=("front",),
        quorum=True,
    )


def test_forged_replayed_and_foreign_heartbeats_are_dropped_and_counted(tmp_path: Path) -> None:
    with _lab(tmp_path, _config) as lab:
        took = _start_and_settle(lab)
        assert lab.holders() == {"n1"}
        captured = _capture_from_n1(lab)
        time.sleep(3 * INTERVAL)  # n2 has heard newer heartbeats from n1 since
        before = {name: _receiver(lab, name) for name in ("n1", "n2")}
        addresses = {name: (f"{PREFIX}.{HOSTS[name]}", HB_PORT) for name in ("n1", "n2")}
        sender = lab.client.new_socket(socket.SOCK_DGRAM)
        polls = 0
        with sender:

            def send(data: bytes, *to: str) -> None:
                for name in to:
                    sender.sendto(data, addresses[name])

            # (a) "n2" claims front, active, top priority, but signed with a wrong key
            forged = encode(_fake("n2", 1, priority=255), b"not-the-lab-cluster-key")
            for _ in range(5):
                send(forged, "n1", "n2")
                polls += _hold_steady(lab, 2 * POLL)
            polls += _hold_steady(lab, DEADTIME)
            # (b) replays: n1's real datagram, later, twice; a fake node's sequence 10 twice, then 5
            send(captured, "n2")
            send(captured, "n2")
            x1 = _fake("x1", 10)
            first = encode(x1, KEY)
            send(first, "n2")
            send(first, "n2")
            send(encode(x1._replace(sequence=5), KEY), "n2")
            polls += _hold_steady(lab, DEADTIME)
            # (c) right key, another cluster
            foreign = encode(_fake("n2", 1, cluster="other", priority=255), KEY)
            for _ in range(5):
                send(foreign, "n1", "n2")
            polls += _hold_steady(lab, DEADTIME)
        after = {name: _receiver(lab, name) for name in ("n1", "n2")}
        for name in ("n1", "n2"):
            assert _grew(before[name], after[name], "mac") == 5, (name, before, after)
            assert _grew(before[name], after[name], "cluster") == 5, (name, before, after)
        assert _grew(before["n2"], after["n2"], "replay") == 4, (before, after)
        assert _grew(before["n2"], after["n2"], "accepted") > 0
        assert lab.holders() == {"n1"}
        standby = lab.status("n2")["cluster"]
        assert standby["groups"]["front"]["owner"] == "n1"
        assert "x1" not in standby["members"]  # not a configured peer: no vote, no claim
        assert lab.status("n1")["cluster"]["state"] == "active"
        assert lab.ask() == b"n1"
        grown = {
            name: {r: _grew(before[name], after[name], r) for r in ("mac", "cluster", "replay")}
            for name in ("n1", "n2")
        }
        print(f"start-up: n1 holds the address after {took:.3f} s; {polls} polls, no move")
        print(f"receiver counters grew by {grown}")


# --- Debian's IPaddr2 through the ocf agent --------------------------------------------------


def test_ipaddr2_from_resource_agents_moves_with_its_group(tmp_path: Path) -> None:
    if not os.access(IPADDR2, os.X_OK):
        skip_or_fail(f"{IPADDR2} is missing: apt-get install resource-agents")
    with _lab(tmp_path, _ocf_config) as lab:
        took = _start_and_settle(lab)
        assert lab.holders() == {"n1"}
        assert lab.status("n2")["cluster"]["groups"]["front"]["owner"] == "n1"
        owner = lab.members["n1"]
        assert owner.process is not None
        killed = time.monotonic()
        os.killpg(owner.process.pid, signal.SIGKILL)
        owner.process.wait(timeout=WAIT)
        wait("n2 holds the address", lambda: "n2" in lab.holders(), lab)
        moved = time.monotonic() - killed
        status = lab.status("n2")["cluster"]["groups"]["front"]
        assert status["owner"] == "n2"
        print(
            f"IPaddr2: start-up owner after {took:.3f} s (initdead {INITDEAD}); "
            f"kill -9: n2 holds the address after {moved:.3f} s (deadtime {DEADTIME})"
        )
