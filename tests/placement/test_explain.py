"""``explain`` with placement (no sockets): how the client was located, every site of the
pool that placed it with its verdict, and the same site the dispatcher's answer names."""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import replace

import pytest

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.errors import InvalidValue
from dispatcher.explain import explain, request_from_url
from dispatcher.placement import engine
from dispatcher.placement.model import DOWN, DRAINED, IS_HOST, NOT_PICKED, REMEMBERED, TAKEN
from dispatcher.redirect import compile_rules
from dispatcher.snapshot import Snapshot, build_snapshot

SITES = [
    SiteSpec("eu", "http://eu.example", weight=2),
    SiteSpec("us", "http://us.example"),
    SiteSpec("asia", "http://asia.example", drained=True),
    SiteSpec("au", "http://au.example"),
    SiteSpec("r-eu", "http://eu.example/r", pool="regional"),
]
RULES = """RewriteEngine on
RewriteRule ^/region/(.*)$ ${site:regional}/$1 [R=302,L]
RewriteRule ^/closed$ - [F]
"""


def snapshot(
    down: Collection[str] = ("au",), *, affinity: str = "off", rules: str | None = None
) -> Snapshot:
    config = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"], "affinity": affinity},
            "pools": {"regional": {}},
        },
        environ={},
    )
    return build_snapshot(
        config,
        revision=1,
        sites=SITES,
        health=lambda name: Health("down" if name in down else "up", None),
        loads={},
        rules=compile_rules(rules, known_pools=config.pools) if rules else None,
    )


def verdicts(explained: object) -> dict[str, str]:
    placement = explained.placements[0]  # type: ignore[attr-defined]
    return {c.site: c.verdict for c in placement.considered}


def test_every_site_of_the_pool_with_its_verdict_and_the_answers_site_taken() -> None:
    snap = snapshot()
    explained = explain(snap, request_from_url("http://www.example.com/x"))
    assert verdicts(explained) == {"eu": TAKEN, "us": NOT_PICKED, "asia": DRAINED, "au": DOWN}
    assert explained.decision.sites == ("eu",)
    text = explained.format()
    assert "client 127.0.0.1: not located" in text
    assert "pool default:" in text
    assert "  asia  drained" in text
    body = explained.as_dict()
    assert body["placements"][0]["sites"] == ["eu"]
    assert body["client"] == {"remote_addr": "127.0.0.1", "subnet": None}


def test_explaining_leaves_the_rotation_alone_and_names_the_next_clients_site() -> None:
    snap = snapshot()
    pool = snap.default_pool
    untouched = replace(pool, policy=copy.deepcopy(pool.policy))
    for _ in range(5):
        explained = explain(snap, request_from_url("http://www.example.com/x"))
        assert explained.decision.sites[0] == explained.placements[0].sites[0].name
    nxt = engine.pick_plain(untouched, b"")
    assert nxt is not None
    assert explained.decision.sites[0] == nxt.name  # the next client's site
    live = [engine.pick_plain(pool, b"") for _ in range(6)]
    assert live == [nxt, *(engine.pick_plain(untouched, b"") for _ in range(5))]


def test_the_request_host_is_never_taken() -> None:
    explained = explain(snapshot(), request_from_url("http://eu.example/x"))
    assert verdicts(explained)["eu"] == IS_HOST
    assert explained.decision.sites == ("us",)


def test_network_affinity_shows_the_hashed_site_for_an_address_or_a_subnet() -> None:
    snap = snapshot(affinity="network")
    by_address = explain(snap, request_from_url("http://x/", remote_addr="198.51.100.7"))
    by_subnet = explain(
        snap, request_from_url("http://x/", remote_addr="192.0.2.1"), subnet="198.51.100.0/24"
    )
    for explained in (by_address, by_subnet):
        assert REMEMBERED in verdicts(explained).values()
        assert explained.decision.sites == by_address.decision.sites
    assert by_subnet.client.subnet == "198.51.100.0/24"
    assert "(client subnet 198.51.100.0/24)" in by_subnet.format()


def test_the_pool_a_rule_placed_the_client_in_is_explained() -> None:
    snap = snapshot(rules=RULES)
    explained = explain(snap, request_from_url("http://www.example.com/region/a"))
    assert [p.pool for p in explained.placements] == ["regional"]
    assert explained.placements[0].sites[0].name == "r-eu"
    closed = explain(snap, request_from_url("http://www.example.com/closed"))
    assert (closed.decision.status, closed.placements) == (403, ())


def test_a_pool_with_nothing_up_is_explained_with_its_sorry_page() -> None:
    explained = explain(snapshot(down={"eu", "us", "au"}), request_from_url("http://x/"))
    assert explained.decision.sorry
    assert verdicts(explained) == {"eu": DOWN, "us": DOWN, "asia": DRAINED, "au": DOWN}
    assert explained.placements[0].sites == ()


@pytest.mark.parametrize("subnet", ["bogus", "10.0.0.0/33", "x" * 100, "10.0.0.0/8\n"])
def test_a_bad_subnet_is_named(subnet: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        explain(snapshot(), request_from_url("http://x/"), subnet=subnet)
    assert caught.value.field == "subnet"
