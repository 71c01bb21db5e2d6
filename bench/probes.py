"""What health checking costs the dispatcher: CPU per probe, and per core at the interval.

``python -m bench.probes`` runs, for each site count (100 and 1,000 by default):

- a **site server** (``python -m bench.probes sites N``): one uvloop process listening on N
  loopback ports, answering every request with ``200 OK`` and the expected body from a
  minimal protocol, pinned to core 1 with ``os.sched_setaffinity``;
- the **prober** (``python -m bench.probes probe ...``): the dispatcher's own
  :class:`~dispatcher.farm.Farm` (SQLite registry, N sites with the default check, the
  default :class:`~dispatcher.backends.health.Prober`, a state publisher as the control
  process runs one), pinned to core 0. After one interval of warm-up it measures, over
  ``--seconds``, its own CPU time (user + system of the whole process, threads included)
  and the probe results the farm heard.

The figures: CPU per probe, the share of one core the process used while probing every
site each ``--interval`` seconds (2 s, the default check), and how late the probes ran.
This is a benchmark, not a test: it prints figures for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import uvloop

from dispatcher.backends.health import Health, Prober
from dispatcher.backends.store import open_store
from dispatcher.config import load_config
from dispatcher.farm import Farm
from dispatcher.wire import encode_state

SITES_CORE, PROBER_CORE = 1, 0
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"


def pin(core: int) -> None:
    """Run this process on ``core`` only (when the machine has it)."""
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


# --- the sites --------------------------------------------------------------------------


class _Answer(asyncio.Protocol):
    """Answers one request per connection with a fixed 200, then closes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and self.transport is not None:
            self.transport.write(ANSWER)
            self.transport.close()


async def serve_sites(count: int) -> None:
    """Listen on ``count`` loopback ports; print them as one JSON line; serve until stdin ends."""
    pin(SITES_CORE)
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Answer, "127.0.0.1", 0, backlog=64) for _ in range(count)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps(ports), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for server in servers:
        server.close()


# --- the prober ---------------------------------------------------------------------------


def farm_config(ports: list[int], interval: float) -> str:
    sites = "".join(
        f'[[sites]]\nname = "s{i}"\nbase_url = "http://127.0.0.1:{port}"\n'
        f'check = {{ url = "/health", expect = "OK", interval = {interval} }}\n'
        for i, port in enumerate(ports)
    )
    return (
        '[dispatcher]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
        'database_url = "sqlite:///farm.db"\nadmin_tokens = ["bench"]\n'
        f'log_level = "warning"\n\n[pools.default]\npolicy = "weighted"\n\n{sites}'
    )


class Heard:
    """Counts the probe results the farm hears, and passes them on."""

    def __init__(self) -> None:
        self.results = 0
        self.changes = 0
        self.farm: Farm | None = None

    def __call__(self, key: str, health: Health, changed: bool) -> None:
        self.results += 1
        self.changes += changed
        if self.farm is not None:
            self.farm._on_health(key, health, changed)


class Publisher:
    """What the control process does on ``on_change``: encode the workers' state once per
    batch of changes (nothing is sent: there are no workers here)."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.dirty = asyncio.Event()
        self.shipped = 0
        farm.on_change = self.dirty.set

    async def run(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            self.shipped += 1
            encode_state(self.farm.worker_state(self.shipped))
            await asyncio.sleep(0)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def probe(ports: list[int], interval: float, seconds: float) -> None:
    """Run a Farm probing every port; after one interval's warm-up, measure for ``seconds``
    and print the figures as one JSON line (before stopping: a prober that cannot keep up
    takes long to stop, and the driver does not wait for it)."""
    pin(PROBER_CORE)
    with tempfile.TemporaryDirectory(prefix="webfarm-bench-probes-") as tmp:
        config_file = Path(tmp) / "farm.toml"
        config_file.write_text(farm_config(ports, interval))
        config = load_config(config_file, environ={})
        store = open_store(config.dispatcher.database_url)
        store.upgrade()
        heard = Heard()
        farm = Farm(config, store, Prober(heard))
        heard.farm = farm
        publisher = Publisher(farm)
        publishing = asyncio.create_task(publisher.run())
        await farm.start()
        up = sum(status.health.state == "up" for status in farm.snapshot.sites.values())
        await asyncio.sleep(interval)
        late = farm.prober.late_results
        before = (cpu_seconds(), heard.results, heard.changes, publisher.shipped, late)
        lag = await _loop_lag(seconds)
        late = farm.prober.late_results
        after = (cpu_seconds(), heard.results, heard.changes, publisher.shipped, late)
        figures = {
            "sites": len(ports),
            "up": up,
            "cpu": after[0] - before[0],
            "results": after[1] - before[1],
            "changes": after[2] - before[2],
            "shipped": after[3] - before[3],
            "late": after[4] - before[4],
            "lag_ms": lag * 1000,
        }
        print(json.dumps(figures), flush=True)
        publishing.cancel()
        await farm.stop()
        store.close()


async def _loop_lag(seconds: float) -> float:
    """Sleep ``seconds`` in 10 ms steps; return the worst lateness of a step (loop lag)."""
    worst = 0.0
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - now - 0.01)
    return worst


# --- the driver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    sites: int
    us_per_probe: float
    core_percent: float  # while probing every site each interval
    probes_per_s: float
    expected_per_s: float
    lag_ms: float
    changes: int  # up/down changes heard while measuring
    late: int  # results not counted while measuring: the prober was late (a probe all the same)
    up: int  # sites up once the first round of probes was in


def measure(sites: int, interval: float, seconds: float) -> Figure:
    command = [sys.executable, "-m", "bench.probes"]
    server = subprocess.Popen(
        [*command, "sites", str(sites)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        ports = server.stdout.readline()
        if not ports.startswith("["):
            raise SystemExit("bench: the site server did not start")
        line = _run_prober(command, ports, interval, seconds)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    got = json.loads(line)
    cpu, results = got["cpu"], max(got["results"] + got["late"], 1)
    return Figure(
        sites=sites,
        us_per_probe=cpu / results * 1e6,
        core_percent=cpu / seconds * 100,
        probes_per_s=results / seconds,
        expected_per_s=sites / interval,
        lag_ms=got["lag_ms"],
        changes=got["changes"],
        late=got["late"],
        up=got["up"],
    )


def _run_prober(command: list[str], ports: str, interval: float, seconds: float) -> str:
    """Start the prober, feed it the ports, return its figures' line; then give it 30 s to
    stop before killing it."""
    prober = subprocess.Popen(
        [*command, "probe", "--interval", str(interval), "--seconds", str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert prober.stdin is not None
    assert prober.stdout is not None
    try:
        prober.stdin.write(ports)
        prober.stdin.close()
        line = prober.stdout.readline()  # (the prober measures for a bounded time)
        if not line.startswith("{"):
            raise SystemExit("bench: the prober failed (see its errors above)")
        return line
    finally:
        try:
            prober.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prober.kill()
            prober.wait()


def report(figures: list[Figure], interval: float, seconds: float) -> None:
    print(
        f"probing N loopback sites every {interval:g}s (one Farm, its default Prober, pinned "
        f"to one core; the sites in another process on the other core), {seconds:g}s measured "
        "after one interval of warm-up. % of a core at 2 s: CPU per probe x N / 2 s."
    )
    print(
        f"{'sites':>6}{'us/probe':>10}{'% core':>8}{'% at 2 s':>10}"
        f"{'probes/s':>10}{'wanted/s':>10}{'loop lag ms':>13}{'changes':>9}{'late':>6}"
        f"{'up at start':>13}"
    )
    for f in figures:
        at_default = f.us_per_probe * f.sites / 2.0 / 1e6 * 100
        print(
            f"{f.sites:>6}{f.us_per_probe:>10.0f}{f.core_percent:>8.1f}{at_default:>10.1f}"
            f"{f.probes_per_s:>10.1f}{f.expected_per_s:>10.1f}{f.lag_ms:>13.1f}"
            f"{f.changes:>9}{f.late:>6}{f.up:>13}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes")
    parser.add_argument("--sites", default="100,1000", help="site counts, comma-separated")
    parser.add_argument("--interval", type=float, default=2.0, help="check interval, seconds")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per count")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.sites.split(",")]
    figures = [measure(n, args.interval, args.seconds) for n in counts]
    report(figures, args.interval, args.seconds)


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes")
    parser.add_argument("role", choices=["sites", "probe"])
    parser.add_argument("count", type=int, nargs="?", default=0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.role == "sites":
            runner.run(serve_sites(args.count))
            return
        runner.run(probe(json.loads(sys.stdin.readline()), args.interval, args.seconds))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("sites", "probe"):
        _child(sys.argv[1:])
    else:
        main()
