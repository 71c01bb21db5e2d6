"""Site affinity (cookie stamps and the network hash) and the hand-off relay, on the hot
path driven as a plain ASGI callable; and the open-redirect guarantee."""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.affinity import CookieAffinity, make_affinity
from dispatcher.app import DispatchApp
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.counts import AFFINITY, PLACED, RedirectCounts
from dispatcher.counts import RULES as BY_RULES
from dispatcher.errors import ConfigError
from dispatcher.placement.ring import client_network
from dispatcher.redirect import compile_rules
from dispatcher.relay import HandoffRelay, split_handoff
from dispatcher.session import AffinityStamp, HandoffToken, ReplayGuard
from dispatcher.snapshot import Snapshot, build_snapshot

pytestmark = pytest.mark.anyio

KEYS = ("old-key", "new-key")
NOW = 1_750_000_000.0
SITES = [
    SiteSpec("eu", "http://eu.example.com", weight=1),
    SiteSpec("us", "http://us.example.com", weight=1),
    SiteSpec("asia", "https://asia.example.net/shop", weight=1),
]
RULES = """RewriteEngine on
RewriteRule ^/region/(.*)$ ${site:regional|http://sorry.example.org}/r/$1 [R=302,L]
RewriteRule ^/declared$ https://partner.example.org/landing [R=301,L]
"""


class Wall:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeFarm:
    snapshot: Snapshot


def snapshot(
    up: set[str],
    drained: Sequence[str] = (),
    rules: str | None = None,
    pool: str = "weighted",
    affinity: str = "off",
) -> Snapshot:
    config = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"], "affinity": affinity},
            "pools": {"default": {"policy": pool}, "regional": {}},
        },
        environ={},
    )
    sites = [SiteSpec(s.name, s.base_url, weight=1, drained=s.name in drained) for s in SITES]
    sites += [SiteSpec(f"r-{s.name}", s.base_url + "/r", pool="regional") for s in SITES]
    return build_snapshot(
        config,
        revision=1,
        sites=sites,
        health=lambda name: Health("up" if name.removeprefix("r-") in up else "down", None),
        loads={},
        rules=compile_rules(rules, known_pools={"default", "regional"}) if rules else None,
    )


def cookie_app(farm: FakeFarm, wall: Wall, lifetime: int = 600) -> DispatchApp:
    stamps = AffinityStamp(KEYS, lifetime=lifetime, clock=wall)
    return DispatchApp(farm, affinity=CookieAffinity(stamps, wall=wall))


async def call(
    app: DispatchApp,
    path: str = "/page",
    query: bytes = b"",
    *,
    cookie: str | None = None,
    host: bytes = b"www.example.com",
    client: str = "192.0.2.10",
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[int, list[tuple[bytes, bytes]]]:
    headers = [(b"host", host), *extra]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1")))
    scope = {
        "type": "http",
        "scheme": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query,
        "headers": headers,
        "client": (client, 40000),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], list(sent[0]["headers"])


def location(headers: list[tuple[bytes, bytes]]) -> str:
    return dict(headers)[b"location"].decode("latin-1")


def stamp_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"set-cookie" and value.startswith(b"farm_site="):
            return value.split(b";")[0].split(b"=", 1)[1].decode()
    return None


def site_of(headers: list[tuple[bytes, bytes]]) -> str:
    target = location(headers)
    return next(s.name for s in SITES if target.startswith(s.base_url))


# --- cookie affinity ----------------------------------------------------------------------


async def test_a_new_client_is_placed_and_stamped_and_comes_back() -> None:
    wall = Wall()
    farm = FakeFarm(snapshot({"eu", "us", "asia"}))
    app = cookie_app(farm, wall)
    status, headers = await call(app)
    first, token = site_of(headers), stamp_of(headers)
    assert status == 302
    assert token is not None
    stamps = AffinityStamp(KEYS, lifetime=600, clock=wall)
    assert stamps.decode(token).site == first
    cookie = dict(headers)[b"set-cookie"].decode()
    assert "Max-Age=600" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    # the weighted policy would rotate; the stamp keeps this client where it was
    for _ in range(10):
        _, again = await call(app, cookie=f"other=1; farm_site={token}")
        assert site_of(again) == first
        assert stamp_of(again) is None  # young stamp: no new cookie on every redirect
    # a client without a stamp still rotates
    others = Counter([site_of((await call(app))[1]) for _ in range(6)])
    assert set(others) == {"eu", "us", "asia"}


async def test_a_stamp_is_renewed_after_half_its_lifetime_and_expires_after_it() -> None:
    wall = Wall()
    farm = FakeFarm(snapshot({"eu", "us", "asia"}))
    app = cookie_app(farm, wall, lifetime=600)
    _, headers = await call(app)
    first, token = site_of(headers), stamp_of(headers)
    wall.now += 301
    _, renewed = await call(app, cookie=f"farm_site={token}")
    assert site_of(renewed) == first
    fresh = stamp_of(renewed)
    assert fresh is not None
    assert fresh != token
    wall.now += 599  # the old stamp is now 900 s old: expired; the renewed one is not
    _, kept = await call(app, cookie=f"farm_site={fresh}")
    assert site_of(kept) == first


async def test_a_stamped_site_that_is_down_or_drained_is_chosen_again_and_restamped() -> None:
    wall = Wall()
    farm = FakeFarm(snapshot({"eu", "us", "asia"}))
    app = cookie_app(farm, wall)
    token = AffinityStamp(KEYS, lifetime=600, clock=wall).encode("eu")
    farm.snapshot = snapshot({"us", "asia"})  # eu is down
    _, headers = await call(app, cookie=f"farm_site={token}")
    moved = site_of(headers)
    assert moved != "eu"
    restamp = stamp_of(headers)
    assert restamp is not None
    assert AffinityStamp(KEYS, lifetime=600, clock=wall).decode(restamp).site == moved
    farm.snapshot = snapshot({"eu", "us", "asia"}, drained=["eu"])
    _, headers = await call(app, cookie=f"farm_site={token}")
    assert site_of(headers) != "eu"
    # a client stamped for eu whose eu is back goes to eu again
    farm.snapshot = snapshot({"eu", "us", "asia"})
    _, headers = await call(app, cookie=f"farm_site={token}")
    assert site_of(headers) == "eu"


async def test_a_forged_or_foreign_stamp_is_ignored() -> None:
    wall = Wall()
    farm = FakeFarm(snapshot({"eu", "us", "asia"}))
    app = cookie_app(farm, wall)
    forged = AffinityStamp(["not-our-key"], clock=wall).encode("eu")
    unknown = AffinityStamp(KEYS, lifetime=600, clock=wall).encode("evil")
    for cookie in (f"farm_site={forged}", f"farm_site={unknown}", "farm_site=garbage", "x"):
        _, headers = await call(app, cookie=cookie)
        assert site_of(headers) in {"eu", "us", "asia"}
        assert stamp_of(headers) is not None  # placed anew


async def test_a_host_stamp_and_a_parent_domain_stamp_the_first_valid_wins() -> None:
    wall = Wall()
    app = cookie_app(FakeFarm(snapshot({"eu", "us", "asia"})), wall)
    stamps = AffinityStamp(KEYS, lifetime=600, clock=wall)
    cookie = f"farm_site=bad; farm_site={stamps.encode('us')}; farm_site={stamps.encode('eu')}"
    for _ in range(3):
        assert site_of((await call(app, cookie=cookie))[1]) == "us"


async def test_rules_site_map_respects_affinity_and_stamps_its_choice() -> None:
    wall = Wall()
    farm = FakeFarm(snapshot({"eu", "us", "asia"}, rules=RULES))
    app = cookie_app(farm, wall)
    status, headers = await call(app, "/region/x")
    assert status == 302
    token = stamp_of(headers)
    assert token is not None
    placed = AffinityStamp(KEYS, lifetime=600, clock=wall).decode(token).site
    assert placed.startswith("r-")
    target = location(headers)
    for _ in range(5):
        _, again = await call(app, "/region/x", cookie=f"farm_site={token}")
        assert location(again) == target
    # a rule's declared target is not a site: no stamp
    status, headers = await call(app, "/declared")
    assert (status, location(headers)) == (301, "https://partner.example.org/landing")
    assert stamp_of(headers) is None


async def test_each_redirect_is_counted_for_why_its_site_was_chosen() -> None:
    """``affinity`` when the client's stamp chose the site (a rewrite the default pool then
    places included), ``placed`` when placement did (a new client, a stamp whose site is
    down), ``rules`` when a rule's ``${site:POOL}`` did, even where the stamp chose within
    that pool; a rule's declared target is no site and counts nowhere."""
    wall = Wall()
    rules = RULES + "RewriteRule ^/old$ /new\n"
    farm = FakeFarm(snapshot({"eu", "us", "asia"}, rules=rules))
    app = cookie_app(farm, wall)
    counts = RedirectCounts()
    counts.follow(farm.snapshot.placed)
    stamps = AffinityStamp(KEYS, lifetime=600, clock=wall)
    eu, r_us = (f"farm_site={stamps.encode(site)}" for site in ("eu", "r-us"))
    expected = {name: [0, 0, 0] for name in ("eu", "us", "asia", "r-eu", "r-us", "r-asia")}
    for path in ("/page", "/page", "/old"):
        assert site_of((await call(app, path, cookie=eu))[1]) == "eu"
        expected["eu"][AFFINITY] += 1
    for path in ("/page", "/old"):
        expected[site_of((await call(app, path))[1])][PLACED] += 1
    _, headers = await call(app, "/region/x", cookie=r_us)
    assert location(headers) == "http://us.example.com/r/r/x"  # (the stamp's site)
    expected["r-us"][BY_RULES] += 1
    _, headers = await call(app, "/region/y")
    expected[stamps.decode(stamp_of(headers) or "").site][BY_RULES] += 1
    assert (await call(app, "/declared"))[0] == 301
    farm.snapshot = snapshot({"us", "asia"}, rules=rules)  # eu is down
    counts.follow(farm.snapshot.placed)
    _, headers = await call(app, cookie=eu)
    expected[site_of(headers)][PLACED] += 1
    assert counts.splits() == {n: tuple(c) for n, c in expected.items() if any(c)}
    assert counts.get("eu") == 4


# --- network affinity ---------------------------------------------------------------------


async def test_network_affinity_keeps_a_client_network_on_one_site() -> None:
    farm = FakeFarm(snapshot({"eu", "us", "asia"}, affinity="network"))
    app = DispatchApp(farm)  # (network affinity is the snapshot's: no edge affinity)
    first = site_of((await call(app, client="198.51.100.7"))[1])
    for host in (7, 8, 200, 254):
        _, headers = await call(app, client=f"198.51.100.{host}")
        assert site_of(headers) == first
        assert stamp_of(headers) is None
    seen = Counter([site_of((await call(app, client=f"203.0.{n}.1"))[1]) for n in range(60)])
    assert set(seen) == {"eu", "us", "asia"}  # other networks spread over the sites
    farm.snapshot = snapshot({"eu", "us", "asia"} - {first}, affinity="network")
    moved = site_of((await call(app, client="198.51.100.9"))[1])
    assert moved != first
    again = site_of((await call(app, client="198.51.100.10"))[1])
    assert again == moved  # the whole network moved together
    farm.snapshot = snapshot({"eu", "us", "asia"}, affinity="network")
    assert site_of((await call(app, client="198.51.100.9"))[1]) == first  # and comes back


async def test_network_affinity_needs_no_shared_state_between_replicas() -> None:
    # two dispatchers (separate snapshots, separate policies, different histories) agree
    one = DispatchApp(FakeFarm(snapshot({"eu", "us", "asia"}, affinity="network")))
    two = DispatchApp(FakeFarm(snapshot({"eu", "us", "asia"}, affinity="network")))
    for _ in range(5):  # one has served others before: its rotation moved on
        await call(one, client="192.0.2.1")
    for n in range(40):
        client = f"10.{n}.{n * 7 % 256}.9"
        assert site_of((await call(one, client=client))[1]) == site_of(
            (await call(two, client=client))[1]
        )


async def test_network_affinity_without_an_address_falls_back_to_the_policy() -> None:
    app = DispatchApp(FakeFarm(snapshot({"eu", "us", "asia"}, affinity="network")))
    seen = {site_of((await call(app, client="not-an-ip"))[1]) for _ in range(6)}
    assert seen == {"eu", "us", "asia"}


@pytest.mark.parametrize(
    ("address", "v4", "v6", "network"),
    [
        ("192.0.2.77", 24, 64, "192.0.2.0/24"),
        ("192.0.2.77", 16, 64, "192.0.0.0/16"),
        ("192.0.2.77", 32, 64, "192.0.2.77/32"),
        ("2001:db8:1:2:3:4:5:6", 24, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", 24, 48, "2001:db8:1::/48"),
        ("fe80::1%eth0", 24, 64, "fe80::/64"),
        ("::ffff:192.0.2.1", 24, 64, "::/64"),
        ("bogus", 24, 64, None),
        ("1.2.3", 24, 64, None),
    ],
)
def test_client_network(address: str, v4: int, v6: int, network: str | None) -> None:
    assert client_network(address, v4, v6) == network


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dispatcher", "path"),
    [
        ({"affinity": "cookie"}, "dispatcher.affinity"),
        ({"affinity": "sticky"}, "dispatcher.affinity"),
        ({"affinity_lifetime": 0}, "dispatcher.affinity_lifetime"),
        ({"affinity_lifetime": True}, "dispatcher.affinity_lifetime"),
        ({"affinity_netmask": 33}, "dispatcher.affinity_netmask"),
        ({"affinity_netmask6": 129}, "dispatcher.affinity_netmask6"),
        ({"cookie_domain": "bad domain"}, "dispatcher.cookie_domain"),
        ({"handoff_name": ""}, "dispatcher.handoff_name"),
        ({"handoff_lifetime": 61}, "dispatcher.handoff_lifetime"),
    ],
)
def test_bad_affinity_settings_name_the_key(dispatcher: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"dispatcher": {"admin_tokens": ["t"], **dispatcher}}, environ={})
    assert caught.value.path == path


def test_cookie_affinity_takes_its_keys_from_the_environment() -> None:
    config = build_config(
        {"dispatcher": {"admin_tokens": ["t"], "affinity": "cookie", "cookie_domain": ".ex.com"}},
        environ={"FARM_SECRET_KEYS": "a,b"},
    )
    settings = config.dispatcher
    affinity = make_affinity(
        settings.affinity,
        settings.secret_keys,
        lifetime=settings.affinity_lifetime,
        cookie_domain=settings.cookie_domain,
    )
    assert isinstance(affinity, CookieAffinity)
    assert affinity.domain == ".ex.com"


# --- the hand-off relay -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "token", "rest"),
    [
        (b"farm_handoff=T", "T", b""),
        (b"a=1&farm_handoff=T&b=2", "T", b"a=1&b=2"),
        (b"farm_handoff=T&farm_handoff=U&x", "T", b"x"),
        (b"a=1&farm_handoff", None, b"a=1"),
        (b"xfarm_handoff=T", None, b"xfarm_handoff=T"),
        (b"a=%20&&b", None, b"a=%20&&b"),
    ],
)
def test_split_handoff(query: bytes, token: str | None, rest: bytes) -> None:
    assert split_handoff(query) == (token, rest)


@given(st.lists(st.text(string.ascii_letters + "=%+", max_size=6), max_size=6))
def test_split_handoff_keeps_every_other_parameter_in_order(parts: list[str]) -> None:
    kept = [p for p in parts if not (p.startswith("farm_handoff=") or p == "farm_handoff")]
    query = "&".join([*parts[:2], "farm_handoff=TOKEN", *parts[2:]]).encode()
    token, rest = split_handoff(query)
    assert rest == "&".join(kept).encode()
    assert token is not None


def relay_app(farm: FakeFarm) -> tuple[DispatchApp, HandoffToken]:
    tokens = HandoffToken(KEYS, lifetime=30)
    relay = HandoffRelay(tokens, name="dispatcher", guard=ReplayGuard.for_tokens(tokens))
    return DispatchApp(farm, relay=relay), tokens


async def test_the_relay_reissues_a_token_for_the_chosen_site_once() -> None:
    farm = FakeFarm(snapshot({"eu"}))
    app, tokens = relay_app(farm)
    token = tokens.encode("dispatcher", {"cart": ["tea"]})
    status, headers = await call(app, "/cart", b"a=1&farm_handoff=" + token.encode() + b"&b=2")
    target = location(headers)
    assert status == 307
    assert target.startswith("http://eu.example.com/cart?a=1&b=2&farm_handoff=")
    fresh = target.rsplit("farm_handoff=", 1)[1]
    assert fresh != token
    assert tokens.decode(fresh, target="eu").session == {"cart": ["tea"]}
    assert dict(headers)[b"cache-control"] == b"no-store"
    assert dict(headers)[b"referrer-policy"] == b"no-referrer"
    # the same token again: replayed, dropped; the client is placed without it
    status, headers = await call(app, "/cart", b"farm_handoff=" + token.encode())
    assert (status, location(headers)) == (302, "http://eu.example.com/cart")
    assert app.relay is not None
    assert app.relay.stats["dropped_TokenReplayed"] == 1


async def test_the_relay_drops_tokens_not_bound_to_it() -> None:
    farm = FakeFarm(snapshot({"eu"}))
    app, tokens = relay_app(farm)
    for token in (
        tokens.encode("eu", {"x": 1}),
        "forged",
        HandoffToken(["x"]).encode("dispatcher", {}),
    ):
        status, headers = await call(app, "/p", b"farm_handoff=" + token.encode())
        assert (status, location(headers)) == (302, "http://eu.example.com/p")
    farm.snapshot = snapshot(set())  # nowhere to go: the sorry page, no token anywhere
    status, headers = await call(
        app, "/p", b"farm_handoff=" + tokens.encode("dispatcher", {}).encode()
    )
    assert status == 503
    assert b"location" not in dict(headers)


# --- open redirects -----------------------------------------------------------------------

ALLOWED = (
    *tuple(s.base_url for s in SITES),
    "http://sorry.example.org",
    "https://partner.example.org/landing",
)
CRAFTED_PATHS = [
    "//evil.example/x",
    "/%2F%2Fevil.example",
    "/\\evil.example",
    "/%0d%0aLocation:%20http://evil.example",
    "/region/%0d%0aSet-Cookie:x=1",
    "/region//evil.example",
    "/region/http://evil.example",
    "/@evil.example",
    "/..//evil.example",
]
CRAFTED_HOSTS = [b"evil.example", b"eu.example.com", b"www.example.com\r\nX: y", b"", b"@evil"]


def assert_safe(status: int, headers: list[tuple[bytes, bytes]]) -> None:
    if b"location" not in dict(headers):
        assert status in (400, 403, 404, 410, 500, 503)
        return
    target = location(headers)
    assert "\r" not in target
    assert "\n" not in target
    assert any(target == a or target.startswith((a + "/", a + "?")) for a in ALLOWED), target


async def test_crafted_requests_are_only_sent_to_sites_or_declared_targets() -> None:
    wall = Wall()
    farm = FakeFarm(snapshot({"eu", "us", "asia"}, rules=RULES))
    app = cookie_app(farm, wall)
    forged = [
        AffinityStamp(KEYS, lifetime=600, clock=wall).encode("evil"),
        AffinityStamp(["attacker"], clock=wall).encode("eu"),
    ]
    for path in CRAFTED_PATHS:
        for host in CRAFTED_HOSTS:
            for cookie in (None, *(f"farm_site={t}" for t in forged)):
                assert_safe(*await call(app, path, host=host, cookie=cookie))


@settings(max_examples=300, deadline=None)
@given(
    path=st.text(alphabet=string.printable + "\u00e9\u2028", max_size=40).map(lambda p: "/" + p),
    query=st.binary(max_size=30),
    host=st.binary(max_size=30),
    cookie=st.text(alphabet=string.printable, max_size=60),
)
async def test_no_request_redirects_outside_the_farm(
    path: str, query: bytes, host: bytes, cookie: str
) -> None:
    wall = Wall()
    farm = FakeFarm(snapshot({"eu", "us", "asia"}, rules=RULES))
    app = cookie_app(farm, wall)
    assert_safe(*await call(app, path, query, host=host, cookie=cookie))
