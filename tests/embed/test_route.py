"""The embedded dispatcher's decision (``DispatchCore.route``), without sockets: the same
answer as the standalone dispatcher's, except that what placement keeps on this site passes
on to the app."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.affinity import CookieAffinity
from dispatcher.app import Answer, DispatchCore, Passed
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.redirect import compile_rules
from dispatcher.relay import HandoffRelay
from dispatcher.session import AffinityStamp, HandoffToken, ReplayGuard
from dispatcher.session.tokens import HANDOFF_PARAM
from dispatcher.snapshot import Snapshot, build_snapshot

KEYS = ["route-test-key"]
EU = SiteSpec("eu", "http://eu.example.com", weight=1)
US = SiteSpec("us", "http://us.example.com", weight=1)
RULES = r"""RewriteEngine on
RewriteRule ^/old$ /new [R=301,L]
RewriteRule ^/away$ http://elsewhere.example.org/x [R,L]
RewriteRule ^/secret - [F]
RewriteRule ^/legacy/(.*)$ /v2/$1?from=legacy [QSA]
RewriteRule ^/region/(.*)$ ${site:default}/r/$1 [R=302,L]
RewriteRule ^/track$ - [CO=seen:1:.example.com:60]
"""


@dataclass
class FakeFarm:
    snapshot: Snapshot


def snapshot(
    sites: Sequence[SiteSpec] = (EU, US), up: Sequence[str] = ("eu", "us"), policy: str = "failover"
) -> Snapshot:
    config = build_config(
        {"dispatcher": {"admin_tokens": ["t"]}, "pools": {"default": {"policy": policy}}},
        environ={},
    )
    return build_snapshot(
        config,
        revision=1,
        sites=sites,
        health=lambda name: Health("up" if name in up else "down", None),
        loads={},
        rules=compile_rules(RULES, known_pools={"default"}),
    )


def core(snap: Snapshot, *, stamps: bool = True, relay: bool = False) -> DispatchCore:
    affinity = None
    if stamps:
        affinity = CookieAffinity(AffinityStamp(KEYS, lifetime=600), wall=lambda: 1.75e9)
    handoffs = HandoffRelay(HandoffToken(KEYS), name="dispatcher") if relay else None
    return DispatchCore(FakeFarm(snap), affinity=affinity, relay=handoffs)


def scope(
    target: str = "/page", host: str = "www.example.com", cookie: str | None = None
) -> dict[str, Any]:
    path, _, query = target.partition("?")
    headers = [(b"host", host.encode())]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return {
        "type": "http",
        "scheme": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "client": ("192.0.2.1", 4000),
    }


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The cookie names a response sets."""
    return [v.split(b"=", 1)[0] for n, v in headers if n == b"set-cookie"]


def location(answer: Answer) -> bytes:
    return dict(answer[1])[b"location"]


def test_placement_here_passes_the_request_as_it_came_with_the_stamp() -> None:
    result = core(snapshot()).route(scope("/page?q=1"), "eu")
    assert isinstance(result, Passed)
    assert result.target == b"/page?q=1"
    assert names(result.headers) == [b"farm_site"]


def test_placement_elsewhere_is_the_standalone_answer() -> None:
    snap = snapshot((US, EU))  # failover: us first
    routed = core(snap).route(scope("/page?q=1"), "eu")
    answered = core(snap).answer(scope("/page?q=1"))
    assert not isinstance(routed, Passed)
    assert routed[0] == answered[0] == 302
    assert location(routed) == location(answered) == b"http://us.example.com/page?q=1"
    assert names(routed[1]) == names(answered[1]) == [b"farm_site"]


def test_the_host_of_this_site_is_not_kept_away_from() -> None:
    """A request comes to this site's own address: the standalone dispatcher would never
    send it there (a loop), the embedded one keeps it."""
    snap = snapshot()
    at_eu = scope("/page", host="eu.example.com")
    assert location(core(snap).answer(at_eu)) == b"http://us.example.com/page"
    assert isinstance(core(snap).route(at_eu, "eu"), Passed)


def test_a_remembered_site_elsewhere_gets_its_client_back() -> None:
    snap = snapshot()
    stamp = AffinityStamp(KEYS, lifetime=600).cookie("us", secure=False).split(";")[0]
    routed = core(snap).route(scope("/page", cookie=stamp), "eu")
    assert not isinstance(routed, Passed)
    assert location(routed) == b"http://us.example.com/page"


def test_an_internal_rewrite_kept_here_passes_rewritten() -> None:
    result = core(snapshot()).route(scope("/legacy/item?id=7"), "eu")
    assert isinstance(result, Passed)
    assert result.target == b"/v2/item?from=legacy&id=7"


def test_an_internal_rewrite_placed_elsewhere_is_redirected_rewritten() -> None:
    routed = core(snapshot((US, EU))).route(scope("/legacy/item?id=7"), "eu")
    assert not isinstance(routed, Passed)
    assert location(routed) == b"http://us.example.com/v2/item?from=legacy&id=7"


@pytest.mark.parametrize(
    ("target", "status", "where"),
    [
        ("/old", 301, b"http://eu.example.com/new"),  # relative: this site's own host
        ("/away", 302, b"http://elsewhere.example.org/x"),
        ("/secret", 403, None),
    ],
)
def test_the_rules_own_answers_are_sent_even_into_this_site(
    target: str, status: int, where: bytes | None
) -> None:
    routed = core(snapshot()).route(scope(target, host="eu.example.com"), "eu")
    assert not isinstance(routed, Passed)
    assert routed[0] == status
    assert dict(routed[1]).get(b"location") == where


def test_a_site_lookup_that_picks_this_site_passes_with_its_path() -> None:
    result = core(snapshot()).route(scope("/region/shop?x=1"), "eu")
    assert isinstance(result, Passed)
    assert result.target == b"/r/shop?x=1"
    routed = core(snapshot((US, EU))).route(scope("/region/shop?x=1"), "eu")
    assert not isinstance(routed, Passed)
    assert location(routed) == b"http://us.example.com/r/shop?x=1"


def test_the_rules_cookies_go_with_a_pass() -> None:
    result = core(snapshot(), stamps=False).route(scope("/track"), "eu")
    assert isinstance(result, Passed)
    assert names(result.headers) == [b"seen"]


def test_no_site_up_is_the_sorry_page_and_a_bad_target_a_400() -> None:
    snap = snapshot(up=())
    assert core(snap).route(scope("/page"), "eu")[0] == 503
    bad = {**scope(), "raw_path": b"http://x/", "path": "http://x/"}
    assert core(snap).route(bad, "eu")[0] == 400


def test_an_unregistered_site_is_never_passed_to() -> None:
    routed = core(snapshot()).route(scope("/page"), "asia")
    assert not isinstance(routed, Passed)
    assert location(routed) == b"http://eu.example.com/page"


def test_a_handoff_token_for_the_dispatcher_is_relayed_to_this_site_through_the_app() -> None:
    tokens = HandoffToken(KEYS)
    token = tokens.encode("dispatcher", {"cart": [1]})
    result = core(snapshot(), relay=True).route(scope(f"/p?a=1&{HANDOFF_PARAM}={token}"), "eu")
    assert isinstance(result, Passed)
    path, _, query = result.target.partition(b"?")
    assert path == b"/p"
    a, fresh = query.split(b"&")
    assert a == b"a=1"
    assert fresh.startswith(HANDOFF_PARAM.encode() + b"=")
    handoff = tokens.redeem(
        fresh.split(b"=", 1)[1].decode(), target="eu", guard=ReplayGuard.for_tokens(tokens)
    )
    assert handoff.session == {"cart": [1]}


def test_a_handoff_token_placed_elsewhere_is_the_standalone_relay() -> None:
    tokens = HandoffToken(KEYS)
    token = tokens.encode("dispatcher", {"cart": [1]})
    target = f"/p?{HANDOFF_PARAM}={token}"
    routed = core(snapshot((US, EU)), relay=True).route(scope(target), "eu")
    assert not isinstance(routed, Passed)
    assert routed[0] == 307
    fresh = location(routed).split(b"=", 1)[1].decode()
    assert tokens.redeem(fresh, target="us", guard=ReplayGuard.for_tokens(tokens)).session == {
        "cart": [1]
    }


PATHS = st.text(st.sampled_from("abc/%20é?~;="), max_size=12).map(lambda t: "/" + t)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(PATHS, st.booleans(), st.booleans()), min_size=1, max_size=25))
def test_route_is_answer_but_for_what_stays_here(requests: list[tuple[str, bool, bool]]) -> None:
    """Differential: two identical farms (weighted rotation, cookie stamps, rules), one
    asked as the standalone dispatcher, the other as the one embedded in "eu". Request for
    request, the answers are equal, except where the embedded one passes: there the
    standalone one redirects into "eu" with that target and the same cookies."""
    standalone = core(snapshot(policy="weighted"))
    embedded = core(snapshot(policy="weighted"))
    stamp = AffinityStamp(KEYS, lifetime=600)
    for target, remembered, at_eu in requests:
        cookie = stamp.cookie("us", secure=False).split(";")[0] if remembered else None
        host = "eu.example.com:81" if at_eu else "www.example.com"  # (not eu's netloc)
        expected = standalone.answer(scope(target, host, cookie))
        got = embedded.route(scope(target, host, cookie), "eu")
        if isinstance(got, Passed):
            assert location(expected) == b"http://eu.example.com" + got.target
            assert names(expected[1]) == names(got.headers)
        else:
            assert got == expected
