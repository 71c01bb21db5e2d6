"""Both middleware shapes for real: a Starlette app on uvicorn and a Flask app on waitress,
each the registered site "eu" behind its middleware, beside the standalone dispatcher on the
same configuration and database, all on loopback and driven by httpx.

The key check: request for request, the embedded dispatcher's answer is the standalone one's
(status, ``Location``, the names of the cookies set), except where placement keeps the client
on "eu": there the app answers, with the path and query the redirect would have carried.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from dispatcher.embed import DispatcherMiddleware, EmbeddedDispatcher, WSGIDispatcherMiddleware
from dispatcher.session import AffinityStamp
from tests.conftest import LoopbackSite, RunningDispatcher

from .support import (
    KEYS,
    Served,
    UvicornServer,
    WaitressServer,
    farm_config,
    flask_site,
    listening,
    starlette_site,
    url_of,
)

pytestmark = pytest.mark.anyio
HOST = {"host": "www.example.com"}  # the same Host to both: relative redirects agree


@dataclass
class Farm:
    """The standalone dispatcher, the embedded one (``site`` is its server) and "us"."""

    shape: str
    standalone: RunningDispatcher
    site: httpx.AsyncClient
    embedded: EmbeddedDispatcher
    us: LoopbackSite

    async def both(
        self, target: str, cookie: str | None = None, method: str = "GET"
    ) -> tuple[httpx.Response, httpx.Response]:
        headers = dict(HOST)
        self.standalone.public.cookies.clear()  # (httpx keeps cookies: each request is
        self.site.cookies.clear()  # a client of its own, with the cookie it is given)
        if cookie is not None:
            headers["cookie"] = cookie
        alone = await self.standalone.public.request(method, target, headers=headers)
        here = await self.site.request(method, target, headers=headers)
        return alone, here


def cookie_names(response: httpx.Response) -> list[str]:
    return sorted(v.split("=", 1)[0] for v in response.headers.get_list("set-cookie"))


def latin1(text: str) -> str:
    """``text``'s UTF-8 bytes as latin-1 characters: how PEP 3333 carries them."""
    return text.encode("utf-8").decode("latin-1")


def stamp(site: str) -> str:
    return AffinityStamp([KEYS], lifetime=3600).cookie(site, secure=False).split(";")[0]


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)
    assert condition(), what


def serve(shape: str, config: Path, sock: object) -> tuple[Served, EmbeddedDispatcher, object]:
    """The site "eu" in ``shape`` behind its middleware, on ``sock``."""
    if shape == "starlette":
        asgi = DispatcherMiddleware(starlette_site(), config, site="eu")
        return UvicornServer(asgi, sock), asgi.dispatcher, asgi  # type: ignore[arg-type]
    flask = flask_site()
    wsgi = WSGIDispatcherMiddleware(flask.wsgi_app, config, site="eu")
    flask.wsgi_app = wsgi  # type: ignore[method-assign]
    served = WaitressServer(flask, sock)  # type: ignore[arg-type]
    wsgi.start()
    return served, wsgi.dispatcher, wsgi


Start = Callable[[str], Awaitable[Farm]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start a farm in a shape: "us" on uvicorn, the standalone dispatcher, then "eu"."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def go(shape: str) -> Farm:
        us = LoopbackSite("us")
        await us.start()
        stops.append(us.stop)
        sock = listening()
        config = farm_config(
            tmp_path, f"sqlite:///{tmp_path / 'farm.db'}", eu=url_of(sock), us=us.url
        )
        standalone = RunningDispatcher(await RunningDispatcher.start_runner(config))
        stops.append(standalone.close)
        served, embedded, middleware = await anyio.to_thread.run_sync(serve, shape, config, sock)
        stops.append(lambda: anyio.to_thread.run_sync(served.stop))
        if isinstance(middleware, WSGIDispatcherMiddleware):
            stops.append(lambda: anyio.to_thread.run_sync(middleware.close))
        client = httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=5)
        stops.append(client.aclose)
        farm = Farm(shape, standalone, client, embedded, us)
        await until(lambda: all_up(farm), "every site up for both dispatchers")
        return farm

    yield go
    for stop in reversed(stops):
        await stop()


def all_up(farm: Farm) -> bool:
    snapshots = [farm.standalone.runner.farm.snapshot]
    if farm.embedded.core is not None:
        snapshots.append(farm.embedded.core.farm.snapshot)
    return len(snapshots) == 2 and all(
        status.health.state == "up" for snap in snapshots for status in snap.sites.values()
    )


SHAPES = ["starlette", "flask"]


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
    own = await farm.site.get("/health", headers=HOST)  # its own health check: never sent away
    assert (own.status_code, own.text) == (200, "OK")


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_registry_change_in_the_database_moves_new_clients(
    start: Start, shape: str
) -> None:
    """Drained through the standalone dispatcher's admin API, "us" takes no new clients:
    the embedded dispatcher reads the same database and keeps them on "eu", stamped."""
    farm = await start(shape)
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
