"""``python -m bench.l4_nft``: the nftables plane against talking to the real server directly.

Three network namespaces (made here, removed afterwards; addresses in 10.213.0.0/16):
a client, a switch and one real server, the server routing back through the switch
(LVS-NAT)::

    client 10.213.0.2, .3 -- switch 10.213.0.1, VIP 10.213.0.10 -- br0 -- server 10.213.1.2

Both sides of the comparison cross the switch namespace; they differ only in the plane:

- **direct**: the client talks to 10.213.1.2; the switch only forwards (no table, so no
  conntrack either);
- **nftables**: the client talks to the VIP; :class:`NftablesPlane` (scheduler ``rr`` over
  the one server) DNATs the first packet, conntrack the rest;
- **stateless**: the client talks to a second VIP, 10.213.0.11, served by the plane's
  stateless NAT (``nat = "stateless"``, scheduler ``sh``): no conntrack, every packet
  rewritten on its way in and every reply on its way out.

Figures, per side, in rounds that alternate between the sides (the plane is started before
each nftables round and stopped after it): **connections/s** and p99 latency with wrk
(``-t1 -cN``, every request on a new connection: the short server of
:mod:`bench.l4_servers` answers and closes), and **bulk** throughput of one TCP stream (the
bulk server's sendfile loop, read by a client for the round's length). Ratio: nftables over
direct, per round, then the median of the rounds.

The client talks to the server directly from 10.213.0.2, to the VIP from 10.213.0.3 and to
the stateless VIP from 10.213.0.4: with one address, a port that one side left in TIME_WAIT
on the server would meet another side's SYN with unrelated sequence numbers and cost a 1 s
SYN retransmission (an artefact of mixing paths from one address, not a cost of the plane).
The switch's conntrack TIME_WAIT timeout is set to 1 s so that the connection-per-request
rounds do not fill the conntrack table (262,144 entries by default; 120 s each).

Needs root, ``ip``, ``nft`` and ``wrk``; without them it prints why and returns 0.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from farmnode.dataplane.nftables import NftablesPlane
from farmnode.spec import CheckSpec, RealSpec, ServiceSpec
from farmnode.switch.service import VirtualService
from tests.farmnode.netns import Lab, Namespace, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
VIP, STATELESS_VIP = "10.213.0.10", "10.213.0.11"
CLIENT_DIRECT, CLIENT_VIP, CLIENT_STATELESS = "10.213.0.2", "10.213.0.3", "10.213.0.4"
SERVER = "10.213.1.2"
BULK_PORT, SHORT_PORT, KEEP_PORT = 9000, 8080, 8081
VIP_BULK, VIP_SHORT, VIP_KEEP = 9000, 80, 81
KEEP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass(frozen=True)
class Round:
    connections_per_s: float
    p99_ms: float
    requests_per_s: float  # keep-alive
    keep_p99_ms: float
    bulk_gbit_s: float


class KeepAliveHttp(asyncio.Protocol):
    """Answers every request head with a 2-byte 200 and keeps the connection open."""

    __slots__ = ("buffer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")
        if heads and self.transport is not None:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(KEEP_RESPONSE * heads)


# -- the processes inside the namespaces -----------------------------------------------------


def serve(host: str, bulk_port: int, short_port: int, keep_port: int) -> int:
    """The real server: :mod:`bench.l4_servers`' bulk and short servers, bound to ``host``,
    and a keep-alive HTTP server."""
    import uvloop

    from bench import l4_servers

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        bulk = socket.create_server((host, bulk_port), backlog=4096)
        source = l4_servers.bulk_source()
        threading.Thread(target=l4_servers.serve_bulk, args=(bulk, source), daemon=True).start()
        short = socket.create_server((host, short_port), backlog=4096)
        server = await loop.create_server(l4_servers.ShortHttp, sock=short, backlog=4096)
        keep = socket.create_server((host, keep_port), backlog=4096)
        keeper = await loop.create_server(KeepAliveHttp, sock=keep, backlog=4096)
        print("ready", flush=True)
        await stop.wait()
        server.close()
        keeper.close()

    uvloop.run(run())
    return 0


def read(host: str, port: int, seconds: float) -> int:
    """The bulk client: read from ``host:port`` for ``seconds``; print bytes per second."""
    buffer = bytearray(1 << 20)
    with socket.create_connection((host, port), timeout=10) as sock:
        total = 0
        start = time.monotonic()
        deadline = start + seconds
        while time.monotonic() < deadline:
            n = sock.recv_into(buffer)
            if n == 0:
                break
            total += n
        elapsed = time.monotonic() - start
    print(f"{total / elapsed:.0f}", flush=True)
    return 0


# -- the lab -----------------------------------------------------------------------------------


@dataclass
class Bench:
    lab: Lab
    client: Namespace
    switch: Namespace
    server: Namespace


def build(lab: Lab) -> Bench:
    client, switch, server = (lab.namespace(r) for r in ("client", "switch", "server"))
    lab.link(client, f"{CLIENT_DIRECT}/24", switch, "10.213.0.1/24")
    client.add_address("v-switch", f"{CLIENT_VIP}/24")
    client.add_address("v-switch", f"{CLIENT_STATELESS}/24")
    client.ip("route", "add", "10.213.1.0/24", "via", "10.213.0.1", "src", CLIENT_DIRECT)
    client.ip("route", "add", f"{VIP}/32", "dev", "v-switch", "src", CLIENT_VIP)
    client.ip("route", "add", f"{STATELESS_VIP}/32", "dev", "v-switch", "src", CLIENT_STATELESS)
    switch.add_address("v-client", f"{VIP}/32")
    switch.add_address("v-client", f"{STATELESS_VIP}/32")
    switch.sysctl("net.ipv4.ip_forward", "1")
    lab.bridge(switch, "br0", "10.213.1.1/24")
    lab.attach(server, f"{SERVER}/24", switch)
    server.route("default", "10.213.1.1")
    process = server.popen(
        [sys.executable, "-m", "bench.l4_nft", "serve", SERVER]
        + [str(port) for port in (BULK_PORT, SHORT_PORT, KEEP_PORT)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("bench: the real server did not start")
    return Bench(lab, client, switch, server)


def services(*, stateless: bool = False) -> list[ServiceSpec]:
    """The three services (short, keep-alive, bulk) of one side: stateful ``rr`` on the VIP,
    or stateless ``sh`` on the second VIP. The two sides use the same real server ports, so
    they are never installed together (a stateless service owns its servers' replies)."""
    return [
        ServiceSpec(
            name=f"{name}-sl" if stateless else name,
            protocol="tcp",
            host=STATELESS_VIP if stateless else VIP,
            port=vip_port,
            scheduler="sh" if stateless else "rr",
            real=(RealSpec(SERVER, port),),
            check=CheckSpec(kind="none"),
            dataplane="nftables",
            nat="stateless" if stateless else "stateful",
        )
        for name, vip_port, port in (
            ("bench-short", VIP_SHORT, SHORT_PORT),
            ("bench-keep", VIP_KEEP, KEEP_PORT),
            ("bench-bulk", VIP_BULK, BULK_PORT),
        )
    ]


# -- measuring ---------------------------------------------------------------------------------


def wrk(bench: Bench, host: str, port: int, seconds: int, connections: int) -> tuple[float, float]:
    out = bench.client.run(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        f"http://{host}:{port}/",
        timeout=seconds + 30,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if rate is None or p99 is None:
        raise RuntimeError(f"bench: unexpected wrk output:\n{out}")
    if errors is not None:
        print(f"  wrk socket errors ({host}): {errors.group(1)}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return float(rate.group(1)), float(p99.group(1)) * scale


def bulk(bench: Bench, host: str, port: int, seconds: int) -> float:
    out = bench.client.run(
        sys.executable, "-m", "bench.l4_nft", "read", host, str(port), str(seconds),
        timeout=seconds + 30,
    )  # fmt: skip
    return float(out.strip()) * 8 / 1e9


def one_round(
    bench: Bench, host: str, ports: tuple[int, int, int], args: argparse.Namespace
) -> Round:
    rate, p99 = wrk(bench, host, ports[0], args.seconds, args.connections)
    requests, keep_p99 = wrk(bench, host, ports[1], args.seconds, args.connections)
    return Round(rate, p99, requests, keep_p99, bulk(bench, host, ports[2], args.seconds))


def measure(bench: Bench, args: argparse.Namespace) -> dict[str, list[Round]]:
    sides = {
        "nftables": (VIP, _planes(bench, services())),
        "stateless": (STATELESS_VIP, _planes(bench, services(stateless=True))),
    }
    results: dict[str, list[Round]] = {"direct": [], "nftables": [], "stateless": []}
    direct_ports, vip_ports = (SHORT_PORT, KEEP_PORT, BULK_PORT), (VIP_SHORT, VIP_KEEP, VIP_BULK)
    one_round(bench, SERVER, direct_ports, _warmup(args))
    for _ in range(args.rounds):
        results["direct"].append(one_round(bench, SERVER, direct_ports, args))
        for side, (vip, planes) in sides.items():
            for plane in planes:
                asyncio.run(plane.start())
            try:
                results[side].append(one_round(bench, vip, vip_ports, args))
            finally:
                for plane in planes:
                    asyncio.run(plane.stop())
    return results


def _planes(bench: Bench, specs: list[ServiceSpec]) -> list[NftablesPlane]:
    return [NftablesPlane(s, VirtualService(s), netns=bench.switch.name) for s in specs]


def _warmup(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(seconds=1, connections=args.connections)


# -- reporting ---------------------------------------------------------------------------------


FIGURES = (
    ("conn/s", "connections_per_s", "{:.0f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("keep-alive req/s", "requests_per_s", "{:.0f}"),
    ("p99 ms", "keep_p99_ms", "{:.2f}"),
    ("bulk Gbit/s", "bulk_gbit_s", "{:.2f}"),
)
RATIOS = (
    ("conn/s", "connections_per_s"),
    ("keep-alive req/s", "requests_per_s"),
    ("bulk", "bulk_gbit_s"),
)


def ratios(results: dict[str, list[Round]], attribute: str, side: str = "nftables") -> list[float]:
    """Per round: the ``side`` figure over the direct one of the same round."""
    pairs = zip(results["direct"], results[side], strict=True)
    return [getattr(n, attribute) / getattr(d, attribute) for d, n in pairs]


def report(results: dict[str, list[Round]], args: argparse.Namespace) -> None:
    print(
        f"\nlayer-4 switch, nftables plane vs direct (network namespaces): wrk -t1 "
        f"-c{args.connections} with a new connection per request, the same over keep-alive "
        f"connections, one bulk TCP stream; {args.rounds} rounds of {args.seconds}s per "
        "figure, medians:"
    )
    print(f"{'path':<10}" + "".join(f"{title:>18}" for title, _, _ in FIGURES))
    for name, rounds in results.items():
        cells = (
            fmt.format(statistics.median(getattr(r, attribute) for r in rounds))
            for _, attribute, fmt in FIGURES
        )
        print(f"{name:<10}" + "".join(f"{cell:>18}" for cell in cells))
    for side in ("nftables", "stateless"):
        print(
            f"ratio {side}/direct (median of the per-round ratios): "
            + ", ".join(
                f"{title} {statistics.median(ratios(results, attribute, side)):.2f}"
                for title, attribute in RATIOS
            )
        )
    for title, attribute in RATIOS:
        for name, rounds in results.items():
            figures = ", ".join(f"{getattr(r, attribute):.2f}" for r in rounds)
            print(f"  {title} {name} rounds: {figures}")
        for side in ("nftables", "stateless"):
            each = ratios(results, attribute, side)
            print(f"  {title} {side} ratios: " + ", ".join(f"{x:.2f}" for x in each))


def missing() -> str | None:
    reason = unavailable_reason()
    if reason is not None:
        return reason
    for tool in ("nft", "wrk"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (make bench installs it)"
    return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 5:
        return serve(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    if argv[:1] == ["read"] and len(argv) == 4:
        return read(argv[1], int(argv[2]), float(argv[3]))
    parser = argparse.ArgumentParser(prog="python -m bench.l4_nft")
    parser.add_argument("--seconds", type=int, default=3, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    reason = missing()
    if reason is not None:
        print(f"bench.l4_nft: skipped: {reason}")
        return 0
    with Lab() as lab:
        bench = build(lab)
        bench.switch.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
        report(measure(bench, args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
