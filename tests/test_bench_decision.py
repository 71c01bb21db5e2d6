"""``bench.decision``: its rule sets are what it says, and every measured decision is a
redirect (a benchmark that measures an error page measures nothing)."""

from __future__ import annotations

import random
from pathlib import Path

from bench import decision


def test_the_answering_rule_is_the_400th_of_500() -> None:
    text = decision.rules(500, answer_at=400)
    rules = [line for line in text.splitlines() if line.startswith("RewriteRule")]
    assert len(rules) == 500
    assert rules[399].startswith("RewriteRule ^/answer/")


def test_every_case_is_measured_and_redirects_to_a_site() -> None:
    results = decision.measure(count=5, rounds=1)
    assert set(results) == {
        (sites, rules, kind)
        for sites in (3, 1000)
        for rules in (0, 50, 500)
        for kind in (("unanswered",) if rules == 0 else ("unanswered", "answered"))
    }
    assert all(cost > 0 for cost in results.values())
    lines = decision.report(results)
    assert any("500 / 50 rules, 1000 sites, answered" in line for line in lines)
    dispatch = decision.core(1000, 500)
    status, headers, _ = decision.decision(dispatch, decision.ANSWERED)()
    assert status == 302
    assert dict(headers)[b"location"].startswith(b"http://s")


def test_the_placement_case_measures_nearest_beside_weighted_on_located_clients(
    tmp_path: Path,
) -> None:
    results = decision.measure_placement(count=20, rounds=1)
    assert set(results) == {"weighted", "nearest"}
    assert all(len(rounds) == 1 and rounds[0] > 0 for rounds in results.values())
    assert any("nearest - weighted" in line for line in decision.report_placement(results))
    rng = random.Random(1)
    networks = decision.prefix_map(rng)
    assert len(networks) == decision.PREFIX_MAP_SIZE
    addresses = decision.client_addresses(networks, rng)
    assert len({a.rsplit(".", 1)[0] for a, _ in addresses}) == decision.CLIENT_NETWORKS
    decision.geo_database(tmp_path / "geo.mmdb")
    dispatch = decision.placed_core("nearest", tmp_path, networks)
    sites = {name: region for name, (region, _, _) in decision.PLACED_SITES.items()}
    by_region = {region: name for name, region in sites.items()}
    mapped = next(n for n in networks if n["prefix"].endswith(".0/24"))
    client = (mapped["prefix"].replace(".0/24", ".7"), 40000)
    for _ in range(5):  # a prefix-mapped client: its region's site, every time
        status, headers, _ = decision.decision(dispatch, decision.UNANSWERED, iter([client]))()
        assert status == 302
        assert dict(headers)[b"location"].startswith(
            f"http://{by_region[mapped['region']]}.".encode()
        )
    located = ("172.16.0.7", 40000)  # in the database: Germany
    status, headers, _ = decision.decision(dispatch, decision.UNANSWERED, iter([located]))()
    assert dict(headers)[b"location"].startswith(b"http://fra.")
