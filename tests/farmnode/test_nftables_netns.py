"""The nftables plane for real: a client, a switch and real servers in network namespaces.

Topology (built once for the module, removed afterwards, also on failure)::

    client ns 10.213.0.2-9 --veth-- switch ns 10.213.0.1, VIP 10.213.0.10
                                    br0 10.213.1.1/24 --veth-- r0 10.213.1.2 (+ fallback :8081)
                                                      --veth-- r1 10.213.1.3
                                                      --veth-- r2 10.213.1.4
                                                      --veth-- lonely 10.213.1.5 (no route back)

The real servers r0-r2 route to the clients through the switch (LVS-NAT); ``lonely`` has
no route back, so only the SNAT option reaches it. Each real server answers HTTP/1.1
(keep-alive) and UDP with its id. The servers run in this process, on sockets made inside
their namespaces; the plane runs ``nft`` in the switch namespace (``netns=``).

Needs root: without it every test skips with the reason (under CI=true that is a failure).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from farmnode.dataplane.nftables import Nft, NftablesPlane, prune_table, remove_table
from farmnode.dataplane.ruleset import (
    KERNEL_SCHEDULERS,
    NftOptions,
    chains,
    count_flows,
    render,
)
from farmnode.errors import DataplaneError
from farmnode.spec import (
    STATELESS_SCHEDULERS,
    CheckSpec,
    NatMode,
    Protocol,
    RealSpec,
    ServiceSpec,
)
from farmnode.switch.schedulers import RealServer
from farmnode.switch.service import VirtualService
from tests.conftest import skip_or_fail
from tests.farmnode.netns import (
    NETNS_DIR,
    Lab,
    Namespace,
    lab_address,
    sweep_stale,
    unavailable_reason,
)

pytestmark = pytest.mark.anyio

VIP = "10.213.0.10"
REALS = ("10.213.1.2", "10.213.1.3", "10.213.1.4")
IDS = ("r0", "r1", "r2")
LONELY = "10.213.1.5"
CLIENTS = tuple(f"10.213.0.{i}" for i in range(2, 10))
HTTP_PORT = 8080
FALLBACK_PORT = 8081
UDP_PORT = 5353


class IdentHandler(BaseHTTPRequestHandler):
    """Answers every GET with the server's id; keeps the connection open (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    timeout = 20

    def do_GET(self) -> None:
        body = self.server.ident.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class IdentHttp(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, ident: str) -> None:
        super().__init__(sock.getsockname(), IdentHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.ident = ident


def serve_udp(sock: socket.socket, ident: str) -> None:
    """Answer each datagram with ``ident`` until the socket is closed."""
    while True:
        try:
            _, peer = sock.recvfrom(2048)
            sock.sendto(ident.encode(), peer)
        except OSError:
            return


@dataclass
class Topology:
    lab: Lab
    client: Namespace
    switch: Namespace
    https: list[IdentHttp] = field(default_factory=list)
    udps: list[socket.socket] = field(default_factory=list)

    def nft(self, *args: str) -> str:
        return self.switch.run("nft", *args)


def start_http(ns: Namespace, host: str, port: int, ident: str, topo: Topology) -> None:
    server = IdentHttp(ns.listen((host, port)), ident)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    topo.https.append(server)


def build(lab: Lab) -> Topology:
    client, switch = lab.namespace("client"), lab.namespace("switch")
    lab.link(client, f"{CLIENTS[0]}/24", switch, "10.213.0.1/24")
    for address in CLIENTS[1:]:
        client.add_address("v-switch", f"{address}/24")
    switch.add_address("v-client", f"{VIP}/32")
    switch.sysctl("net.ipv4.ip_forward", "1")
    lab.bridge(switch, "br0", "10.213.1.1/24")
    topo = Topology(lab, client, switch)
    for ident, host in [*zip(IDS, REALS, strict=True), ("lonely", LONELY)]:
        real = lab.namespace(ident)
        lab.attach(real, f"{host}/24", switch)
        if ident != "lonely":
            real.route("default", "10.213.1.1")
        start_http(real, host, HTTP_PORT, ident, topo)
        udp = real.listen((host, UDP_PORT), socket.SOCK_DGRAM)
        threading.Thread(target=serve_udp, args=(udp, ident), daemon=True).start()
        topo.udps.append(udp)
        if ident == "r0":
            start_http(real, host, FALLBACK_PORT, "fallback", topo)
    return topo


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    reason = unavailable_reason()
    if reason is None and shutil.which("nft") is None:
        reason = "the nft binary is missing (apt-get install nftables)"
    if reason is not None:
        skip_or_fail(reason)
    with Lab() as lab:
        topology = build(lab)
        try:
            yield topology
        finally:
            for server in topology.https:
                server.shutdown()
                server.server_close()
            for udp in topology.udps:
                udp.close()


def service(
    name: str,
    port: int,
    scheduler: str = "rr",
    *,
    protocol: Protocol = "tcp",
    reals: tuple[str, ...] = REALS,
    fallback: RealSpec | None = None,
    nat: NatMode = "stateful",
) -> VirtualService:
    real_port = UDP_PORT if protocol == "udp" else HTTP_PORT
    spec = ServiceSpec(
        name=name,
        protocol=protocol,
        host=VIP,
        port=port,
        scheduler=scheduler,
        real=tuple(RealSpec(host, real_port) for host in reals),
        fallback=fallback,
        check=CheckSpec(kind="none"),
        dataplane="nftables",
        nat=nat,
    )
    return VirtualService(spec)


@pytest.fixture
async def planes(topo: Topology) -> AsyncIterator[list[NftablesPlane]]:
    """Planes a test starts; every one is stopped afterwards, whatever happened."""
    started: list[NftablesPlane] = []
    try:
        yield started
    finally:
        for plane in started:
            await plane.stop()


async def start(
    topo: Topology, planes: list[NftablesPlane], vs: VirtualService, *, snat: bool = False
) -> NftablesPlane:
    plane = NftablesPlane(vs.spec, vs, netns=topo.switch.name, options=NftOptions(snat=snat))
    planes.append(plane)
    await plane.start()
    return plane


class Client:
    """One HTTP/1.1 connection from the client namespace, reused for every request."""

    def __init__(self, ns: Namespace, port: int, source: str = CLIENTS[0]) -> None:
        self.conn = http.client.HTTPConnection(VIP, port, timeout=5)
        sock = ns.new_socket()
        try:
            sock.settimeout(5)
            sock.bind((source, 0))
            sock.connect((VIP, port))
        except BaseException:
            sock.close()
            raise
        self.conn.sock = sock

    def ident(self) -> str:
        self.conn.request("GET", "/")
        response = self.conn.getresponse()
        return response.read().decode()

    def close(self) -> None:
        self.conn.close()


def fetch(topo: Topology, port: int, source: str = CLIENTS[0]) -> str:
    """The id of the server that a new connection to VIP:port reaches."""
    client = Client(topo.client, port, source)
    try:
        return client.ident()
    finally:
        client.close()


def udp_socket(topo: Topology) -> socket.socket:
    sock = topo.client.new_socket(socket.SOCK_DGRAM)
    sock.settimeout(3)
    return sock


def udp_ask(sock: socket.socket, port: int) -> str:
    sock.sendto(b"who", (VIP, port))
    data, _ = sock.recvfrom(2048)
    return data.decode()


def tables(topo: Topology) -> list[str]:
    return topo.nft("list", "tables").splitlines()


# -- the rendered text is what nft 1.0.6 accepts ----------------------------------------------


@pytest.mark.parametrize("scheduler", KERNEL_SCHEDULERS)
@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_rendered_rules_are_accepted_by_nft(
    topo: Topology, scheduler: str, protocol: Protocol
) -> None:
    spec = service("check", 1, scheduler, protocol=protocol).spec
    servers = [RealServer(host, 80, weight) for host, weight in zip(REALS, (1, 2, 3), strict=True)]
    for eligible in (servers, servers[:1], []):
        for snat in (False, True):
            text = render([(spec, eligible)], NftOptions(snat=snat))
            checked = subprocess.run(
                topo.switch.exec_argv(["nft", "-c", "-f", "-"]),
                input=text,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert checked.returncode == 0, f"{text}\n{checked.stderr}"
    if scheduler in STATELESS_SCHEDULERS:
        spec = replace(spec, nat="stateless", fallback=RealSpec(REALS[0], FALLBACK_PORT))
        for eligible in (servers, servers[:1], []):
            text = render([(spec, eligible)])
            checked = subprocess.run(
                topo.switch.exec_argv(["nft", "-c", "-f", "-"]),
                input=text,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert checked.returncode == 0, f"{text}\n{checked.stderr}"


@pytest.mark.parametrize(
    "name", ["fwd", "map", "ip", "table", "counter", "web.v2", "a-b_c", "1st", "with space", "é"]
)
def test_service_names_that_are_nft_keywords_or_odd_still_load(topo: Topology, name: str) -> None:
    spec = service(name, 1).spec
    text = render([(spec, [RealServer(REALS[0], 80)])], NftOptions(snat=True))
    checked = subprocess.run(
        topo.switch.exec_argv(["nft", "-c", "-f", "-"]),
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, f"{text}\n{checked.stderr}"


# -- scheduling ---------------------------------------------------------------------------------


async def test_rr_spreads_over_every_server_and_stop_removes_the_table(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    plane = await start(topo, planes, service("spread", 80))
    seen = [fetch(topo, 80) for _ in range(6)]
    assert sorted(seen) == sorted(IDS * 2)
    assert tables(topo) == ["table ip farmnode"]
    await plane.stop()
    assert tables(topo) == []
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the VIP itself
        fetch(topo, 80)


async def test_wrr_follows_the_weights(topo: Topology, planes: list[NftablesPlane]) -> None:
    vs = service("weighted", 81, "wrr")
    weights = zip(vs.spec.real, (3, 1, 0), strict=True)
    vs.reload(replace(vs.spec, real=tuple(RealSpec(r.host, r.port, w) for r, w in weights)))
    await start(topo, planes, vs)
    seen = [fetch(topo, 81) for _ in range(8)]
    assert seen.count("r0") == 6
    assert seen.count("r1") == 2
    assert "r2" not in seen  # weight 0: quiescent, no new connections


@pytest.mark.parametrize("scheduler", ["sh", "mh"])
async def test_hash_schedulers_keep_each_client_on_one_server(
    topo: Topology, planes: list[NftablesPlane], scheduler: str
) -> None:
    port = 82 if scheduler == "sh" else 83
    plane = await start(topo, planes, service(f"hash-{scheduler}", port, scheduler))
    first = {source: fetch(topo, port, source) for source in CLIENTS}
    for _ in range(2):
        assert {source: fetch(topo, port, source) for source in CLIENTS} == first
    assert len(set(first.values())) > 1, first  # eight clients do not all hash alike
    await plane.refresh()  # the same membership re-rendered: the fixed seed keeps the map
    assert {source: fetch(topo, port, source) for source in CLIENTS} == first


# -- health, drain, fallback ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["down", "drained"])
async def test_a_failed_or_drained_server_gets_no_new_connections_but_keeps_its_own(
    topo: Topology, planes: list[NftablesPlane], how: str
) -> None:
    port = 84 if how == "down" else 85
    vs = service(f"leave-{how}", port)
    plane = await start(topo, planes, vs)
    kept = Client(topo.client, port)
    try:
        victim = kept.ident()
        key = vs.spec.real[IDS.index(victim)].key
        if how == "down":
            assert vs.set_health(key, False)
        else:
            assert vs.set_agent_weight(key, 0)
        await plane.refresh()
        fresh = [fetch(topo, port) for _ in range(6)]
        assert victim not in fresh
        assert set(fresh) == set(IDS) - {victim}
        for _ in range(3):  # the established connection still reaches its server
            assert kept.ident() == victim
    finally:
        kept.close()


async def test_established_connections_survive_when_every_server_is_drained(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    vs = service("all-drained", 94)
    plane = await start(topo, planes, vs)
    kept = Client(topo.client, 94)
    try:
        server = kept.ident()
        for real in vs.spec.real:
            vs.set_agent_weight(real.key, 0)
        await plane.refresh()
        assert vs.eligible() == []
        with pytest.raises(ConnectionRefusedError):
            fetch(topo, 94)
        assert kept.ident() == server
    finally:
        kept.close()


async def test_fallback_answers_only_while_every_server_is_down(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    vs = service("sorry", 86, fallback=RealSpec(REALS[0], FALLBACK_PORT))
    plane = await start(topo, planes, vs)
    for real in vs.spec.real:
        vs.set_health(real.key, False)
    await plane.refresh()
    assert {fetch(topo, 86) for _ in range(3)} == {"fallback"}
    vs.set_health(vs.spec.real[1].key, True)
    await plane.refresh()
    assert {fetch(topo, 86) for _ in range(3)} == {"r1"}


async def test_no_eligible_server_refuses_at_once(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    tcp, udp = service("none-tcp", 87), service("none-udp", 87, protocol="udp")
    for vs in (tcp, udp):
        plane = await start(topo, planes, vs)
        for real in vs.spec.real:
            vs.set_health(real.key, False)
        await plane.refresh()
    with pytest.raises(ConnectionRefusedError):  # reject with tcp reset
        fetch(topo, 87)
    sock = udp_socket(topo)
    try:
        sock.connect((VIP, 87))  # a connected UDP socket reports the ICMP port unreachable
        sock.send(b"who")
        with pytest.raises(ConnectionRefusedError):
            sock.recv(2048)
    finally:
        sock.close()


# -- UDP ------------------------------------------------------------------------------------------


async def test_udp_flows_stick_and_new_flows_rotate(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    await start(topo, planes, service("echo", 53, protocol="udp"))
    flows = [udp_socket(topo) for _ in range(3)]
    try:
        first = [udp_ask(sock, 53) for sock in flows]
        assert sorted(first) == sorted(IDS)
        for _ in range(2):  # every datagram of a flow goes where its first one went
            assert [udp_ask(sock, 53) for sock in flows] == first
    finally:
        for sock in flows:
            sock.close()


# -- life cycle -----------------------------------------------------------------------------------


async def test_restart_replaces_the_rules_instead_of_adding_to_them(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    vs = service("again", 88)
    crashed = NftablesPlane(vs.spec, vs, netns=topo.switch.name)
    await crashed.start()  # and never stopped, as after a crash
    kept = Client(topo.client, 88)
    try:
        server = kept.ident()
        restarted = await start(topo, planes, vs)
        assert kept.ident() == server  # the restart did not cut the crashed run's connection
    finally:
        kept.close()
    listing = await restarted.listing()
    assert tables(topo) == ["table ip farmnode"]
    assert listing.count("chain again-prerouting {") == 1
    assert listing.count("dnat ip to") == 2  # one rule in prerouting, one in output
    assert sorted(fetch(topo, 88) for _ in range(3)) == sorted(IDS)
    await restarted.stop()
    await restarted.stop()  # twice is harmless
    assert tables(topo) == []


async def test_services_share_the_table_until_the_last_one_stops(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    one = await start(topo, planes, service("one", 89))
    two = await start(topo, planes, service("two", 90, "mh"))
    await one.stop()
    assert tables(topo) == ["table ip farmnode"]
    assert "one-" not in await two.listing()
    assert fetch(topo, 90) in IDS
    await two.stop()
    assert tables(topo) == []


async def test_stop_with_drain_refuses_new_connections_and_waits_for_open_ones(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    plane = await start(topo, planes, service("drain", 91))
    kept = Client(topo.client, 91)
    try:
        server = kept.ident()
        stopping = asyncio.create_task(plane.stop(drain=20.0))
        await asyncio.sleep(0.5)
        assert not stopping.done()
        with pytest.raises(ConnectionRefusedError):
            fetch(topo, 91)
        assert kept.ident() == server
    finally:
        kept.close()
    await asyncio.wait_for(stopping, timeout=15.0)  # returns once the connection is closed
    assert tables(topo) == []


async def test_snat_reaches_a_real_server_without_a_route_back(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    await start(topo, planes, service("masq", 92, reals=(LONELY,)), snat=True)
    assert fetch(topo, 92) == "lonely"


async def test_nft_errors_are_dataplane_errors(topo: Topology) -> None:
    vs = service("broken", 93)
    plane = NftablesPlane(vs.spec, vs, netns=topo.switch.name, nft="/bin/false")
    with pytest.raises(DataplaneError, match="nftables data plane: service 'broken'"):
        await plane.start()
    assert tables(topo) == []


async def test_a_conflicting_leftover_is_reported_and_remove_table_clears_it(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    topo.switch.run("nft", "add", "table", "ip", "farmnode")
    topo.switch.run(  # a chain by the service's name, but of another kind
        "nft", "add chain ip farmnode odd-prerouting { type filter hook prerouting priority 0; }"
    )
    vs = service("odd", 95)
    with pytest.raises(DataplaneError, match=r"service 'odd': .*nft -f - failed: .*Error"):
        await start(topo, planes, vs)
    remove_table(nft=Nft(netns=topo.switch.name))
    assert tables(topo) == []
    await planes[-1].start()
    assert fetch(topo, 95) in IDS


# -- the lab itself -------------------------------------------------------------------------------


def test_lab_addresses_must_lie_in_the_lab_network() -> None:
    assert str(lab_address("10.213.7.1/24")) == "10.213.7.1/24"
    for outside in ("10.0.0.1/24", "192.168.1.1", "127.0.0.1/8"):
        with pytest.raises(ValueError, match=r"10\.213\.0\.0/16"):
            lab_address(outside)


def test_a_lab_removes_its_namespaces_and_processes_also_after_a_failure(topo: Topology) -> None:
    made: list[tuple[Namespace, subprocess.Popen[str]]] = []

    def failing_test() -> None:
        with Lab() as lab:
            ns = lab.namespace("doomed")
            made.append((ns, ns.popen(["sleep", "60"])))
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        failing_test()
    [(ns, sleeper)] = made
    assert not os.path.exists(f"{NETNS_DIR}/{ns.name}")
    assert sleeper.poll() is not None


def test_namespaces_of_a_dead_run_are_swept(topo: Topology) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"wf{gone.pid}x1-stale"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in sweep_stale()
    assert not os.path.exists(f"{NETNS_DIR}/{stale}")


async def test_prune_removes_dropped_services_and_keeps_the_rest_switching(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    kept_vs, dropped_vs = service("stays", 96), service("dropped", 97)
    dropped = NftablesPlane(dropped_vs.spec, dropped_vs, netns=topo.switch.name)
    await dropped.start()  # a crashed run's service that the new configuration lacks
    await start(topo, planes, kept_vs)
    kept = Client(topo.client, 96)
    try:
        server = kept.ident()
        pruned = prune_table([kept_vs.spec], nft=Nft(netns=topo.switch.name))
        assert sorted(pruned) == sorted(chains(dropped_vs.spec)[:3])
        assert kept.ident() == server
    finally:
        kept.close()
    with pytest.raises(ConnectionRefusedError):
        fetch(topo, 97)
    assert fetch(topo, 96) in IDS


# -- stateless NAT ---------------------------------------------------------------------------------


def conntrack_flows(topo: Topology, spec: ServiceSpec) -> int:
    return count_flows(topo.switch.run("cat", "/proc/net/nf_conntrack"), spec)


@pytest.mark.parametrize("scheduler", ["sh", "mh"])
async def test_stateless_nat_switches_without_conntrack(
    topo: Topology, planes: list[NftablesPlane], scheduler: str
) -> None:
    """Every packet is rewritten both ways: clients stick to their server by address, a
    keep-alive connection carries several requests, and the switch keeps no flow at all."""
    port = 91 if scheduler == "sh" else 92
    vs = service(f"sl-{scheduler}", port, scheduler, nat="stateless")
    await start(topo, planes, vs)
    first = {source: fetch(topo, port, source) for source in CLIENTS}
    assert len(set(first.values())) > 1, first
    assert {source: fetch(topo, port, source) for source in CLIENTS} == first
    client = Client(topo.client, port, CLIENTS[0])
    try:
        assert [client.ident() for _ in range(5)] == [first[CLIENTS[0]]] * 5
        assert client.conn.sock.getpeername() == (VIP, port)  # replies came from VIP:port
        assert conntrack_flows(topo, vs.spec) == 0  # notrack: no entry for any of them
    finally:
        client.close()
    assert fetch_from_switch(topo, REALS[1]) == "r1"  # the switch's own checks still work


def fetch_from_switch(topo: Topology, host: str) -> str:
    """What a connection from the switch itself to a real server reads (a health check)."""
    sock = topo.switch.connect((host, HTTP_PORT))
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    finally:
        sock.close()
    return data.rpartition(b"\r\n\r\n")[2].decode()


async def test_stateless_udp_answers_come_from_the_vip(
    topo: Topology, planes: list[NftablesPlane]
) -> None:
    vs = service("sl-udp", 93, "mh", protocol="udp", nat="stateless")
    await start(topo, planes, vs)
    sock = udp_socket(topo)
    try:
        sock.sendto(b"who", (VIP, 93))
        data, source = sock.recvfrom(2048)
        assert source == (VIP, 93)
        assert data.decode() in IDS
    finally:
        sock.close()


async def test_stateless_fallback_and_refusal(topo: Topology, planes: list[NftablesPlane]) -> None:
    vs = service("sl-sorry", 94, "mh", nat="stateless", fallback=RealSpec(REALS[0], FALLBACK_PORT))
    plane = await start(topo, planes, vs)
    for real in vs.spec.real:
        vs.set_health(real.key, False)
    await plane.refresh()
    assert {fetch(topo, 94) for _ in range(3)} == {"fallback"}
    bare = service("sl-none", 95, "sh", nat="stateless")
    plane = await start(topo, planes, bare)
    for real in bare.spec.real:
        bare.set_health(real.key, False)
    await plane.refresh()
    with pytest.raises(ConnectionRefusedError):
        fetch(topo, 95)


def test_stateless_nat_refuses_what_it_cannot_do() -> None:
    rr = service("sl-rr", 96, "rr", nat="stateless")
    with pytest.raises(DataplaneError, match="picks by client address"):
        NftablesPlane(rr.spec, rr)
    sh = service("sl-snat", 97, "sh", nat="stateless")
    with pytest.raises(DataplaneError, match="masquerade"):
        NftablesPlane(sh.spec, sh, options=NftOptions(snat=True))
