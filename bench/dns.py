"""``make bench``'s DNS part: webfarm's DNS front against gdnsd, with dnsperf, same run.

Both servers answer ``www.farm.example. A`` from three weighted addresses (10:5:1), one
address an answer, TTL 20: webfarm from a pool of three sites (real loopback sites,
probed), gdnsd from its ``weighted`` plugin. Each server runs pinned to core 0 (webfarm:
``farm-dispatcher serve`` with one worker; its control process shares the core), dnsperf
to core 1 (``-c 1 -q 100``: one client, 100 queries in flight), for a bounded time each.
Every query carries an EDNS client subnet option (198.51.100.0/24). Then webfarm again
with response rate limiting on at a rate no client reaches (every answer pays the
bookkeeping, none is limited): the RRL's cost.

Figures: queries/s, the server's CPU time per query (user + system, whole process tree; and
the system part alone: the kernel's UDP work, about the same for every server), and the
ratio to gdnsd per core (gdnsd's CPU per query over webfarm's). This is a benchmark, not a
test: it prints figures for docs/performance.md. ``python -m bench.callgrind_dns`` counts
the instructions of one query, a figure the machine's load does not move.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query

from bench.servers import start_sites

SERVER_CORE, CLIENT_CORE = "0", "1"
ZONE = "farm.example."
#: dnsperf's EDNS client subnet option: family 1, source /24, scope 0, 198.51.100.
ECS_OPTION = "8:00011800c63364"
ADDRESSES = (("192.0.2.1", 10), ("192.0.2.2", 5), ("192.0.2.3", 1))


@dataclass(frozen=True)
class Figures:
    name: str
    qps: float
    lost: int
    cpu_us: float  # server CPU time per query answered
    sys_us: float = 0.0  # of which system time


def pinned(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") else []


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("bench.dns: no free port")


def tree_cpu(pid: int, *, children: bool = True, system: bool = False) -> float:
    """User + system CPU seconds (only system with ``system``) of ``pid`` and (unless told
    not to) its children (Linux /proc)."""
    total = 0.0
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = int(fields[12]) if system else int(fields[11]) + int(fields[12])
        total += ticks / os.sysconf("SC_CLK_TCK")
        if children:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            total += sum(tree_cpu(int(kid), system=system) for kid in kids)
    return total


def wait_answering(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    query = dns.message.make_query("www." + ZONE, "A")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench.dns: {what} exited (status {proc.returncode})")
        try:
            answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
            if answer.answer:
                return
        except (OSError, dns.exception.Timeout):
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench.dns: {what} did not answer within 60 s")


def dnsperf(port: int, queries: Path, seconds: int, pid: int, name: str) -> Figures:
    before = tree_cpu(pid)
    system_before = tree_cpu(pid, system=True)
    own_before = tree_cpu(pid, children=False)
    out = subprocess.run(
        [
            *pinned(CLIENT_CORE),
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(queries),
            "-l",
            str(seconds),
            "-c",
            "1",
            "-q",
            "100",
            "-t",
            "2",
            "-e",
            "-E",
            ECS_OPTION,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    used = tree_cpu(pid) - before
    system = tree_cpu(pid, system=True) - system_before
    own = tree_cpu(pid, children=False) - own_before
    if own != used:
        print(f"  ({name}: the control process {own:.2f} s of CPU, its worker {used - own:.2f} s)")
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    return Figures(name, qps, lost, used / max(done, 1) * 1e6, system / max(done, 1) * 1e6)


def webfarm_config(site_ports: list[int], dns_port: int, rrl: int) -> str:
    sites = "".join(
        f'\n[[sites]]\nname = "s{i}"\nbase_url = "http://127.0.0.1:{port}"\nweight = {weight}\n'
        f'addresses = ["{address}"]\ncheck = {{ url = "/health", expect = "OK", interval = 2.0 }}\n'
        for i, ((address, weight), port) in enumerate(zip(ADDRESSES, site_ports, strict=True))
    )
    return f"""[dispatcher]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
database_url = "sqlite:///farm.db"
admin_tokens = ["bench"]
log_level = "warning"
workers = 1
{sites}
[dns]
listen = ["127.0.0.1:{dns_port}"]
zones = ["{ZONE}"]
ns = ["ns1.{ZONE}"]
rrl_rate = {rrl}

[[dns.names]]
name = "www.{ZONE}"
pool = "default"
ttl = 20
"""


GDNSD_CONFIG = """options => {{
  listen => [ 127.0.0.1 ]
  dns_port => {port}
  run_dir => {root}/run
  state_dir => {root}/state
  udp_threads => 1
  tcp_threads => 1
}}
plugins => {{
  weighted => {{
    www => {{
      service_types => [ up ]
{records}
    }}
  }}
}}
"""

GDNSD_ZONE = """$TTL 3600
@ SOA ns1 hostmaster 1 3600 600 604800 60
@ NS ns1
ns1 A 192.0.2.53
www 20 DYNA weighted!www
"""


Started = tuple[subprocess.Popen[bytes], int]


def start_webfarm(tmp: Path, site_ports: list[int], rrl: int) -> Started:
    port = free_port()
    directory = tmp / f"webfarm-{rrl}"
    directory.mkdir()
    config = directory / "farm.toml"
    config.write_text(webfarm_config(site_ports, port, rrl))
    command = [sys.executable, "-m", "dispatcher", "--log-level", "warning"]
    subprocess.run([*command, "db", "upgrade", "-c", str(config)], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*pinned(SERVER_CORE), *command, "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_answering(port, proc, "farm-dispatcher serve")
    return proc, port


def start_gdnsd(tmp: Path) -> Started:
    port = free_port()
    root = tmp / "gdnsd"
    for sub in ("zones", "run", "state"):
        (root / sub).mkdir(parents=True)
    records = "\n".join(
        f"      {name} => [ {address}, {weight} ]"
        for name, (address, weight) in zip("abc", ADDRESSES, strict=True)
    )
    (root / "config").write_text(GDNSD_CONFIG.format(port=port, root=root, records=records))
    (root / "zones" / ZONE.rstrip(".")).write_text(GDNSD_ZONE)
    proc = subprocess.Popen(
        [*pinned(SERVER_CORE), "gdnsd", "-c", str(root), "start"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_answering(port, proc, "gdnsd")
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def measure(seconds: int) -> list[Figures]:
    sites = await start_sites()
    try:
        with tempfile.TemporaryDirectory(prefix="webfarm-bench-dns-") as name:
            tmp = Path(name)
            queries = tmp / "queries"
            queries.write_text(f"www.{ZONE} A\n")
            ports = [s.port for s in sites]
            figures = []
            for label, start in (
                ("webfarm DNS, ECS", lambda: start_webfarm(tmp, ports, 0)),
                ("gdnsd weighted, ECS", lambda: start_gdnsd(tmp)),
                ("webfarm DNS, ECS, RRL on", lambda: start_webfarm(tmp, ports, 1_000_000)),
            ):
                proc, port = await asyncio.to_thread(start)
                try:
                    figures.append(
                        await asyncio.to_thread(dnsperf, port, queries, seconds, proc.pid, label)
                    )
                finally:
                    await asyncio.to_thread(stop, proc)
            return figures
    finally:
        for site in sites:
            await site.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dns")
    parser.add_argument("--seconds", type=int, default=10, help="length of one dnsperf run")
    args = parser.parse_args(argv)
    for tool in ("dnsperf", "gdnsd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.dns: {tool} is missing (./.ci/system-deps --bench)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures = asyncio.run(measure(args.seconds))
    gdnsd = next(f for f in figures if f.name.startswith("gdnsd"))
    print(
        f"\nDNS, A query with a client subnet, dnsperf -c 1 -q 100 for {args.seconds} s, "
        "server on core 0, dnsperf on core 1 (a shared machine: figures vary):"
    )
    print(
        f"{'server':<28}{'queries/s':>11}{'lost':>7}{'cpu us/q':>10}{'of it sys':>11}"
        f"{'per core vs gdnsd':>19}"
    )
    for f in figures:
        ratio = gdnsd.cpu_us / f.cpu_us
        print(
            f"{f.name:<28}{f.qps:>11.0f}{f.lost:>7}{f.cpu_us:>10.1f}{f.sys_us:>11.1f}{ratio:>19.2f}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    plain = figures[0]
    rrl = figures[2]
    print(f"RRL's cost: {rrl.cpu_us - plain.cpu_us:+.1f} us of CPU per query")


if __name__ == "__main__":
    main()
