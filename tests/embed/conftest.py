"""The embedding tests' farm: site "us" on uvicorn, the standalone dispatcher (optional), and
site "eu", an app in one shape behind its middleware on a real server, all on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx
import pytest

from dispatcher.backends.store import SqlSiteStore
from dispatcher.embed import DispatcherMiddleware, EmbeddedDispatcher, WSGIDispatcherMiddleware
from dispatcher.session import AffinityStamp, SessionMiddleware, WSGISessionMiddleware
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

#: The same Host to both dispatchers: relative redirects agree.
HOST = {"host": "www.example.com"}
SHAPES = ["starlette", "flask"]


@dataclass
class Farm:
    """The standalone dispatcher (if started), the embedded one ("eu", served at ``site``),
    its middleware, and "us"."""

    shape: str
    standalone: RunningDispatcher | None
    site: httpx.AsyncClient
    embedded: EmbeddedDispatcher
    middleware: DispatcherMiddleware | WSGIDispatcherMiddleware
    us: LoopbackSite
    served: Served

    async def get(self, target: str, cookie: str | None = None) -> httpx.Response:
        """GET ``target`` from "eu" as a new client (no cookie but ``cookie``)."""
        self.site.cookies.clear()  # (httpx keeps cookies; each request is a client of its own)
        headers = dict(HOST) if cookie is None else {**HOST, "cookie": cookie}
        return await self.site.get(target, headers=headers)

    async def both(
        self, target: str, cookie: str | None = None, method: str = "GET"
    ) -> tuple[httpx.Response, httpx.Response]:
        """The same request to the standalone dispatcher and to "eu"."""
        assert self.standalone is not None
        headers = dict(HOST) if cookie is None else {**HOST, "cookie": cookie}
        self.standalone.public.cookies.clear()
        self.site.cookies.clear()
        alone = await self.standalone.public.request(method, target, headers=headers)
        here = await self.site.request(method, target, headers=headers)
        return alone, here

    def all_up(self) -> bool:
        """Every site up, for the embedded dispatcher and the standalone one (if any)."""
        core = self.embedded.core
        if core is None:
            return False
        snapshots = [core.farm.snapshot]
        if self.standalone is not None:
            snapshots.append(self.standalone.runner.farm.snapshot)
        return all(s.health.state == "up" for snap in snapshots for s in snap.sites.values())


class Start(Protocol):
    async def __call__(
        self,
        shape: str,
        *,
        database_url: str | None = None,
        standalone: bool = True,
        upgrade: bool = True,
        wait: bool = True,
    ) -> Farm: ...


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start a farm: "us", the standalone dispatcher (unless not ``standalone``), then
    "eu" in ``shape``; wait until every site is up for both, unless not ``wait``. The
    database (SQLite in ``tmp_path`` unless ``database_url``) is brought to head first,
    unless not ``upgrade``."""
    stops: list[Callable[[], Awaitable[Any]]] = []

    async def go(
        shape: str,
        *,
        database_url: str | None = None,
        standalone: bool = True,
        upgrade: bool = True,
        wait: bool = True,
    ) -> Farm:
        us = LoopbackSite("us")
        await us.start()
        stops.append(us.stop)
        sock = listening()
        url = database_url or f"sqlite:///{tmp_path / 'farm.db'}"
        config = farm_config(tmp_path, url, eu=url_of(sock), us=us.url)
        alone = None
        if upgrade and not standalone:
            store = SqlSiteStore(url)
            store.upgrade()
            store.close()
        if standalone:
            alone = RunningDispatcher(await RunningDispatcher.start_runner(config, upgrade=upgrade))
            stops.append(alone.close)
        served, middleware = await anyio.to_thread.run_sync(serve, shape, config, sock)
        stops.append(lambda: anyio.to_thread.run_sync(served.stop))
        if isinstance(middleware, WSGIDispatcherMiddleware):
            stops.append(lambda: anyio.to_thread.run_sync(middleware.close))
        client = httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=5)
        stops.append(client.aclose)
        farm = Farm(shape, alone, client, middleware.dispatcher, middleware, us, served)
        if wait:
            await until(farm.all_up, "every site up for both dispatchers")
        return farm

    yield go
    for stop in reversed(stops):
        await stop()


def serve(
    shape: str, config: Path, sock: socket.socket
) -> tuple[Served, DispatcherMiddleware | WSGIDispatcherMiddleware]:
    """Site "eu" in ``shape`` behind its middleware, served on ``sock``: Starlette on
    uvicorn (the farm starts with lifespan), Flask on waitress (the farm starts with
    :meth:`start` once it serves); the session middleware of the shape inside."""
    if shape == "starlette":
        sessions = SessionMiddleware(starlette_site(), [KEYS], site="eu")
        asgi = DispatcherMiddleware(sessions, config, site="eu")
        return UvicornServer(asgi, sock), asgi
    flask = flask_site()
    # (its StartResponse protocol is its own, not wsgiref.types', which Flask uses)
    inner = WSGISessionMiddleware(flask.wsgi_app, [KEYS], site="eu")  # type: ignore[arg-type]
    wsgi = WSGIDispatcherMiddleware(inner, config, site="eu")
    flask.wsgi_app = wsgi  # type: ignore[method-assign]
    served = WaitressServer(flask, sock)
    wsgi.start()
    return served, wsgi


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait (without blocking the loop) until ``condition`` holds; fail after ``timeout``."""
    with anyio.move_on_after(timeout):
        while not condition():
            await anyio.sleep(0.05)
    assert condition(), f"waited {timeout} s for {what}"


def cookie_names(response: httpx.Response) -> list[str]:
    return sorted(v.split("=", 1)[0] for v in response.headers.get_list("set-cookie"))


def stamp(site: str) -> str:
    """A ``Cookie`` header value with a valid affinity stamp for ``site``."""
    return AffinityStamp([KEYS], lifetime=3600).cookie(site, secure=False).split(";")[0]
