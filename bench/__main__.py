"""``make bench``: the dispatcher's hot path against a bare ASGI 302 app, with wrk; the
dispatcher's CPU per health probe at 100 and 1,000 sites (``bench.probes``); then farmnode's
layer-4 switch (``bench.l4``, ``bench.l4_nft``), its failover against keepalived
(``bench.failover``: at the defaults, at farmnode's fast timing and at a keepalived tuned to
comparable false-failover safety; the lossy-link comparison is ``python -m bench.failover
--loss 20``, minutes long, run on its own) and the truth tier's PostgreSQL failover
(``bench.pg_failover``). ``bench.decision`` measures the decision alone (rules and
placement, no sockets) from 3 to 1,000 sites and from 50 to 500 rules, and the ``nearest``
policy (prefix map and ``.mmdb``) beside ``weighted``; ``bench.dns`` the DNS front against gdnsd
with dnsperf.

Both servers run one worker on the same uvicorn settings, measured in the same run,
alternating, several rounds each. Each server's figures are its median round; its ratio is
the median of the per-round ratios (each round against the bare app's round just before it,
so a slow spell of the shared machine weighs on both sides of a ratio alike).
This is a benchmark, not a test: it prints figures for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
from dataclasses import dataclass

from bench import decision, evaluator, failover, l4, l4_nft, peers, pg_failover, probes, session
from bench import dns as dns_bench
from bench.servers import KEYS
from dispatcher.session import AffinityStamp

ROUNDS = 5

#: taskset pins: the server on one core, wrk on the other (when taskset is there).
SERVER_CORE, CLIENT_CORE = "0", "1"


def pinned(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") else []


@dataclass(frozen=True)
class Result:
    requests_per_s: float
    p99_ms: float
    cpu_us: float  # the server process's CPU time per request (user + system)


@dataclass(frozen=True)
class Case:
    """One measured line: a server kind, and what wrk sends it."""

    name: str
    server: str
    headers: tuple[str, ...] = ()


def cases() -> list[Case]:
    stamp = AffinityStamp(KEYS, lifetime=3600).encode("s0")
    return [
        Case("bare ASGI 302 app (peer)", "bare"),
        Case("bare 302 on the new edge", "bare-edge"),
        Case("dispatcher hot path", "dispatcher"),
        Case("dispatcher + 50 rules", "dispatcher-rules"),
        Case("hot path, old uvicorn edge", "dispatcher-uvicorn"),
        Case("50 rules, old uvicorn edge", "dispatcher-rules-uvicorn"),
        Case("affinity, new clients", "dispatcher-affinity"),
        Case("affinity, returning", "dispatcher-affinity", (f"Cookie: farm_site={stamp}",)),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*pinned(SERVER_CORE), sys.executable, "-m", "bench.servers", kind, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise SystemExit(f"bench: the {kind} server did not start")
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    port: int, seconds: int, connections: int, headers: tuple[str, ...] = (), pid: int = 0
) -> Result:
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        [
            *pinned(CLIENT_CORE),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            *(arg for header in headers for arg in ("-H", header)),
            f"http://127.0.0.1:{port}/bench/path?x=1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    used = cpu_seconds(pid) - before if pid else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    if " 302 " not in out and "Non-2xx or 3xx responses" in out:
        raise SystemExit(f"bench: unexpected responses:\n{out}")
    return Result(rps, float(p99.group(1)) * scale, used / max(count, 1) * 1e6)


def measure(todo: list[Case], seconds: int, connections: int) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {c.name: [] for c in todo}
    servers = {kind: (start(kind, port := free_port()), port) for kind in {c.server for c in todo}}
    try:
        for _, port in servers.values():  # warm-up
            wrk(port, 1, connections)
        for _ in range(ROUNDS):
            for case in todo:
                proc, port = servers[case.server]
                results[case.name].append(wrk(port, seconds, connections, case.headers, proc.pid))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    return results


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.requests_per_s for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(r.cpu_us for r in results),
    )


def ratios(results: dict[str, list[Result]], name: str, peer: str) -> list[float]:
    """Per round: ``name``'s requests/s over the peer's in the same round."""
    return [
        r.requests_per_s / b.requests_per_s
        for r, b in zip(results[name], results[peer], strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--hot-path-only", action="store_true", help="measure the dispatcher's hot path only"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is missing (make bench installs it: apt-get install wrk)")
    todo = cases()
    peer = todo[0].name
    results = measure(todo, args.seconds, args.connections)
    bare = median(results[peer])
    print(
        f"\nhot path, one worker, wrk -t1 -c{args.connections}, "
        f"{ROUNDS} rounds of {args.seconds}s each, medians. ratio: median of the rounds' "
        "requests/s ratios; cpu ratio: the peer's server CPU time per request over this "
        "one's (what the ratio would be with a core to itself):"
    )
    print(
        f"{'server':<28}{'requests/s':>12}{'p99 ms':>9}{'ratio':>7}"
        f"{'cpu us/req':>12}{'cpu ratio':>11}"
    )
    for case in todo:
        r = median(results[case.name])
        print(
            f"{case.name:<28}{r.requests_per_s:>12.0f}{r.p99_ms:>9.2f}"
            f"{statistics.median(ratios(results, case.name, peer)):>7.2f}"
            f"{r.cpu_us:>12.1f}{bare.cpu_us / r.cpu_us:>11.2f}"
        )
    for name, rounds in results.items():
        print(f"  {name} rounds: " + ", ".join(f"{r.requests_per_s:.0f}" for r in rounds))
        if name != peer:
            print(f"  {name} ratios: " + ", ".join(f"{x:.2f}" for x in ratios(results, name, peer)))
        print(f"  {name} cpu us/req: " + ", ".join(f"{r.cpu_us:.1f}" for r in rounds))
    print("\nthe hot path beside nginx and Apache (bench.peers):")
    peers.main([])
    if args.hot_path_only:
        return
    print("\nrewrite evaluator alone, 50-rule set, per request:")
    print(f"{'request':<36}{'median us':>10}{'p99 us':>10}")
    for name, (med, p99) in evaluator.measure().items():
        print(f"{name:<36}{med:>10.1f}{p99:>10.1f}")
    print("\nthe decision alone (rules, placement, answer), CPU per request, no sockets:")
    decision.main([])
    print("\nsigned client state, per operation (median of 5 timeit rounds):")
    print(f"{'token':<36}{'sign us':>10}{'verify us':>10}")
    for name, (sign, verify) in session.measure().items():
        print(f"{name:<36}{sign:>10.1f}{verify:>10.1f}")
    print("\nhealth checks: the dispatcher's CPU per probe (bench.probes):")
    probes.main([])
    print("\nthe DNS front against gdnsd (bench.dns):")
    dns_bench.main([])
    print("\nfarmnode layer-4 switch, userspace plane against HAProxy:")
    l4.main([])
    print("\nfarmnode layer-4 switch, nftables plane against talking to the server directly:")
    l4_nft.main([])
    print("\nfarmnode failover against keepalived (kill -9 of the owner):")
    failover.main(["--fast-farmnode", "--tolerant-keepalived", "0.05:8"])
    print("\ntruth tier: PostgreSQL failover under write load (kill -9 of the primary):")
    pg_failover.main([])


if __name__ == "__main__":
    main()
