"""The cluster for real: ``farmnode serve`` processes in network namespaces move a floating
address and the switch service behind it.

Topology (built per test, removed afterwards, also on failure)::

    lan ns: bridge br0
      +-- n1      10.213.70.11/24   farmnode, priority 150
      +-- n2      10.213.70.12/24   farmnode, priority 100
      +-- w       10.213.70.13/24   farmnode, role = "witness"
      +-- client  10.213.70.2/24

Heartbeats: UDP unicast on the LAN (interval 0.2 s, deadtime 1.0 s, initdead 2.0 s). One
group ``front``: the floating address 10.213.70.50/24 (``ipaddr`` on the node's LAN
interface) and then the ``switch`` service ``web`` listening on 10.213.70.50:8080, whose
real server is a small listener on 127.0.0.1:9000 inside each node's namespace that answers
with the node's name. So a client that reads ``n2`` from 10.213.70.50:8080 went through n2's
switch, which only the owner of ``front`` opens.

Takeover times are printed (run with ``-s``), not asserted: the machine is shared. Needs
root: without it the test skips with the reason (under CI=true that is a failure).

The same wiring without root: two :class:`~farmnode.daemon.Node` objects in this process,
heartbeats over UDP on loopback, a group holding only the ``switch`` service (each node's
service on its own loopback port), through a clean stop, a crash (the runtime abandoned)
and a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from farmnode.agents import Action, AgentParamError, OcfResult, SwitchAgent
from farmnode.config import parse_config
from farmnode.daemon import Node, Timeouts
from farmnode.errors import FarmnodeError
from farmnode.groups import cluster_groups, deferred_services
from farmnode.status import render_text
from tests.conftest import skip_or_fail
from tests.farmnode.netns import Lab, Namespace, unavailable_reason

PREFIX = "10.213.70"
VIP = f"{PREFIX}.50"
SERVICE_PORT = 8080
REAL_PORT = 9000
HB_PORT = 6940
INTERVAL, DEADTIME, INITDEAD = 0.2, 1.0, 2.0
POLL = 0.05
WAIT = 15.0  # generous bound of every wait in this file
FARMNODE = str(Path(sys.executable).parent / "farmnode")
HOSTS = {"n1": 11, "n2": 12, "w": 13}
PRIORITY = {"n1": 150, "n2": 100}


@dataclass
class Member:
    """One node of the lab: its namespace, LAN device, MAC, config and farmnode process."""

    name: str
    ns: Namespace
    dev: str
    mac: str
    config: Path
    log: Path
    process: subprocess.Popen[str] | None = None
    logs: list[IO[str]] = field(default_factory=list)


def _mac(ns: Namespace, dev: str) -> str:
    return str(json.loads(ns.ip("-j", "link", "show", "dev", dev))[0]["address"])


def _config(name: str, dev: str) -> str:
    peers = "".join(
        f'[[cluster.peers]]\nname = "{peer}"\naddresses = ["{PREFIX}.{host}:{HB_PORT}"]\n'
        for peer, host in HOSTS.items()
        if peer != name
    )
    cluster = f"""
[cluster]
name = "lab"
key = "lab-cluster-key-0123456789"
interval = {INTERVAL}
deadtime = {DEADTIME}
initdead = {INITDEAD}
{"role = " + '"witness"' if name == "w" else f"priority = {PRIORITY[name]}"}
[[cluster.transports]]
kind = "udp"
bind = "{PREFIX}.{HOSTS[name]}:{HB_PORT}"
{peers}"""
    head = f'[node]\nname = "{name}"\nstatus_listen = "127.0.0.1:9100"\n'
    if name == "w":
        return head + cluster
    service = f"""
[[services]]
name = "web"
protocol = "tcp"
listen = "{VIP}:{SERVICE_PORT}"
check = {{ kind = "none" }}
[[services.real]]
address = "127.0.0.1:{REAL_PORT}"
"""
    groups = f"""
[[groups]]
name = "front"
[[groups.resources]]
agent = "ipaddr"
address = "{VIP}/24"
interface = "{dev}"
[[groups.resources]]
agent = "switch"
service = "web"
monitor_interval = 1.0
"""
    return head + service + cluster + groups


class Responder:
    """The real server in a node's namespace: each connection gets the node's name, then EOF.

    ``address`` defaults to the switch service's real server (127.0.0.1:REAL_PORT).
    """

    def __init__(
        self, ns: Namespace, name: str, address: tuple[str, int] = ("127.0.0.1", REAL_PORT)
    ) -> None:
        self.sock = ns.listen(address)
        self.sock.settimeout(0.1)
        self.name = name.encode()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"real-{name}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.name)

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.sock.close()


@dataclass
class ClusterLab:
    lab: Lab
    client: Namespace
    members: dict[str, Member]
    tmp: Path

    def start(self, name: str) -> None:
        member = self.members[name]
        out = member.log.open("a")
        member.logs.append(out)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FARMNODE_") and k != "FARM_CLUSTER_KEY"
        }
        member.process = member.ns.popen(
            [FARMNODE, "serve", "--config", str(member.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def holders(self) -> set[str]:
        """The nodes whose LAN interface holds the floating address now."""
        held = set()
        for name, member in self.members.items():
            info = json.loads(member.ns.ip("-j", "addr", "show", "dev", member.dev))
            if any(a.get("local") == VIP for a in info[0]["addr_info"]):
                held.add(name)
        return held

    def ask(self, timeout: float = 0.2) -> bytes | None:
        """The name of the node whose switch answered on VIP:8080, or ``None``."""
        try:
            with self.client.connect((VIP, SERVICE_PORT), timeout=timeout) as sock:
                return sock.recv(16) or None
        except OSError:
            return None

    def neighbour(self) -> str | None:
        entries = json.loads(self.client.ip("-j", "neigh", "show", VIP))
        return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None

    def status(self, name: str, *, text: bool = False) -> Any:
        member = self.members[name]
        argv = [FARMNODE, "status", "--config", str(member.config)]
        out = member.ns.run(*argv, *([] if text else ["--json"]), timeout=WAIT)
        return out if text else json.loads(out)

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{m.log.read_text()[-3000:]}" for n, m in self.members.items())


def wait(what: str, ready: Callable[[], bool], lab: ClusterLab, timeout: float = WAIT) -> float:
    """Poll ``ready`` every POLL s; the seconds it took, or fail with the nodes' logs."""
    began = time.monotonic()
    while not ready():
        if time.monotonic() - began > timeout:
            pytest.fail(f"not within {timeout} s: {what}\n{lab.logs()}")
        time.sleep(POLL)
    return time.monotonic() - began


@pytest.fixture
def cluster_lab(tmp_path: Path) -> Iterator[ClusterLab]:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    responders: list[Responder] = []
    with Lab() as lab:
        lan = lab.namespace("lan")
        lab.bridge(lan)
        members = {}
        for name, host in HOSTS.items():
            ns = lab.namespace(name)
            dev = lab.attach(ns, f"{PREFIX}.{host}/24", lan)
            config = tmp_path / f"{name}.toml"
            config.write_text(_config(name, dev))
            members[name] = Member(name, ns, dev, _mac(ns, dev), config, tmp_path / f"{name}.log")
            if name != "w":
                responders.append(Responder(ns, name))
        client = lab.namespace("client")
        lab.attach(client, f"{PREFIX}.2/24", lan)
        built = ClusterLab(lab, client, members, tmp_path)
        try:
            yield built
        finally:
            lab.close()  # the farmnode processes first, while their namespaces exist
            for responder in responders:
                responder.close()
            for member in members.values():
                for out in member.logs:
                    out.close()


def test_one_owner_then_takeover_after_kill_9_and_after_a_clean_stop(
    cluster_lab: ClusterLab,
) -> None:
    lab = cluster_lab
    figures: dict[str, float] = {}

    # (a) start-up: exactly one owner within initdead (+ margin), never two.
    began = time.monotonic()
    for name in HOSTS:
        lab.start(name)
    seen: list[set[str]] = []

    def one_owner() -> bool:
        held = lab.holders()
        seen.append(held)
        assert len(held) <= 1, f"two owners at start-up: {held}\n{lab.logs()}"
        return len(held) == 1

    wait("one node holds the floating address", one_owner, lab)
    figures["start-up: first owner after launch (s)"] = time.monotonic() - began
    deadline = time.monotonic() + 1.0  # and it stays one: keep polling a while
    while time.monotonic() < deadline:
        one_owner()
        time.sleep(POLL)
    assert lab.holders() == {"n1"}  # the highest priority
    assert figures["start-up: first owner after launch (s)"] < INITDEAD + 8.0  # process start
    wait("the client reaches n1's switch", lambda: lab.ask() == b"n1", lab)
    assert lab.neighbour() == lab.members["n1"].mac

    standby = lab.status("n2")
    assert standby["cluster"]["groups"]["front"]["owner"] == "n1"
    assert standby["cluster"]["quorum"]["quorate"] is True
    [web] = standby["services"]
    assert (web["deferred"], web["running"]) == (True, False)  # closed on the standby
    assert set(standby["cluster"]["members"]) == {"n1", "w"}
    assert all(m["alive"] for m in standby["cluster"]["members"].values())
    text = lab.status("n1", text=True)
    assert "cluster lab: n1 (member, priority 150, active); quorum yes (3/3 voters seen)" in text
    assert "cluster: open (group owned here)" in text
    assert any(line.split()[:3] == ["front", "n1", "running"] for line in text.splitlines())

    # (b) kill -9 of the owner: n2 takes over; the client's neighbour entry moves to n2.
    owner = lab.members["n1"]
    assert owner.process is not None
    killed = time.monotonic()
    os.killpg(owner.process.pid, signal.SIGKILL)
    owner.process.wait(timeout=WAIT)
    wait("n2 holds the address", lambda: "n2" in lab.holders(), lab)
    figures["kill -9: standby holds the address (s)"] = time.monotonic() - killed
    wait("the client reaches n2's switch", lambda: lab.ask() == b"n2", lab)
    figures["kill -9: client's first connection on the standby (s)"] = time.monotonic() - killed
    assert lab.neighbour() == lab.members["n2"].mac  # gratuitous ARP updated the stale entry

    # n1 comes back: its start-up clears the address the crash left; n2 keeps the group.
    lab.start("n1")
    wait("n1 has released the stale address", lambda: lab.holders() == {"n2"}, lab)

    def n1_settled() -> bool:
        with contextlib.suppress(subprocess.SubprocessError, RuntimeError, ValueError):
            return bool(lab.status("n1")["cluster"]["state"] == "active")
        return False

    wait("n1 is an active candidate again", n1_settled, lab)
    time.sleep(6 * INTERVAL)  # its settle time (4 x interval) and a little more
    assert lab.holders() == {"n2"}  # auto_failback = false: no move back

    # (c) clean stop of the owner: n1 takes over, never two owners meanwhile.
    leaving = lab.members["n2"]
    assert leaving.process is not None
    stopped = time.monotonic()
    leaving.process.send_signal(signal.SIGTERM)

    def n1_took_over() -> bool:
        held = lab.holders()
        assert len(held) <= 1, f"two owners during a clean stop: {held}\n{lab.logs()}"
        return held == {"n1"}

    wait("n1 holds the address", n1_took_over, lab)
    figures["SIGTERM: standby holds the address (s)"] = time.monotonic() - stopped
    wait("the client reaches n1's switch", lambda: lab.ask() == b"n1", lab)
    figures["SIGTERM: client's first connection on the standby (s)"] = time.monotonic() - stopped
    assert leaving.process.wait(timeout=WAIT) == 0
    assert lab.neighbour() == lab.members["n1"].mac
    for what, seconds in figures.items():
        print(f"{what}: {seconds:.3f}")


# --- without root: two Node objects on loopback ----------------------------------------------


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loopback_config(name: str, peer: str, ports: dict[str, int], web: int, real: int) -> str:
    return f"""
[node]
name = "{name}"
status_listen = "127.0.0.1:0"
[[services]]
name = "web"
protocol = "tcp"
listen = "127.0.0.1:{web}"
check = {{ kind = "none" }}
[[services.real]]
address = "127.0.0.1:{real}"
[cluster]
name = "loop"
key = "loopback-cluster-key-0123"
priority = {PRIORITY[name]}
interval = 0.1
deadtime = 0.5
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:{ports[name]}"
[[cluster.peers]]
name = "{peer}"
addresses = ["127.0.0.1:{ports[peer]}"]
[[groups]]
name = "front"
[[groups.resources]]
agent = "switch"
service = "web"
monitor_interval = 0.5
"""


async def _answer_with(ident: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(ident)
    with contextlib.suppress(OSError):
        await w.drain()
    w.close()


async def _ask(port: int) -> bytes | None:
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await reader.read(16) or None
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None


async def _until(what: str, ready: Callable[[], bool]) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not ready():
                await asyncio.sleep(POLL)
    except TimeoutError:
        pytest.fail(f"not within {WAIT} s: {what}")


@contextlib.asynccontextmanager
async def _real_server(ident: bytes) -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: _answer_with(ident, r, w), "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


FAST = Timeouts(cycle=0.1, reload_drain=0.1, shutdown_drain=0.1, switch_drain=0.1)


@pytest.mark.anyio
async def test_only_the_owner_opens_the_switch_service() -> None:
    ports = {"n1": _udp_port(), "n2": _udp_port()}
    web = {"n1": _tcp_port(), "n2": _tcp_port()}
    async with _real_server(b"real") as real:
        configs = {
            name: parse_config(
                tomllib.loads(_loopback_config(name, peer, ports, web[name], real)),
                f"{name}.toml",
                environ={},
            )
            for name, peer in (("n1", "n2"), ("n2", "n1"))
        }
        n1, n2 = Node(configs["n1"], timeouts=FAST), Node(configs["n2"], timeouts=FAST)
        try:
            await asyncio.gather(n1.start(), n2.start())
            assert not n1.service_running("web")
            assert not n2.service_running("web")
            await _until("n1 opens web", lambda: n1.service_running("web"))
            assert await _ask(web["n1"]) == b"real"
            assert await _ask(web["n2"]) is None  # the standby's service stays closed
            assert not n2.service_running("web")
            doc = n2.status()
            assert doc["cluster"]["groups"]["front"]["owner"] == "n1"
            assert (doc["services"][0]["deferred"], doc["services"][0]["running"]) == (True, False)
            assert "standby (cluster): web" in n2.summary()
            text = render_text(doc)
            assert "WARNING two-node cluster without a witness" in text
            assert "cluster: closed (standby)" in text
            assert any(line.split()[:2] == ["front", "n1"] for line in text.splitlines())

            # a reload with the same file keeps the standby's service closed
            await n2.reload(configs["n2"])
            await asyncio.sleep(0.3)
            assert not n2.service_running("web")

            # clean stop of the owner: the standby opens its service
            await n1.stop()
            await _until("n2 opens web", lambda: n2.service_running("web"))
            assert await _ask(web["n2"]) == b"real"
            assert await _ask(web["n1"]) is None

            # n1 returns as standby; then n2 "crashes" (nothing released): n1 takes over
            n1 = Node(configs["n1"], timeouts=FAST)
            await n1.start()
            await asyncio.sleep(1.0)
            assert not n1.service_running("web")  # auto_failback = false
            assert n2.cluster is not None
            await n2.cluster.abandon()
            await _until("n1 opens web", lambda: n1.service_running("web"))
            assert await _ask(web["n1"]) == b"real"
        finally:
            await n1.stop()
            await n2.stop()


# --- the switch agent's contract, without a network -------------------------------------------


class _Controller:
    """A ServiceController over a set of open names; ``broken`` services fail to open."""

    def __init__(self, *broken: str) -> None:
        self.open: set[str] = set()
        self.broken = set(broken)

    async def start_service(self, name: str) -> None:
        if name in self.broken:
            raise FarmnodeError(f"cannot listen for {name}")
        self.open.add(name)

    async def stop_service(self, name: str) -> None:
        self.open.discard(name)

    def service_running(self, name: str) -> bool:
        return name in self.open


@pytest.mark.anyio
async def test_switch_agent_follows_the_ocf_contract() -> None:
    controller = _Controller("dns")
    web = SwitchAgent({"service": "web"}, name="sw", controller=controller)
    assert await web.monitor() is OcfResult.NOT_RUNNING
    assert await web.stop() is OcfResult.SUCCESS  # stopped already
    assert await web.start() is OcfResult.SUCCESS
    assert await web.start() is OcfResult.SUCCESS
    assert await web.monitor() is OcfResult.SUCCESS
    assert await web.stop() is OcfResult.SUCCESS
    assert controller.open == set()
    dns = SwitchAgent({"service": "dns"}, controller=controller)
    assert await dns.start() is OcfResult.ERR_GENERIC
    assert dns.reason == "service dns: cannot listen for dns"
    unbound = SwitchAgent({"service": "web"})
    assert await unbound.start() is OcfResult.ERR_CONFIGURED
    assert (await unbound.stop(), await unbound.monitor()) == (
        OcfResult.SUCCESS,
        OcfResult.NOT_RUNNING,
    )
    with pytest.raises(AgentParamError, match="port"):
        SwitchAgent({"service": "web", "port": 80})


def test_services_named_by_switch_resources_are_deferred() -> None:
    ports = {"n1": 1, "n2": 2}
    text = _loopback_config("n1", "n2", ports, 8080, 9000)
    config = parse_config(tomllib.loads(text), "n1.toml", environ={})
    assert deferred_services(config.cluster) == {"web"}
    assert deferred_services(None) == frozenset()
    assert config.cluster is not None
    [group] = cluster_groups(config.cluster, _Controller()).values()
    [agent] = group.agents
    assert isinstance(agent, SwitchAgent)
    assert (agent.service, agent.timeouts[Action.MONITOR]) == ("web", 0.5)
