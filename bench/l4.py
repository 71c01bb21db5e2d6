"""``python -m bench.l4``: the userspace data plane against HAProxy in TCP mode.

The proxies run on the same core (cpu 1 when there are two; HAProxy with ``nbthread 1``, the
plane as one process on uvloop) in front of the same real servers (:mod:`bench.l4_servers`,
their own process); the real servers and every client share the other core (cpu 0). HAProxy
runs twice: with Debian's defaults (the peer of the targets) and with splicing both ways
(``haproxy-splice``, kernel zero-copy, a stronger reference). Measured, per round, for each
proxy and for the real servers with no proxy at all ("direct": the ceiling of the clients
and servers on their core, to show whether they are the bottleneck):

- **bulk, 1 connection** and **bulk, 64 connections**: MB/s downloaded from the bulk server
  (which sends from a memfd with ``sendfile``); the client is this process, one thread with
  a selector, discarding the bytes in the kernel (``recv`` with ``MSG_TRUNC``, no copy).
- **short connections**: connections/s by ``wrk -t1 -c32 -H 'Connection: close'`` against
  the tiny HTTP server (one request per connection, 2-byte body).

Each round starts with another proxy; each figure is the median of its rounds and each ratio
(plane over a HAProxy) the median of the per-round ratios. A benchmark, not a test: it
prints figures for docs/performance.md and fails only when something does not run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PROXIES = ("haproxy", "haproxy-splice", "userspace")
PEERS = ("haproxy", "haproxy-splice")
MEASURES = {
    "bulk1": "bulk, 1 connection (MB/s)",
    "bulk64": "bulk, 64 connections (MB/s)",
    "rate": "short connections (conn/s)",
}
WARM_UP = 0.3  # seconds of each bulk run not counted
RECV_CHUNK = 1 << 20
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Ports:
    """Where each side listens: ``bulk`` and ``short`` service ports."""

    bulk: int
    short: int


@dataclass
class Results:
    """Figures per side (``direct``, ``haproxy``, ``userspace``) and measure, one per round."""

    figures: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, side: str, measure: str, value: float) -> None:
        self.figures.setdefault(side, {}).setdefault(measure, []).append(value)

    def rounds(self, side: str, measure: str) -> list[float]:
        return self.figures.get(side, {}).get(measure, [])

    def median(self, side: str, measure: str) -> float:
        return statistics.median(self.rounds(side, measure))

    def ratios(self, measure: str, peer: str = "haproxy") -> list[float]:
        """Per round: the userspace plane's figure over ``peer``'s."""
        ours, theirs = self.rounds("userspace", measure), self.rounds(peer, measure)
        return [o / t for o, t in zip(ours, theirs, strict=True)]


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def wait_ready(proc: subprocess.Popen[str], what: str) -> None:
    """Wait for ``ready`` on the child's stdout."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"bench: {what} did not start: {line.strip()!r}")


def wait_listening(port: int, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench: {what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"bench: {what} is not listening on {port}")


def haproxy_config(listen: Ports, real: Ports, *, splice: bool) -> str:
    """HAProxy in TCP mode on one thread; with ``splice``, zero-copy forwarding both ways."""
    blocks = "".join(
        f"""
frontend {name}
    bind 127.0.0.1:{port}
    default_backend {name}
backend {name}
    server real 127.0.0.1:{target}
"""
        for name, port, target in (
            ("bulk", listen.bulk, real.bulk),
            ("short", listen.short, real.short),
        )
    )
    options = "\n    option splice-request\n    option splice-response" if splice else ""
    return f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp{options}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{blocks}"""


@contextlib.contextmanager
def running(argv: list[str], what: str, *, ready_line: bool) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        if ready_line:
            wait_ready(proc, what)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def everything(proxy_cpu: int | None, client_cpu: int | None) -> Iterator[dict[str, Ports]]:
    """Start the real servers, HAProxy and the plane; yield each side's ports."""
    real = Ports(free_port(), free_port())
    sides = {"direct": real, **{side: Ports(free_port(), free_port()) for side in PROXIES}}
    py = [sys.executable, "-m", "bench.l4_servers"]
    plane = sides["userspace"]
    with tempfile.TemporaryDirectory(prefix="webfarm-l4-") as tmp, contextlib.ExitStack() as stack:
        argv = [*py, "real", str(real.bulk), str(real.short)]
        stack.enter_context(running(pinned(client_cpu, argv), "the servers", ready_line=True))
        for peer in PEERS:
            config = Path(tmp) / f"{peer}.cfg"
            config.write_text(haproxy_config(sides[peer], real, splice=peer.endswith("splice")))
            argv = ["haproxy", "-db", "-q", "-f", str(config)]
            haproxy = stack.enter_context(running(pinned(proxy_cpu, argv), peer, ready_line=False))
            wait_listening(sides[peer].short, haproxy, peer)
            wait_listening(sides[peer].bulk, haproxy, peer)
        argv = [*py, "plane", *map(str, (plane.bulk, plane.short, real.bulk, real.short))]
        stack.enter_context(running(pinned(proxy_cpu, argv), "the plane", ready_line=True))
        yield sides


# --- clients ------------------------------------------------------------------------------


def bulk(port: int, connections: int, seconds: float) -> float:
    """MB/s received over ``connections`` connections for ``seconds`` (after a warm-up)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
    try:
        with selectors.DefaultSelector() as sel:
            for s in socks:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
            _receive(sel, WARM_UP)
            return _receive(sel, seconds) / seconds / 1e6
    finally:
        for s in socks:
            s.close()


def _receive(sel: selectors.BaseSelector, seconds: float) -> int:
    """Bytes received on every registered socket during ``seconds``, discarded in the kernel."""
    buf = bytearray(RECV_CHUNK)
    total = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(0.1):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                n = sock.recv_into(buf, RECV_CHUNK, socket.MSG_TRUNC)
            except BlockingIOError:
                continue
            if n == 0:
                raise RuntimeError("bench: a bulk connection was closed early")
            total += n
    return total


def wrk_rate(port: int, seconds: float, cpu: int | None) -> float:
    """Connections/s: one request per connection (``Connection: close``)."""
    out = subprocess.run(
        pinned(
            cpu,
            [
                "wrk",
                "-t1",
                "-c32",
                f"-d{max(1, round(seconds))}s",
                "-H",
                "Connection: close",
                f"http://127.0.0.1:{port}/",
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"bench: unexpected answers through port {port}:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"bench: cannot read wrk's output:\n{out}")
    return float(rate.group(1))


def measure(side: str, ports: Ports, seconds: float, cpu: int | None, results: Results) -> None:
    results.add(side, "bulk1", bulk(ports.bulk, 1, seconds))
    results.add(side, "bulk64", bulk(ports.bulk, 64, seconds))
    results.add(side, "rate", wrk_rate(ports.short, seconds, cpu))


# --- the run ------------------------------------------------------------------------------


def cpus() -> tuple[int | None, int | None]:
    """(proxy cpu, client cpu): 1 and 0 when there are two or more cpus and taskset."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or shutil.which("taskset") is None:
        return None, None
    return available[1], available[0]


def describe(proxy_cpu: int | None, client_cpu: int | None) -> str:
    version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=False)
    lines = version.stdout.splitlines()
    first = lines[0] if lines else "haproxy (unknown version)"

    pinning = (
        f"proxies pinned to cpu {proxy_cpu} (1 core each, HAProxy nbthread 1, the plane one "
        f"process on uvloop), real servers and clients pinned to cpu {client_cpu} (1 core)"
        if proxy_cpu is not None
        else "no pinning (fewer than 2 cpus or no taskset): everything shares the cpus"
    )
    return (
        f"{first}; Python {platform.python_version()}, uvloop {metadata.version('uvloop')}; "
        f"{os.cpu_count()} cpus; {pinning}"
    )


def run(rounds: int, seconds: float) -> Results:
    proxy_cpu, client_cpu = cpus()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # the bulk client is this process
    print(describe(proxy_cpu, client_cpu), flush=True)
    results = Results()
    with everything(proxy_cpu, client_cpu) as sides:
        for side in PROXIES:  # warm-up, not counted
            measure(side, sides[side], 0.5, client_cpu, Results())
        for i in range(rounds):
            turn = i % len(PROXIES)  # each round starts with another proxy
            order = ["direct", *PROXIES[turn:], *PROXIES[:turn]]
            for side in order:
                measure(side, sides[side], seconds, client_cpu, results)
            print(f"round {i + 1}/{rounds} done", flush=True)
    return results


def report(results: Results, rounds: int, seconds: float) -> None:
    print(
        f"\nlayer-4 switch, {rounds} rounds of {seconds:g} s per measure, medians; ratios are "
        "the medians of the per-round ratios of the userspace plane over each HAProxy:"
    )
    sides = ("direct", *PROXIES)
    print(f"{'measure':<30}" + "".join(f"{side:>16}" for side in sides) + f"{'ratio':>8}"
          + f"{'vs splice':>11}")  # fmt: skip
    for measure_, name in MEASURES.items():
        figures = "".join(f"{results.median(side, measure_):>16.0f}" for side in sides)
        print(
            f"{name:<30}{figures}"
            f"{statistics.median(results.ratios(measure_)):>8.2f}"
            f"{statistics.median(results.ratios(measure_, 'haproxy-splice')):>11.2f}"
        )
    for measure_ in MEASURES:
        for side in sides:
            figures = ", ".join(f"{v:.0f}" for v in results.rounds(side, measure_))
            print(f"  {measure_} {side} rounds: {figures}")
        for peer in PEERS:
            ratios = ", ".join(f"{r:.2f}" for r in results.ratios(measure_, peer))
            print(f"  {measure_} userspace/{peer} ratios: {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.l4", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measure")
    args = parser.parse_args(argv)
    for tool in ("haproxy", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (make bench installs it)", file=sys.stderr)
            return 1
    try:
        results = run(args.rounds, args.seconds)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(exc, file=sys.stderr)
        return 1
    report(results, args.rounds, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
