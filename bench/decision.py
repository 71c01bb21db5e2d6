"""The decision's own cost, no sockets: CPU per ``DispatchCore.answer_wire`` (rules, then
placement, then the answer) as the farm grows from 3 to 1,000 sites and the rule set from
50 to 500 rules, for a request no rule answers and one a late rule answers.

The rule sets are of the kind a central redirector carries (retired sections, regional
shops picked by ``${site:POOL}`` under a query condition, user-agent blocks). The answering
rule sends the client to ``${site:default}``; it is the 400th of 500 rules, and the 40th of
50 (the same place in the set).

Then placement by where the client is: the ``nearest`` policy (a prefix map of 1,000
entries and a GeoLite2-City-shaped ``.mmdb`` built here with ``mmdb-writer``) next to
``weighted``, three sites, no rules, the client's address cycling over 600 /24s (a third in
the prefix map, a third only in the database, a third in neither), caches warmed first.
Run: ``python -m bench.decision`` (a few seconds).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from dispatcher.app import DispatchCore
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.placement.pool import Where
from dispatcher.redirect import RewriteProgram, compile_rules
from dispatcher.snapshot import Snapshot, build_snapshot, locator_for

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


def decision(
    dispatch: DispatchCore,
    request: tuple[bytes, bytes],
    clients: Iterator[tuple[str, int]] | None = None,
) -> Callable[[], Any]:
    """One decision per call; from ``clients`` in turn (an endless iterator of the ASGI
    ``client``), else always from 192.0.2.7."""
    path, query = request
    url = path + b"?" + query
    headers = [(b"host", b"www.example.com"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    base: dict[str, Any] = {"type": "http", "scheme": "http", "client": ("192.0.2.7", 40000)}
    if clients is not None:
        following = clients

        def call_from() -> Any:
            scope = base.copy()
            scope["client"] = next(following)
            scope["method"] = "GET"
            scope["raw_path"] = path
            scope["query_string"] = query
            scope["headers"] = headers
            scope["http_version"] = "1.1"
            return dispatch.answer_wire(scope, url, b"www.example.com")

        return call_from

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


# --- placement by where the client is: nearest next to weighted ---------------------------

#: name -> (region, country, coordinates): the three sites of the placement case.
PLACED_SITES = {
    "fra": ("eu", "DE", (50.11, 8.68)),
    "nyc": ("us", "US", (40.71, -74.01)),
    "tyo": ("asia", "JP", (35.68, 139.69)),
}
#: Database records: (country, continent, latitude, longitude).
PLACES = (
    ("DE", "EU", 52.52, 13.40),
    ("FR", "EU", 48.86, 2.35),
    ("US", "NA", 37.77, -122.42),
    ("BR", "SA", -23.55, -46.63),
    ("JP", "AS", 35.68, 139.69),
    ("AU", "OC", -33.87, 151.21),
    ("IN", "AS", 19.08, 72.88),
    ("ZA", "AF", -26.20, 28.05),
)
PREFIX_MAP_SIZE = 1000
CLIENT_NETWORKS = 600  # /24s the clients come from
NAMES = {"en": "name"}


def prefix_map(rng: random.Random) -> list[dict[str, Any]]:
    """:data:`PREFIX_MAP_SIZE` entries inside 10.0.0.0/8, /16 to /24, as operators write
    them: a region, sometimes a country and coordinates too."""
    entries: dict[str, dict[str, Any]] = {}
    while len(entries) < PREFIX_MAP_SIZE:
        length = rng.choice((16, 20, 22, 24, 24, 24))
        value = (10 << 24 | rng.getrandbits(24)) >> (32 - length) << (32 - length)
        prefix = f"10.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}/{length}"
        entry: dict[str, Any] = {"prefix": prefix, "region": rng.choice(("eu", "us", "asia"))}
        if rng.random() < 0.3:
            country, _, lat, lon = rng.choice(PLACES)
            entry |= {"country": country, "coordinates": [lat, lon]}
        entries[prefix] = entry
    return list(entries.values())


def geo_database(path: Path) -> Path:
    """A GeoLite2-City-shaped database: 172.16.0.0/12 in /20s, each a place of
    :data:`PLACES` (country, continent, coordinates)."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    for i in range(256):
        country, continent, lat, lon = PLACES[i % len(PLACES)]
        record = {
            "continent": {"code": continent, "geoname_id": 1, "names": NAMES},
            "country": {"iso_code": country, "geoname_id": 2, "names": NAMES},
            "location": {"latitude": lat + i / 100, "longitude": lon, "accuracy_radius": 50},
        }
        writer.insert_network(IPSet([f"172.{16 + (i >> 4)}.{(i & 15) << 4}.0/20"]), record)
    writer.to_db_file(str(path))
    return path


def placed_core(policy: str, directory: Path, networks: list[dict[str, Any]]) -> DispatchCore:
    raw = {
        "dispatcher": {"admin_tokens": ["bench"], "geoip_database": str(directory / "geo.mmdb")},
        "pools": {"default": {"policy": policy}},
        "networks": networks,
    }
    config = build_config(raw, environ={})
    specs = [
        SiteSpec(name, f"http://{name}.example.com", region=region, country=country, coordinates=at)
        for name, (region, country, at) in PLACED_SITES.items()
    ]
    snapshot = build_snapshot(
        config,
        revision=1,
        sites=specs,
        health=lambda name: Health("up", None),
        loads={},
        where=Where(locator_for(config)),
    )
    return DispatchCore(Farm(snapshot))


def client_addresses(networks: list[dict[str, Any]], rng: random.Random) -> list[tuple[str, int]]:
    """Four hosts in each of :data:`CLIENT_NETWORKS` /24s: a third in the prefix map, a
    third only in the database, a third in neither; shuffled."""
    thirds = CLIENT_NETWORKS // 3
    mapped = [n["prefix"].rsplit(".", 1)[0] for n in rng.sample(networks, thirds)]
    located = [f"172.{16 + (i >> 4 & 15)}.{(i & 15) << 4 | i >> 8 & 15}" for i in range(thirds)]
    nowhere = [f"192.168.{i}" for i in range(thirds)]
    addresses = [
        (f"{net}.{host}", 40000 + host)
        for net in mapped + located + nowhere
        for host in (7, 33, 90, 201)
    ]
    rng.shuffle(addresses)
    return addresses


def measure_placement(count: int = 20_000, rounds: int = 5) -> dict[str, list[float]]:
    """policy -> CPU us per decision in each round, the client cycling over
    :func:`client_addresses`; the policies take turns within each round."""
    rng = random.Random(13)
    networks = prefix_map(rng)
    addresses = client_addresses(networks, rng)
    results: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        geo_database(directory / "geo.mmdb")
        calls = {}
        for policy in POLICIES:
            call = decision(
                placed_core(policy, directory, networks), UNANSWERED, itertools.cycle(addresses)
            )
            for _ in addresses:  # warm: every client network located once
                assert call()[0] == 302
            calls[policy] = call
        for _ in range(rounds):
            for policy, call in calls.items():
                results[policy].append(timed(call, count, 1))
    return results


POLICIES = ("weighted", "nearest")


def report_placement(results: dict[str, list[float]]) -> list[str]:
    lines = [
        f"placement, 3 sites, no rules, clients from {CLIENT_NETWORKS} /24s "
        f"({PREFIX_MAP_SIZE}-entry prefix map + City .mmdb), medians:"
    ]
    for policy, rounds in results.items():
        shown = " / ".join(f"{r:.2f}" for r in rounds)
        lines.append(f"  {policy:<10}{statistics.median(rounds):>8.2f} us  (rounds {shown})")
    differences = [n - w for n, w in zip(results["nearest"], results["weighted"], strict=True)]
    lines.append(
        f"  nearest - weighted: {statistics.median(differences):+.2f} us per request "
        "(median of the rounds' differences; target: at most +3)"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decision")
    parser.add_argument("--count", type=int, default=5000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print("\n".join(report(measure(args.count, args.rounds))))
    print("\n".join(report_placement(measure_placement(args.count * 4, args.rounds))))


if __name__ == "__main__":
    main()
