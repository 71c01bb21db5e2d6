"""The ``ipaddr`` agent for real: IP takeover with gratuitous ARP on a LAN of namespaces.

Topology (built per test, removed afterwards, also on failure)::

    lan ns: bridge br0
      +-- n1      10.213.60.11/24  fd00:213:60::11/64
      +-- n2      10.213.60.12/24  fd00:213:60::12/64
      +-- client  10.213.60.2/24   fd00:213:60::2/64

The floating address 10.213.60.50/24 (fd00:213:60::50/64) moves from n1 to n2. The client
never sends anything to it before the takeover: its neighbour entry is pre-seeded with a
wrong MAC in state STALE, as a host that talked to the old owner a while ago would have.
Only the announcement can change that entry to the new owner's MAC. The client keeps the
kernel's defaults (``arp_accept = 0``): like real LAN hosts, Linux updates an *existing*
entry from a gratuitous ARP and only declines to create a new one.

Needs root: without it every test skips with the reason (under CI=true that is a failure).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from farmnode.agents import IpAddr, OcfResult
from tests.conftest import skip_or_fail
from tests.farmnode.netns import Lab, Namespace, unavailable_reason

pytestmark = pytest.mark.anyio

PREFIX4 = "10.213.60"
PREFIX6 = "fd00:213:60:"
STALE_MAC = "02:00:00:00:00:99"
FAST = {"arp_count": 3, "arp_interval": 0.05, "arp_repeat_after": 0.0}


@dataclass
class Node:
    ns: Namespace
    dev: str
    mac: str


@dataclass
class Lan:
    lab: Lab
    n1: Node
    n2: Node
    client: Node
    agents: list[IpAddr] = field(default_factory=list)


def _mac(ns: Namespace, dev: str) -> str:
    links = json.loads(ns.ip("-j", "link", "show", "dev", dev))
    return str(links[0]["address"])


def _node(lab: Lab, lan: Namespace, role: str, host: int) -> Node:
    ns = lab.namespace(role)
    for key in ("all", "default"):
        ns.sysctl(f"net.ipv6.conf.{key}.accept_dad", "0")
    dev = lab.attach(ns, f"{PREFIX4}.{host}/24", lan)
    ns.ip("-6", "addr", "add", f"{PREFIX6}:{host}/64", "dev", dev, "nodad")
    return Node(ns, dev, _mac(ns, dev))


@pytest.fixture
async def lan() -> AsyncIterator[Lan]:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    with Lab() as lab:
        bridge = lab.namespace("lan")
        lab.bridge(bridge)
        n1, n2 = _node(lab, bridge, "n1", 11), _node(lab, bridge, "n2", 12)
        built = Lan(lab, n1, n2, _node(lab, bridge, "client", 2))
        try:
            yield built
        finally:  # a failed test may leave agents started: close their sockets and tasks
            for started in built.agents:
                await started.stop()


def neighbour(client: Node, address: str) -> tuple[str, list[str]]:
    """The client's neighbour entry for ``address``: (MAC or "", states)."""
    entries = json.loads(client.ns.ip("-j", "neigh", "show", address, "dev", client.dev))
    if not entries:
        return "", []
    return str(entries[0].get("lladdr", "")), list(entries[0].get("state", []))


def seed_stale(client: Node, address: str) -> None:
    client.ns.ip(
        "neigh", "replace", address, "lladdr", STALE_MAC, "dev", client.dev, "nud", "stale"
    )
    assert neighbour(client, address)[0] == STALE_MAC


async def wait_for_mac(client: Node, address: str, mac: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    seen = neighbour(client, address)
    while seen[0] != mac and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        seen = neighbour(client, address)
    assert seen[0] == mac, f"client's entry for {address} is {seen}, expected {mac}"


def agent(lan: Lan, node: Node, address: str, **extra: object) -> IpAddr:
    params = {"address": address, "interface": node.dev, "netns": node.ns.name, **FAST, **extra}
    built = IpAddr(params, name=f"vip-{node.ns.role}")
    lan.agents.append(built)
    return built


def addresses(node: Node) -> list[str]:
    info = json.loads(node.ns.ip("-j", "addr", "show", "dev", node.dev))
    return [f"{a['local']}/{a['prefixlen']}" for a in info[0]["addr_info"]]


def exchange(client: Node, server: Node, address: str, family: int) -> bytes:
    """A TCP connection from the client to ``address`` accepted by a listener in ``server``."""
    listener = server.ns.call(lambda: socket.socket(family, socket.SOCK_STREAM))
    with listener:
        listener.bind((address, 0))
        listener.listen(1)
        listener.settimeout(5)
        port = listener.getsockname()[1]
        conn = client.ns.call(lambda: socket.socket(family, socket.SOCK_STREAM))
        with conn:
            conn.settimeout(5)
            conn.connect((address, port))
            accepted, _ = listener.accept()
            with accepted:
                accepted.sendall(server.ns.role.encode())
                return conn.recv(16)


@pytest.mark.parametrize(
    ("vip", "family"),
    [(f"{PREFIX4}.50/24", socket.AF_INET), (f"{PREFIX6}:50/64", socket.AF_INET6)],
    ids=["ipv4", "ipv6"],
)
async def test_takeover_moves_the_clients_neighbour_entry(lan: Lan, vip: str, family: int) -> None:
    address = vip.split("/", maxsplit=1)[0]
    for conf in ("all", lan.client.dev):  # the kernel's default: no entries made from GARP
        arp_accept = lan.client.ns.run("cat", f"/proc/sys/net/ipv4/conf/{conf}/arp_accept")
        assert arp_accept.strip() == "0"
    seed_stale(lan.client, address)
    first, second = agent(lan, lan.n1, vip), agent(lan, lan.n2, vip)
    assert await second.monitor() is OcfResult.NOT_RUNNING

    assert await first.start() is OcfResult.SUCCESS
    assert vip in addresses(lan.n1)
    assert await first.monitor() is OcfResult.SUCCESS
    await wait_for_mac(lan.client, address, lan.n1.mac)
    assert exchange(lan.client, lan.n1, address, family) == b"n1"

    assert await first.stop() is OcfResult.SUCCESS
    assert vip not in addresses(lan.n1)
    assert await first.monitor() is OcfResult.NOT_RUNNING
    assert await first.stop() is OcfResult.SUCCESS  # stopped already: still success

    assert await second.start() is OcfResult.SUCCESS
    await wait_for_mac(lan.client, address, lan.n2.mac)
    assert exchange(lan.client, lan.n2, address, family) == b"n2"
    assert second.announcements >= 1
    assert await second.stop() is OcfResult.SUCCESS


async def test_start_is_idempotent_and_announce_repeats(lan: Lan) -> None:
    vip = f"{PREFIX4}.51/24"
    owner = agent(lan, lan.n1, vip, label=f"{lan.n1.dev}:fl", arp_refresh=0.1)
    assert await owner.start() is OcfResult.SUCCESS
    assert await owner.start() is OcfResult.SUCCESS
    assert addresses(lan.n1).count(vip) == 1
    labels = json.loads(lan.n1.ns.ip("-j", "addr", "show", "dev", lan.n1.dev))[0]["addr_info"]
    assert any(a.get("label") == f"{lan.n1.dev}:fl" for a in labels)

    # the client learnt n1's MAC; someone else then claims the address (a stale owner):
    seed_stale(lan.client, f"{PREFIX4}.51")
    assert await owner.announce() is OcfResult.SUCCESS
    await wait_for_mac(lan.client, f"{PREFIX4}.51", lan.n1.mac)
    sent = owner.announcements
    await asyncio.sleep(0.5)
    assert owner.announcements > sent  # the periodic refresh keeps announcing
    assert await owner.stop() is OcfResult.SUCCESS
    stopped_at = owner.announcements
    await asyncio.sleep(0.3)
    assert owner.announcements == stopped_at  # and stops with the resource
    assert await owner.announce() is OcfResult.NOT_RUNNING


async def test_missing_interface_and_down_link(lan: Lan) -> None:
    ghost = IpAddr({"address": f"{PREFIX4}.52/24", "interface": "nosuch0", "netns": lan.n1.ns.name})
    assert await ghost.start() is OcfResult.ERR_INSTALLED
    assert "nosuch0" in ghost.reason
    assert await ghost.stop() is OcfResult.SUCCESS
    assert await ghost.monitor() is OcfResult.NOT_RUNNING

    owner = agent(lan, lan.n1, f"{PREFIX4}.52/24")
    assert await owner.start() is OcfResult.SUCCESS
    lan.n1.ns.ip("link", "set", lan.n1.dev, "down")
    assert await owner.monitor() is OcfResult.ERR_GENERIC
    assert "down" in owner.reason
    assert await owner.stop() is OcfResult.SUCCESS


async def test_missing_namespace_is_an_error_not_an_exception() -> None:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    lost = IpAddr({"address": "10.213.60.53/24", "interface": "eth0", "netns": "wf-no-such-ns"})
    assert await lost.start() is OcfResult.ERR_GENERIC
    assert "wf-no-such-ns" in lost.reason or "No such file" in lost.reason


async def test_without_announcements_the_client_keeps_the_old_mac(lan: Lan) -> None:
    """The control: with ``arp_count = 0`` nothing corrects the client's stale entry."""
    seed_stale(lan.client, f"{PREFIX4}.54")
    silent = agent(lan, lan.n1, f"{PREFIX4}.54/24", arp_count=0)
    assert await silent.start() is OcfResult.SUCCESS
    await asyncio.sleep(1.0)
    assert neighbour(lan.client, f"{PREFIX4}.54")[0] == STALE_MAC
    assert silent.announcements == 0
    assert await silent.stop() is OcfResult.SUCCESS


TAKE_OVER = """
import asyncio, sys
from farmnode.agents import IpAddr, OcfResult
async def main() -> None:
    agent = IpAddr({"address": sys.argv[1], "interface": sys.argv[2], "arp_count": 3,
                    "arp_interval": 0.05, "arp_repeat_after": 0})
    results = [await agent.start(), await agent.monitor()]
    for _ in range(100):  # the burst ends within 0.1 s; wait at most 5 s for it
        if agent.announcements >= 6:
            break
        await asyncio.sleep(0.05)
    await agent.close()  # frees the socket, keeps the address
    print(*(int(r) for r in results), agent.announcements)
asyncio.run(main())
"""


async def test_in_a_process_inside_the_namespace(lan: Lan) -> None:
    """The production path: no ``netns`` parameter, the daemon itself runs in the node."""
    vip = f"{PREFIX4}.55/24"
    seed_stale(lan.client, f"{PREFIX4}.55")
    argv = [sys.executable, "-W", "error", "-X", "dev", "-c", TAKE_OVER, vip, lan.n2.dev]
    done = subprocess.run(
        lan.n2.ns.exec_argv(argv), capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")  # no error, no unclosed socket
    assert done.stdout.split() == ["0", "0", "6"]  # start, monitor, 3 announcements of 2 packets
    assert vip in addresses(lan.n2)
    await wait_for_mac(lan.client, f"{PREFIX4}.55", lan.n2.mac)


@pytest.mark.parametrize("mode", ["request", "reply"])
async def test_either_opcode_alone_updates_the_client(lan: Lan, mode: str) -> None:
    seed_stale(lan.client, f"{PREFIX4}.56")
    owner = agent(lan, lan.n1, f"{PREFIX4}.56/24", arp_mode=mode)
    assert await owner.start() is OcfResult.SUCCESS
    await wait_for_mac(lan.client, f"{PREFIX4}.56", lan.n1.mac)
    deadline = time.monotonic() + 5
    while owner.announcements < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert owner.announcements == 3  # one packet per announcement in a single mode
    assert await owner.stop() is OcfResult.SUCCESS


REFUSED = """
import asyncio, sys
from farmnode.agents import Action, IpAddr, run_action
async def main() -> None:
    agent = IpAddr({"address": sys.argv[1], "interface": sys.argv[2]})
    for action in (Action.START, Action.STOP):
        outcome = await run_action(agent, action)
        print(int(outcome.result), outcome.reason)
asyncio.run(main())
"""


async def test_without_privilege_start_is_err_perm(lan: Lan) -> None:
    """Netlink refusals are results, not exceptions: no capabilities, ``ERR_PERM`` (4)."""
    if shutil.which("setpriv") is None:
        skip_or_fail("setpriv (util-linux) is missing")
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    argv = [*drop, sys.executable, "-W", "error", "-c", REFUSED, f"{PREFIX4}.57/24", lan.n1.dev]
    lines = lan.n1.ns.run(*argv, timeout=30).splitlines()
    assert lines[0].startswith(f"4 cannot add {PREFIX4}.57/24: ")
    assert lines[1] == "0 "  # not held here: stopped, whatever the privileges
    assert f"{PREFIX4}.57/24" not in addresses(lan.n1)
