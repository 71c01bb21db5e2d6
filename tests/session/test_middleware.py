"""Both middleware shapes for real, one behavioural suite: a Starlette app and a plain ASGI app
behind uvicorn, a plain WSGI app behind wsgiref, each on a loopback port, driven by httpx.

The clients keep no cookies: each test sends the ``Cookie`` header it means to send.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import pytest

from dispatcher.session import (
    HandoffTarget,
    HandoffToken,
    RequestInfo,
    SessionMiddleware,
    StateCodec,
    WSGISessionMiddleware,
    url_state_codec,
    with_state,
)
from dispatcher.session.core import SESSION_SALT

from .support import (
    Served,
    UvicornThread,
    WSGIRefThread,
    forwarded_proto,
    plain_asgi_app,
    plain_wsgi_app,
    starlette_app,
)

KEYS = ["old-key", "new-key"]
ELSEWHERE = "http://127.0.0.1:9"  # only ever written into Location headers, never contacted


@dataclass
class Site:
    """One shape, served: its base URL, its middleware (for ``stats``) and a client."""

    shape: str
    url: str
    middleware: SessionMiddleware | WSGISessionMiddleware
    client: httpx.Client

    def get(self, target: str, cookie: str | None = None, *, https: bool = False) -> httpx.Response:
        headers = {"x-forwarded-proto": "https"} if https else {}
        if cookie is not None:
            headers["cookie"] = cookie
        return self.client.get(target, headers=headers)

    def stat(self, name: str) -> int:
        return self.middleware.stats[name]


def chooser(own: dict[str, str]) -> Any:
    """``/leave...`` goes to site "us" elsewhere; ``/move...`` to site "eu" (this server)."""

    def send_elsewhere(request: RequestInfo) -> HandoffTarget | None:
        if request.path.startswith("/leave"):
            return HandoffTarget("us", ELSEWHERE + "/")
        if request.path.startswith("/move"):
            return HandoffTarget("eu", own["url"])
        return None

    return send_elsewhere


def _serve(shape: str, own: dict[str, str]) -> tuple[Served, Any]:
    options: dict[str, Any] = {"site": "eu", "send_elsewhere": chooser(own)}
    if shape == "wsgi":
        wsgi = WSGISessionMiddleware(plain_wsgi_app, KEYS, **options)
        return WSGIRefThread(forwarded_proto(wsgi)), wsgi
    asgi = SessionMiddleware(
        starlette_app() if shape == "starlette" else plain_asgi_app, KEYS, **options
    )
    return UvicornThread(asgi), asgi


@pytest.fixture(scope="module", params=["starlette", "asgi", "wsgi"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    own: dict[str, str] = {}
    served, middleware = _serve(request.param, own)
    own["url"] = served.url
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    client = httpx.Client(
        base_url=served.url, cookies=jar, follow_redirects=False, timeout=5, trust_env=False
    )
    try:
        yield Site(request.param, served.url, middleware, client)
    finally:
        client.close()
        served.stop()


def session_header(response: httpx.Response) -> str | None:
    """The one ``Set-Cookie`` for ``farm_session`` in ``response``, if any."""
    found = [v for v in response.headers.get_list("set-cookie") if v.startswith("farm_session=")]
    assert len(found) <= 1
    return found[0] if found else None


def attributes(header: str) -> dict[str, str]:
    parts = [part.strip() for part in header.split(";")[1:]]
    return {k.lower(): v for k, _, v in (part.partition("=") for part in parts)}


def cookie_of(response: httpx.Response) -> str:
    header = session_header(response)
    assert header is not None
    return header.split(";")[0]


def session_codec(**options: Any) -> StateCodec:
    return StateCodec(KEYS, salt=SESSION_SALT, **options)


# --- reading and writing ----------------------------------------------------------------


def test_a_new_client_gets_an_empty_session_and_no_cookie(site: Site) -> None:
    response = site.get("/show")
    assert response.status_code == 200
    assert response.json()["session"] == {}
    assert session_header(response) is None


def test_a_change_is_written_with_the_cookie_attributes(site: Site) -> None:
    response = site.get("/set?key=user&value=alice")
    header = session_header(response)
    assert header is not None
    attrs = attributes(header)
    assert attrs == {"path": "/", "max-age": "1209600", "httponly": "", "samesite": "Lax"}
    token = header.split(";")[0].partition("=")[2]
    assert session_codec().loads(token) == {"user": "alice"}


def test_secure_when_the_request_came_over_https(site: Site) -> None:
    header = session_header(site.get("/set?key=k&value=v", https=True))
    assert header is not None
    assert "secure" in attributes(header)


def test_the_session_comes_back_and_is_not_rewritten_when_unchanged(site: Site) -> None:
    cookie = cookie_of(site.get("/set?key=user&value=alice"))
    response = site.get("/show", cookie)
    assert response.json()["session"] == {"user": "alice"}
    assert session_header(response) is None
    same = site.get("/set?key=user&value=alice", cookie)
    assert session_header(same) is None


def test_nested_mutation_counts_as_a_change(site: Site) -> None:
    cookie = cookie_of(site.get("/append?value=a"))
    response = site.get("/append?value=b", cookie)
    assert response.json()["session"] == {"items": ["a", "b"]}
    assert session_codec().loads(cookie_of(response).partition("=")[2]) == {"items": ["a", "b"]}


def test_clearing_the_session_deletes_the_cookie(site: Site) -> None:
    cookie = cookie_of(site.get("/set?key=user&value=alice"))
    header = session_header(site.get("/clear", cookie))
    assert header is not None
    assert header.startswith("farm_session=;")
    assert attributes(header)["max-age"] == "0"
    assert attributes(header)["path"] == "/"
    assert session_header(site.get("/clear")) is None


@pytest.mark.parametrize(
    "cookie",
    [
        "farm_session=garbage",
        "farm_session=",
        "farm_session=eyJhIjoxfQ.AAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "farm_session=" + StateCodec("another-key", salt=SESSION_SALT).dumps({"admin": True}),
        "farm_session=" + StateCodec(KEYS, salt="webfarm.url-state").dumps({"admin": True}),
        "farm_session=" + session_codec(clock=lambda: time.time() - 30 * 86400).dumps({"a": 1}),
        "farm_session=" + session_codec().dumps(["not", "an", "object"]),
    ],
    ids=["garbage", "empty", "bad-signature", "other-key", "other-salt", "expired", "not-dict"],
)
def test_a_bad_cookie_gives_an_empty_session_is_counted_and_deleted(
    site: Site, cookie: str
) -> None:
    before = site.stat("bad_cookie")
    response = site.get("/show", cookie)
    assert response.status_code == 200
    assert response.json()["session"] == {}
    assert site.stat("bad_cookie") == before + 1
    header = session_header(response)
    assert header is not None
    assert header.startswith("farm_session=;")


def test_a_tampered_cookie_is_replaced_when_the_app_writes(site: Site) -> None:
    token = session_codec().dumps({"user": "alice"})
    response = site.get("/set?key=user&value=mallory", f"farm_session={token[:-2]}xx")
    assert response.json()["session"] == {"user": "mallory"}
    assert session_codec().loads(cookie_of(response).partition("=")[2]) == {"user": "mallory"}


def test_with_two_cookies_of_the_name_the_valid_one_wins(site: Site) -> None:
    good = session_codec().dumps({"user": "alice"})
    response = site.get("/show", f"other=1; farm_session=stale; farm_session={good}")
    assert response.json()["session"] == {"user": "alice"}


def test_a_session_too_large_for_a_cookie_is_an_error_not_a_cut(site: Site) -> None:
    response = site.get("/big?size=4000")
    assert response.status_code == 500
    assert session_header(response) is None


# --- state in the URL -------------------------------------------------------------------


def test_url_state_is_accepted_and_installed_as_a_cookie(site: Site) -> None:
    url = with_state("/show?a=1", {"user": "bob"}, url_state_codec(KEYS))
    response = site.get(url)
    assert response.json()["session"] == {"user": "bob"}
    assert session_codec().loads(cookie_of(response).partition("=")[2]) == {"user": "bob"}


def test_url_state_from_the_middleware_codec_round_trips(site: Site) -> None:
    url = with_state("/show", {"n": 1}, site.middleware.url_codec)
    assert site.get(url).json()["session"] == {"n": 1}


def test_a_valid_cookie_wins_over_url_state(site: Site) -> None:
    url = with_state("/show", {"user": "bob"}, url_state_codec(KEYS))
    cookie = "farm_session=" + session_codec().dumps({"user": "alice"})
    assert site.get(url, cookie).json()["session"] == {"user": "alice"}


def test_bad_url_state_gives_an_empty_session_and_is_counted(site: Site) -> None:
    before = site.stat("bad_url_state")
    cookie_token = session_codec().dumps({"user": "bob"})
    response = site.get(f"/show?farm_state={cookie_token}")
    assert response.json()["session"] == {}
    assert site.stat("bad_url_state") == before + 1


# --- hand-off ---------------------------------------------------------------------------


def handoff(target: str = "eu", session: dict[str, Any] | None = None, **options: Any) -> str:
    return HandoffToken(KEYS, **options).encode(target, session or {"user": "carol"})


def test_a_handoff_installs_the_session_and_redirects_without_the_token(site: Site) -> None:
    before = site.stat("handoff_accepted")
    response = site.get(f"/cart?a=1&farm_handoff={handoff()}&b=%20x#frag")
    assert response.status_code == 307
    assert response.headers["location"] == "/cart?a=1&b=%20x"
    assert response.headers["cache-control"] == "no-store"
    token = cookie_of(response).partition("=")[2]
    assert session_codec().loads(token) == {"user": "carol"}
    assert site.stat("handoff_accepted") == before + 1
    followed = site.get(response.headers["location"], cookie_of(response))
    assert followed.json() == {"session": {"user": "carol"}, "target": "/cart?a=1&b=%20x"}


def test_a_handoff_alone_in_the_query_leaves_no_question_mark(site: Site) -> None:
    response = site.get(f"/cart?farm_handoff={handoff()}")
    assert response.headers["location"] == "/cart"


def test_a_handoff_over_https_installs_a_secure_cookie(site: Site) -> None:
    response = site.get(f"/?farm_handoff={handoff()}", https=True)
    header = session_header(response)
    assert header is not None
    assert "secure" in attributes(header)


def test_a_replayed_handoff_is_rejected(site: Site) -> None:
    token = handoff()
    assert session_header(site.get(f"/?farm_handoff={token}")) is not None
    before = site.stat("handoff_replayed")
    replay = site.get(
        f"/x?farm_handoff={token}", "farm_session=" + session_codec().dumps({"me": 1})
    )
    assert replay.status_code == 307
    assert replay.headers["location"] == "/x"
    assert session_header(replay) is None
    assert site.stat("handoff_replayed") == before + 1


@pytest.mark.parametrize(
    ("token", "counter"),
    [
        (lambda: handoff(target="us"), "handoff_wrong_target"),
        (lambda: handoff(clock=lambda: time.time() - 120, lifetime=60), "handoff_expired"),
        (lambda: HandoffToken("another-key").encode("eu", {"a": 1}), "handoff_bad"),
        (lambda: session_codec().dumps({"user": "x"}), "handoff_bad"),
        (lambda: "garbage", "handoff_bad"),
    ],
    ids=["other-site", "expired", "other-key", "session-token", "garbage"],
)
def test_a_bad_handoff_installs_nothing_and_still_strips_the_token(
    site: Site, token: Any, counter: str
) -> None:
    before = site.stat(counter)
    response = site.get(f"/p?farm_handoff={token()}&q=1")
    assert response.status_code == 307
    assert response.headers["location"] == "/p?q=1"
    assert session_header(response) is None
    assert site.stat(counter) == before + 1


def test_a_site_sends_a_client_elsewhere_with_its_session(site: Site) -> None:
    cookie = "farm_session=" + session_codec().dumps({"user": "dave"})
    response = site.get("/leave/x?y=1&farm_state=zzz", cookie)
    assert response.status_code == 307
    location = response.headers["location"]
    assert location.startswith(f"{ELSEWHERE}/leave/x?y=1&farm_handoff=")
    moved = HandoffToken(KEYS).decode(location.rpartition("=")[2], target="us")
    assert moved.session == {"user": "dave"}


def test_an_empty_session_is_sent_elsewhere_without_a_token(site: Site) -> None:
    response = site.get("/leave?y=1")
    assert response.headers["location"] == f"{ELSEWHERE}/leave?y=1"


def test_the_session_moves_to_another_client_through_the_handoff(site: Site) -> None:
    cookie = cookie_of(site.get("/set?key=user&value=erin"))
    sent = site.get("/move/here?k=v", cookie)
    assert sent.status_code == 307
    arrived = site.client.get(sent.headers["location"])  # a client with no cookie at all
    assert arrived.status_code == 307
    assert arrived.headers["location"] == "/move/here?k=v"
    new_cookie = cookie_of(arrived)
    assert session_codec().loads(new_cookie.partition("=")[2]) == {"user": "erin"}
