"""Locating a client: a microbenchmark, no sockets (``python -m bench.locate``).

Prints ns of CPU per call (process time: a busy machine slows it less than the wall
clock), the best of several rounds (each includes ~30 ns of loop and of
``next()`` on the list of addresses): longest-prefix match with 10 and 10,000
prefixes (hit and miss), and :meth:`Locator.locate` served from its cache (IPv4, IPv6), a
first sight of a client network (prefix map plus a GeoLite2-City-shaped record, and the
built-in iptocc data), and garbage.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from dispatcher.placement.locate import Locator
from dispatcher.placement.prefixes import Network, PrefixTable, parse_networks

ROUNDS = 5
NAMES = {lang: f"name-{lang}" for lang in ("de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN")}


def best_ns(call: Callable[[], object], n: int) -> float:
    rounds = []
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(n):
            call()
        rounds.append((time.process_time() - start) / n * 1e9)
    return min(rounds)


def matching(table: PrefixTable, values: list[int]) -> Callable[[], object]:
    cycle, match = itertools.cycle(values), table.match
    return lambda: match(next(cycle))


def random_networks(count: int, rng: random.Random) -> list[Network]:
    """IPv4 networks with lengths as a prefix map has them: mostly /16 to /24."""
    entries: dict[str, dict[str, object]] = {}
    while len(entries) < count:
        length = rng.choice([8, 12, 16, 16, 18, 20, 22, 24, 24, 24, 28, 32])
        value = rng.getrandbits(32) >> (32 - length) << (32 - length)
        prefix = f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}/{length}"
        entries[prefix] = {"prefix": prefix, "region": f"r{len(entries) % 7}"}
    return list(parse_networks(list(entries.values())))


def city_database(directory: Path) -> Path:
    record = {
        "continent": {"code": "EU", "geoname_id": 1, "names": NAMES},
        "country": {"iso_code": "DE", "geoname_id": 2, "names": NAMES},
        "registered_country": {"iso_code": "DE", "geoname_id": 2, "names": NAMES},
        "city": {"geoname_id": 3, "names": NAMES},
        "location": {"latitude": 52.5, "longitude": 13.4, "accuracy_radius": 20},
    }
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["10.0.0.0/8", "2001:db8::/32"]), record)
    path = directory / "city.mmdb"
    writer.to_db_file(str(path))
    return path


def measure() -> dict[str, float]:
    rng = random.Random(13)
    figures: dict[str, float] = {}
    for count in (10, 10_000):
        networks = random_networks(count, rng)
        table = PrefixTable(networks, 32)
        inside = [n.value for n in networks]
        outside = [v for v in (rng.getrandbits(32) for _ in range(5000)) if table.match(v) is None]
        figures[f"prefix match, {count} prefixes, hit"] = best_ns(matching(table, inside), 5000)
        figures[f"prefix match, {count} prefixes, miss"] = best_ns(matching(table, outside), 5000)
    with tempfile.TemporaryDirectory() as directory:
        path = city_database(Path(directory))
        networks = random_networks(10_000, rng)
        locator = Locator(networks, [str(path)])
        locator.locate("10.1.2.3")
        locator.locate("2001:db8::1")
        figures["locate, cached /24 (10,000 prefixes + City db)"] = best_ns(
            lambda: locator.locate("10.1.2.3"), 50_000
        )
        figures["locate, cached /48"] = best_ns(lambda: locator.locate("2001:db8::1"), 50_000)
        figures["locate, garbage"] = best_ns(lambda: locator.locate("not an address"), 50_000)
        fresh = iter([f"10.{i >> 8 & 255}.{i & 255}.1" for i in range(ROUNDS * 3000)])
        figures["locate, new /24 (prefix map + City record)"] = best_ns(
            lambda: locator.locate(next(fresh)), 3000
        )
        locator.close()
    builtin = Locator()
    fresh = iter([f"{80 + (i >> 16)}.{i >> 8 & 255}.{i & 255}.1" for i in range(ROUNDS * 3000)])
    figures["locate, new /24 (built-in iptocc)"] = best_ns(
        lambda: builtin.locate(next(fresh)), 3000
    )
    return figures


def main() -> None:
    for name, ns in measure().items():
        print(f"{name:50} {ns:8.0f} ns")


if __name__ == "__main__":
    main()
