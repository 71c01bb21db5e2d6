"""Both middleware shapes for real: a Starlette app on uvicorn and a Flask app on waitress,
each the registered site "eu" behind its middleware, beside the standalone dispatcher on the
same configuration and database, all on loopback and driven by httpx.

The key check: request for request, the embedded dispatcher's answer is the standalone one's
(status, ``Location``, the names of the cookies set), except where placement keeps the client
on "eu": there the app answers, with the path and query the redirect would have carried.
"""

from __future__ import annotations

import json
import sys

import anyio
import pytest

from dispatcher.session import HANDOFF_PARAM, AffinityStamp, HandoffToken
from tests.embed.conftest import HOST, SHAPES, Start, cookie_names, stamp, until

from .support import KEYS

pytestmark = pytest.mark.anyio


def latin1(text: str) -> str:
    """``text``'s UTF-8 bytes as latin-1 characters: how PEP 3333 carries them."""
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize("shape", SHAPES)
async def test_the_answers_are_the_standalone_dispatchers(start: Start, shape: str) -> None:
    farm = await start(shape)
    us = farm.us.url
    cases = [
        # (target, cookie, status, location, cookie names)
        ("/page?q=1", None, 302, f"{us}/page?q=1", ["farm_site"]),
        ("/away", None, 302, "http://elsewhere.example.org/landing", []),
        ("/old", None, 301, "http://www.example.com/new", []),
        ("/secret", None, 403, None, []),
        ("/legacy/item?id=7", None, 302, f"{us}/v2/item?from=legacy&id=7", ["farm_site"]),
        ("/track", None, 302, f"{us}/track", ["farm_site", "seen"]),
        ("/page", stamp("us"), 302, f"{us}/page", []),
        ("/secret", stamp("eu"), 403, None, []),
    ]
    for target, cookie, status, location, names in cases:
        alone, here = await farm.both(target, cookie)
        for response in (alone, here):
            assert response.status_code == status, (target, response.text)
            assert response.headers.get("location") == location, target
            assert cookie_names(response) == names, target
    alone, here = await farm.both("/page", method="HEAD")
    assert (alone.status_code, alone.headers["location"]) == (302, f"{us}/page")
    assert (here.status_code, here.headers["location"]) == (302, f"{us}/page")


@pytest.mark.parametrize("shape", SHAPES)
async def test_what_stays_here_reaches_the_app_rewritten(start: Start, shape: str) -> None:
    farm = await start(shape)
    eu = str(farm.site.base_url).rstrip("/")
    cases = [
        # (target, the path and query the app sees, cookies set besides the app's own)
        ("/page?q=1", ("/page", "q=1"), []),
        ("/legacy/item?id=7", ("/v2/item", "from=legacy&id=7"), []),
        ("/a%20b/c%C3%A9?x=%2F", ("/a b/c\u00e9", "x=%2F"), []),
        ("/track", ("/track", ""), ["seen"]),
    ]
    for target, (path, query), names in cases:
        alone, here = await farm.both(target, stamp("eu"))
        assert alone.status_code == 302
        assert alone.headers["location"].startswith(eu)
        assert here.status_code == 200, (target, here.text)
        seen = here.json()
        if shape == "flask":  # PEP 3333: PATH_INFO is the path %-decoded, as latin-1
            assert (seen["path"], seen["query"]) == (latin1(path), query), target
        else:
            assert (seen["path"], seen["query"]) == (path, query), target
        assert cookie_names(here) == sorted(["app", *names]), target
        wire = alone.headers["location"][len(eu) :]
        if shape == "starlette":
            assert seen["raw_path"] + ("?" + seen["query"] if seen["query"] else "") == wire
        else:
            assert seen["request_uri"] == wire
    own = await farm.get("/health")  # its own health check: never sent away
    assert (own.status_code, own.text) == (200, "OK")


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_registry_change_in_the_database_moves_new_clients(
    start: Start, shape: str
) -> None:
    """Drained through the standalone dispatcher's admin API, "us" takes no new clients:
    the embedded dispatcher reads the same database and keeps them on "eu", stamped."""
    farm = await start(shape)
    assert farm.standalone is not None
    drained = await farm.standalone.admin.post("/api/v1/sites/us/drain")
    assert drained.status_code == 200, drained.text
    embedded = farm.embedded

    def us_drained() -> bool:
        return embedded.core is not None and embedded.core.farm.snapshot.sites["us"].spec.drained

    await until(us_drained, "the embedded dispatcher to see the drain")
    alone, here = await farm.both("/page?n=1")
    assert alone.status_code == 302
    assert alone.headers["location"] == str(farm.site.base_url).rstrip("/") + "/page?n=1"
    assert here.status_code == 200
    assert json.loads(here.text)["query"] == "n=1"
    assert cookie_names(alone) == ["farm_site"]
    assert cookie_names(here) == ["app", "farm_site"]
    placed = next(v for v in here.headers.get_list("set-cookie") if v.startswith("farm_site="))
    token = placed.split(";")[0].split("=", 1)[1]
    assert AffinityStamp([KEYS], lifetime=3600).site_of(token) == "eu"


async def test_threads_decide_each_for_their_own_client(start: Start) -> None:
    """Waitress's threads decide at once for clients remembered on "eu" and on "us", through
    a rule whose ``${site:}`` honours the stamp: each gets its own answer, every time."""
    farm = await start("flask", standalone=False)
    us = farm.us.url

    async def client(n: int, site: str) -> None:
        for i in range(15):
            response = await farm.site.get(
                f"/region/{n}-{i}", headers={**HOST, "cookie": stamp(site)}
            )
            if site == "us":
                assert response.headers["location"] == f"{us}/r/{n}-{i}"
            else:
                assert response.json()["path"] == f"/r/{n}-{i}"

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can: races show
    try:
        async with anyio.create_task_group() as group:
            for n in range(16):
                group.start_soon(client, n, "eu" if n % 2 else "us")
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_handoff_reaches_the_session_middleware_inside(start: Start, shape: str) -> None:
    """A client handed over with its session, in a token bound to the dispatcher (relayed:
    a fresh one for "eu" goes on) or to "eu" itself (left alone): the site's session
    middleware redeems it, installs the session and cleans the URL."""
    farm = await start(shape)
    tokens = HandoffToken([KEYS])
    for bound in ("dispatcher", "eu"):
        token = tokens.encode(bound, {"cart": [bound]})
        redeemed = await farm.get(f"/basket?x=1&{HANDOFF_PARAM}={token}", stamp("eu"))
        assert redeemed.status_code == 307, redeemed.text
        assert redeemed.headers["location"] == "/basket?x=1"
        header = next(
            v for v in redeemed.headers.get_list("set-cookie") if v.startswith("farm_session=")
        )
        cookie = header.split(";")[0]
        page = await farm.get("/basket?x=1", f"{stamp('eu')}; {cookie}")
        assert page.json()["session"] == {"cart": [bound]}
