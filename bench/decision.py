"""The decision's own cost, no sockets: CPU per ``DispatchCore.answer_wire`` (rules, then
placement, then the answer) as the farm grows from 3 to 1,000 sites and the rule set from
50 to 500 rules, for a request no rule answers and one a late rule answers.

The rule sets are of the kind a central redirector carries (retired sections, regional
shops picked by ``${site:POOL}`` under a query condition, user-agent blocks). The answering
rule sends the client to ``${site:default}``; it is the 400th of 500 rules, and the 40th of
50 (the same place in the set). Run: ``python -m bench.decision`` (a few seconds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from dispatcher.app import DispatchCore
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.redirect import RewriteProgram, compile_rules
from dispatcher.snapshot import Snapshot, build_snapshot

REGIONS = ("eu", "us", "asia")
UNANSWERED = (b"/bench/path", b"x=1")
ANSWERED = (b"/answer/basket", b"id=7")


def rules(count: int, answer_at: int) -> str:
    """``count`` rules; the ``answer_at``-th (1-based) answers :data:`ANSWERED`."""
    lines = ["RewriteEngine on"]
    for i in range(1, count + 1):
        if i == answer_at:
            lines.append("RewriteRule ^/answer/(.*)$ ${site:default}/shop/$1 [R=302,L]")
        elif i % 10 == 0:
            region = REGIONS[i % 3]
            lines.append(f"RewriteCond %{{QUERY_STRING}} (^|&)region={region}{i}(&|$)")
            lines.append(
                f"RewriteRule ^/shop{i}/(.*)$ ${{site:{region}|http://sorry.example.com}}"
                "/shop/$1 [R=302,L]"
            )
        elif i % 25 == 0:
            lines.append(f"RewriteCond %{{HTTP_USER_AGENT}} (badbot{i}|crawler{i}) [NC]")
            lines.append(f"RewriteRule ^/private{i}/ - [F]")
        else:
            lines.append(f"RewriteRule ^/retired/section{i}/(.*)$ /archive/{i}/$1 [R=301,L]")
    return "\n".join(lines) + "\n"


class Farm:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.redirects: defaultdict[str, int] = defaultdict(int)


def core(sites: int, rule_count: int) -> DispatchCore:
    pools: dict[str, dict[str, Any]] = {region: {} for region in REGIONS}
    config = build_config({"dispatcher": {"admin_tokens": ["bench"]}, "pools": pools}, environ={})
    specs = [SiteSpec(f"s{i}", f"http://s{i}.example.com") for i in range(sites)]
    specs += [SiteSpec(f"r-{r}", f"http://{r}.example.com", pool=r) for r in REGIONS]
    program: RewriteProgram | None = None
    if rule_count:
        text = rules(rule_count, answer_at=rule_count * 4 // 5)
        program = compile_rules(text, filename="bench", known_pools=config.pools)
    snapshot = build_snapshot(
        config,
        revision=1,
        sites=specs,
        health=lambda name: Health("up", None),
        loads={},
        rules=program,
    )
    return DispatchCore(Farm(snapshot))


def timed(call: Callable[[], Any], count: int, rounds: int) -> float:
    """CPU microseconds per call: the median of ``rounds`` rounds of ``count`` calls."""
    for _ in range(count // 10):
        call()
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(count):
            call()
        samples.append((time.process_time() - start) / count * 1e6)
    return statistics.median(samples)


def decision(dispatch: DispatchCore, request: tuple[bytes, bytes]) -> Callable[[], Any]:
    path, query = request
    url = path + b"?" + query
    headers = [(b"host", b"www.example.com"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    base: dict[str, Any] = {"type": "http", "scheme": "http", "client": ("192.0.2.7", 40000)}

    def call() -> Any:
        scope = base.copy()  # as the edge builds one per request
        scope["method"] = "GET"
        scope["raw_path"] = path
        scope["query_string"] = query
        scope["headers"] = headers
        scope["http_version"] = "1.1"
        return dispatch.answer_wire(scope, url, b"www.example.com")

    return call


def measure(count: int = 5000, rounds: int = 5) -> dict[tuple[int, int, str], float]:
    """(sites, rules, request) -> CPU us per decision."""
    results: dict[tuple[int, int, str], float] = {}
    for sites in (3, 1000):
        for rule_count in (0, 50, 500):
            dispatch = core(sites, rule_count)
            kinds = {"unanswered": UNANSWERED}
            if rule_count:
                kinds["answered"] = ANSWERED
            for kind, request in kinds.items():
                call = decision(dispatch, request)
                status = call()[0]
                assert status == 302, (sites, rule_count, kind, status)
                results[(sites, rule_count, kind)] = timed(call, count, rounds)
    return results


def report(results: dict[tuple[int, int, str], float]) -> list[str]:
    lines = [f"{'sites':>6}{'rules':>7}  {'request':<34}{'cpu us':>8}"]
    for (sites, rule_count, kind), cost in results.items():
        what = (
            "no rules"
            if not rule_count
            else (
                "no rule answers" if kind == "unanswered" else f"rule {rule_count * 4 // 5} answers"
            )
        )
        lines.append(f"{sites:>6}{rule_count:>7}  {what:<34}{cost:>8.2f}")
    lines.append("ratios (target: within 1.2x):")
    for rule_count in (0, 50, 500):
        for kind in ("unanswered", "answered"):
            if (3, rule_count, kind) in results:
                ratio = results[(1000, rule_count, kind)] / results[(3, rule_count, kind)]
                lines.append(f"  1000 / 3 sites, {rule_count} rules, {kind}: {ratio:.2f}")
    for sites in (3, 1000):
        for kind in ("unanswered", "answered"):
            ratio = results[(sites, 500, kind)] / results[(sites, 50, kind)]
            lines.append(f"  500 / 50 rules, {sites} sites, {kind}: {ratio:.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decision")
    parser.add_argument("--count", type=int, default=5000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print("\n".join(report(measure(args.count, args.rounds))))


if __name__ == "__main__":
    main()
