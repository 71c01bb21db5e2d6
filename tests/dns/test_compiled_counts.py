"""The compiled UDP path counts once per answer, in the compiled query, and the service folds
those counts into its report: the answers by site and the queries by type and rcode come
out as the general path counts them, and none is lost when the compiled queries are
dropped (the table's bound) or the table is replaced (a new snapshot)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import dns.message
import dns.rcode

from dispatcher.dns.fastpath import MAX_COMPILED
from dispatcher.dns.service import DnsService
from tests.dns.helpers import Source, addresses, make_config, query

ONE = "one.farm.example."
#: Three weighted sites, each with an IPv4 and an IPv6 address (answered by its own).
SITES: list[dict[str, Any]] = [
    {"name": name, "base_url": f"http://192.0.2.{i}", "weight": weight,
     "addresses": [f"192.0.2.{i}", f"2001:db8::{i}"]}
    for i, (name, weight) in enumerate((("eu", 10), ("us", 5), ("asia", 1)), 1)
]  # fmt: skip
NAMES = {"names": [{"name": ONE, "pool": "default", "answers": 1}]}
CONFIG = make_config(NAMES, SITES)
SITE_OF = {a: site["name"] for site in SITES for a in site["addresses"]}


def answered(svc: DnsService, wires: list[bytes], client: str = "192.0.2.200") -> Counter[str]:
    """Send each query over "UDP"; the sites the answers name, counted."""
    placed: Counter[str] = Counter()
    for wire in wires:
        answer = svc.answer_udp(wire, client)
        assert answer is not None
        (address,) = addresses(dns.message.from_wire(answer))
        placed[SITE_OF[address]] += 1
    return placed


def test_compiled_answers_are_counted_as_the_general_path_counts_them() -> None:
    svc = DnsService(Source(CONFIG))
    placed = answered(svc, [query(ONE, "A")] * 20)
    table = svc.table()
    assert table is not None
    assert len(table.compiled) == 1  # (the first answer compiled it; 19 came from it)
    report = svc.take_report()
    assert report.answers == dict(placed)
    assert report.queries == {"A/noerror": 20}
    assert report.counts["noerror"] == 20
    assert svc.take_report().answers == {}  # folded and taken: not again
    answered(svc, [query(ONE, "AAAA", subnet="198.51.100.0/24")] * 3)
    assert svc.report().queries == {"AAAA/noerror": 3}


def test_no_count_is_lost_when_the_compiled_queries_are_dropped() -> None:
    """Past :data:`MAX_COMPILED` distinct queries, the table drops its compiled ones: their
    counts stay."""
    svc = DnsService(Source(CONFIG))
    wires = [query(ONE, "A", subnet=f"10.{i // 256}.{i % 256}.0/24") for i in range(2000)]
    placed = answered(svc, [wire for wire in wires for _ in range(2)])  # compiled, then used
    table = svc.table()
    assert table is not None
    assert len(table.compiled) == 2000 - MAX_COMPILED  # (all dropped once on the way)
    report = svc.take_report()
    assert report.answers == dict(placed)
    assert sum(placed.values()) == 4000
    assert report.queries == {"A/noerror": 4000}


def test_no_count_is_lost_when_the_table_is_replaced() -> None:
    source = Source(CONFIG)
    svc = DnsService(source)
    placed = answered(svc, [query(ONE, "A")] * 7)
    first = svc.table()
    source.revision += 1
    source.rebuild()  # a new snapshot: the next query builds a new table
    placed += answered(svc, [query(ONE, "A")] * 5)
    assert svc.table() is not first
    report = svc.report()  # (read, not taken: the control process's own front)
    assert report.answers == dict(placed)
    assert report.queries == {"A/noerror": 12}
    assert svc.take_report() == report


def test_rate_limited_compiled_answers_are_placed_but_not_sent() -> None:
    """As on the general path: the site placed counts every answer made, the answers sent
    only those response rate limiting let through (the others are dropped or slipped)."""
    config = make_config({**NAMES, "rrl_rate": 5, "rrl_slip": 2}, SITES)
    svc = DnsService(Source(config), clock=lambda: 1000.0)
    sent = full = 0
    for _ in range(40):
        answer = svc.answer_udp(query(ONE, "A"), "192.0.2.200")
        if answer is not None:
            sent += 1
            message = dns.message.from_wire(answer)
            full += message.rcode() == dns.rcode.NOERROR and bool(addresses(message))
    report = svc.take_report()
    assert sum(report.answers.values()) == 40
    assert report.queries == {"A/noerror": full}
    assert 0 < full < sent < 40
    assert report.counts["rrl_slipped"] == sent - full
    assert report.counts["rrl_dropped"] == 40 - sent
