"""The rewrite evaluator's own cost per request: a microbenchmark, no sockets.

Each request kind is evaluated many times against the 50-rule set; the per-request time
is reported as median and p99 in microseconds.
"""

from __future__ import annotations

import statistics
import time

from bench.servers import REGIONS, RULES
from dispatcher.redirect import RewriteRequest, load_rules

REQUESTS = {
    "no rule matches (all 50 tried)": ("/bench/path", "x=1"),
    "regional shop via site: map": ("/shop4/basket", "region=us4"),
    "retired section, 301": ("/retired/section17/old/page", ""),
    "campaign with QSA": ("/campaign/7/spring", "utm=mail"),
}


def request(path: str, query: str) -> RewriteRequest:
    return RewriteRequest(
        method="GET",
        scheme="http",
        host="www.example.com",
        server_name="www.example.com",
        server_port=80,
        path=path,
        query_string=query,
        remote_addr="127.0.0.1",
        headers={"host": "www.example.com", "user-agent": "wrk", "accept": "*/*"},
    )


def measure(n: int = 20_000) -> dict[str, tuple[float, float]]:
    """name -> (median µs, p99 µs) per evaluation."""
    program = load_rules(RULES, known_pools={"default", *REGIONS})

    def select(pool: str, req: RewriteRequest) -> str:
        return f"http://{pool}.example.com"

    results = {}
    for name, (path, query) in REQUESTS.items():
        req = request(path, query)
        for _ in range(1000):
            program.evaluate(req, sites=select)
        times = []
        for _ in range(n):
            start = time.perf_counter_ns()
            program.evaluate(req, sites=select)
            times.append(time.perf_counter_ns() - start)
        times.sort()
        results[name] = (statistics.median(times) / 1000, times[int(len(times) * 0.99)] / 1000)
    return results
