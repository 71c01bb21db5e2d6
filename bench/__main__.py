"""``make bench``: the dispatcher's hot path against a bare ASGI 302 app, with wrk.

Both servers run one worker on the same uvicorn settings, measured in the same run,
alternating, several rounds each. Each server's figures are its median round; its ratio is
the median of the per-round ratios (each round against the bare app's round just before it,
so a slow spell of the shared machine weighs on both sides of a ratio alike).
This is a benchmark, not a test: it prints figures for docs/performance.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
from dataclasses import dataclass

from bench import evaluator, session

ROUNDS = 5


@dataclass(frozen=True)
class Result:
    requests_per_s: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.servers", kind, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise SystemExit(f"bench: the {kind} server did not start")
    return proc


def wrk(port: int, seconds: int, connections: int) -> Result:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}/bench/path?x=1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    if " 302 " not in out and "Non-2xx or 3xx responses" in out:
        raise SystemExit(f"bench: unexpected responses:\n{out}")
    return Result(rps, float(p99.group(1)) * scale)


def measure(kinds: list[str], seconds: int, connections: int) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {k: [] for k in kinds}
    servers = {k: (start(k, port := free_port()), port) for k in kinds}
    try:
        for _, port in servers.values():  # warm-up
            wrk(port, 1, connections)
        for _ in range(ROUNDS):
            for kind, (_, port) in servers.items():
                results[kind].append(wrk(port, seconds, connections))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    return results


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.requests_per_s for r in results),
        statistics.median(r.p99_ms for r in results),
    )


def ratios(results: dict[str, list[Result]], kind: str) -> list[float]:
    """Per round: ``kind``'s requests/s over the bare app's in the same round."""
    return [
        r.requests_per_s / b.requests_per_s
        for r, b in zip(results[kind], results["bare"], strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk round")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is missing (make bench installs it: apt-get install wrk)")
    names = {
        "bare": "bare ASGI 302 app (peer)",
        "dispatcher": "dispatcher hot path",
        "dispatcher-rules": "dispatcher + 50 rules",
    }
    results = measure(list(names), args.seconds, args.connections)
    bare = median(results["bare"])
    print(
        f"\nhot path, one worker, wrk -t1 -c{args.connections}, "
        f"{ROUNDS} rounds of {args.seconds}s each, medians (ratio: median of the rounds' "
        "ratios; of medians: median req/s over the bare app's median):"
    )
    print(f"{'server':<28}{'requests/s':>12}{'p99 ms':>10}{'ratio':>8}{'of medians':>12}")
    for kind, name in names.items():
        r = median(results[kind])
        print(
            f"{name:<28}{r.requests_per_s:>12.0f}{r.p99_ms:>10.2f}"
            f"{statistics.median(ratios(results, kind)):>8.2f}"
            f"{r.requests_per_s / bare.requests_per_s:>12.2f}"
        )
    for kind, rounds in results.items():
        print(f"  {kind} rounds: " + ", ".join(f"{r.requests_per_s:.0f}" for r in rounds))
        if kind != "bare":
            print(f"  {kind} ratios: " + ", ".join(f"{x:.2f}" for x in ratios(results, kind)))
    print("\nrewrite evaluator alone, 50-rule set, per request:")
    print(f"{'request':<36}{'median us':>10}{'p99 us':>10}")
    for name, (med, p99) in evaluator.measure().items():
        print(f"{name:<36}{med:>10.1f}{p99:>10.1f}")
    print("\nsigned client state, per operation (median of 5 timeit rounds):")
    print(f"{'token':<36}{'sign us':>10}{'verify us':>10}")
    for name, (sign, verify) in session.measure().items():
        print(f"{name:<36}{sign:>10.1f}{verify:>10.1f}")


if __name__ == "__main__":
    main()
