"""When the farm of an embedding site runs: with the ASGI server's lifespan (whether or not
the app speaks it), on the first request without lifespan, and in the WSGI middleware's
thread until ``close``."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dispatcher.asgi import Receive, Scope, Send
from dispatcher.backends.store import SqlSiteStore
from dispatcher.embed import DispatcherMiddleware, WSGIDispatcherMiddleware
from tests.conftest import LoopbackSite
from tests.embed.conftest import HOST, until

from .support import UvicornServer, WaitressServer, farm_config, listening, url_of

pytestmark = pytest.mark.anyio


@pytest.fixture
async def us() -> AsyncIterator[LoopbackSite]:
    site = LoopbackSite("us")
    await site.start()
    yield site
    await site.stop()


def config_for(tmp_path: Path, us: LoopbackSite, eu: str) -> Path:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    store = SqlSiteStore(url)
    store.upgrade()
    store.close()
    return farm_config(tmp_path, url, eu=eu, us=us.url)


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A plain ASGI app that knows only HTTP (returns at once on anything else)."""
    if scope["type"] != "http":
        return
    body = b"OK" if scope["path"] == "/health" else b"app"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_an_app_without_lifespan_still_gets_the_farm_started_and_stopped(
    tmp_path: Path, us: LoopbackSite
) -> None:
    sock = listening()
    middleware = DispatcherMiddleware(
        no_lifespan_app, config_for(tmp_path, us, url_of(sock)), site="eu"
    )
    embedded = middleware.dispatcher
    served = await anyio.to_thread.run_sync(UvicornServer, middleware, sock)
    try:
        await until(lambda: embedded.state == "running", "the farm to run")
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:
            response = await client.get("/secret", headers=HOST)
        assert response.status_code == 403
    finally:
        await anyio.to_thread.run_sync(served.stop)
    assert embedded.state == "stopped"
    assert embedded.farm is None


async def test_the_apps_own_lifespan_runs_around_the_farm(tmp_path: Path, us: LoopbackSite) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append(f"app up, farm {middleware.dispatcher.state}")
        yield
        events.append(f"app down, farm {middleware.dispatcher.state}")

    async def page(request: object) -> PlainTextResponse:
        return PlainTextResponse("app")

    sock = listening()
    app = Starlette(routes=[Route("/{rest:path}", page)], lifespan=lifespan)
    middleware = DispatcherMiddleware(app, config_for(tmp_path, us, url_of(sock)), site="eu")
    served = await anyio.to_thread.run_sync(UvicornServer, middleware, sock)
    await until(lambda: middleware.dispatcher.state == "running", "the farm to run")
    await anyio.to_thread.run_sync(served.stop)
    assert events == ["app up, farm starting", "app down, farm running"]
    assert middleware.dispatcher.state == "stopped"


async def test_without_lifespan_the_first_request_starts_the_farm(
    tmp_path: Path, us: LoopbackSite
) -> None:
    sock = listening()
    middleware = DispatcherMiddleware(
        no_lifespan_app, config_for(tmp_path, us, url_of(sock)), site="eu"
    )
    served = await anyio.to_thread.run_sync(lambda: UvicornServer(middleware, sock, lifespan="off"))
    try:
        assert middleware.dispatcher.state == "stopped"
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:
            first = await client.get("/secret", headers=HOST)
            assert first.status_code == 200  # no snapshot yet: the app answers
            await until(lambda: middleware.dispatcher.core is not None, "the first snapshot")
            assert (await client.get("/secret", headers=HOST)).status_code == 403
    finally:
        await anyio.to_thread.run_sync(served.stop)


def farm_threads() -> int:
    return sum(t.name == "webfarm embedded dispatcher eu" for t in threading.enumerate())


def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"OK" if environ["PATH_INFO"] == "/health" else b"app"]


async def test_the_wsgi_farm_runs_in_a_thread_from_the_first_request_until_close(
    tmp_path: Path, us: LoopbackSite
) -> None:
    sock = listening()
    middleware = WSGIDispatcherMiddleware(
        wsgi_app, config_for(tmp_path, us, url_of(sock)), site="eu"
    )
    embedded = middleware.dispatcher
    served = await anyio.to_thread.run_sync(WaitressServer, middleware, sock)
    try:
        assert embedded.state == "stopped"  # nothing runs before the first request
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:
            assert (await client.get("/secret", headers=HOST)).status_code == 200
            await until(embedded.ready.is_set, "the first snapshot")
            assert embedded.state == "running"
            assert (await client.get("/secret", headers=HOST)).status_code == 403
            assert farm_threads() == 1
            await anyio.to_thread.run_sync(middleware.close)
            assert farm_threads() == 0
            assert embedded.state == "stopped"
            # closed: the last snapshot answers, nothing starts again
            assert (await client.get("/secret", headers=HOST)).status_code == 403
            assert embedded.state == "stopped"
    finally:
        await anyio.to_thread.run_sync(served.stop)


async def test_the_documented_starlette_form(tmp_path: Path, us: LoopbackSite) -> None:
    """``Starlette(middleware=[Middleware(DispatcherMiddleware, config=..., site=...)])``:
    Starlette builds the middleware itself and hands it lifespan like any other scope."""

    async def page(request: object) -> PlainTextResponse:
        return PlainTextResponse("app")

    sock = listening()
    config = config_for(tmp_path, us, url_of(sock))
    app = Starlette(
        routes=[Route("/{rest:path}", page)],
        middleware=[Middleware(DispatcherMiddleware, config=config, site="eu")],
    )
    served = await anyio.to_thread.run_sync(UvicornServer, app, sock)
    try:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:

            async def forbidden() -> bool:
                return (await client.get("/secret", headers=HOST)).status_code == 403

            for _ in range(200):  # the farm started with lifespan: the rules run soon
                if await forbidden():
                    break
                await anyio.sleep(0.05)
            assert await forbidden()
            placed = await client.get("/page", headers=HOST)
            assert placed.headers["location"] == f"{us.url}/page"
    finally:
        await anyio.to_thread.run_sync(served.stop)
