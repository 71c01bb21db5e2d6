"""The WSGI middleware under ``gunicorn --preload``: the app (and its farm's thread) is built
in the master, then forked into workers. Each worker starts a farm of its own on its first
request (answering from the inherited snapshot meanwhile) and reads the database itself; the
master's connections are left alone (PostgreSQL: a child that closed them would break it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import pytest

from dispatcher.backends.store import SqlSiteStore
from tests.conftest import LoopbackSite
from tests.embed.conftest import HOST

from .support import farm_config, listening, url_of

pytestmark = pytest.mark.anyio

APP = textwrap.dedent(
    """
    import os
    from dispatcher.embed import WSGIDispatcherMiddleware

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/state":
            body = f"{os.getpid()} {application.dispatcher.state}".encode()
        else:
            body = b"OK" if path == "/health" else b"app"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    application = WSGIDispatcherMiddleware(
        app, os.environ["EMBED_CONFIG"], site="eu", exempt=["/state"]
    )
    application.start()  # in the master: its thread runs there, and is not forked
    application.dispatcher.ready.wait(10)
    """
)


@pytest.fixture
async def us() -> AsyncIterator[LoopbackSite]:
    site = LoopbackSite("us")
    await site.start()
    yield site
    await site.stop()


async def get(client: httpx.AsyncClient, target: str) -> httpx.Response:
    client.cookies.clear()
    return await client.get(target, headers=HOST)


async def test_preloaded_workers_run_farms_of_their_own(
    tmp_path: Path, us: LoopbackSite, postgres_url: str
) -> None:
    store = SqlSiteStore(postgres_url)
    store.upgrade()
    sock = listening()
    config = farm_config(tmp_path, postgres_url, eu=url_of(sock), us=us.url)
    (tmp_path / "embedapp.py").write_text(APP)
    env = {
        **os.environ,
        "EMBED_CONFIG": str(config),
        "PYTHONPATH": f"{tmp_path}:{Path.cwd()}",
    }
    command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2"]
    command += ["--bind", f"fd://{sock.fileno()}", "--graceful-timeout", "2"]
    command += ["--no-control-socket", "embedapp"]
    server = subprocess.Popen(
        command, env=env, pass_fds=[sock.fileno()], stderr=subprocess.PIPE, text=True
    )
    try:
        # the master starts its farm first (its probe of "eu" waits out its timeout): slow
        async with httpx.AsyncClient(base_url=url_of(sock), trust_env=False, timeout=20) as client:
            running: set[str] = set()
            for _ in range(400):  # (20 s at most)
                pid, state = (await get(client, "/state")).text.split(" ", 1)
                if state == "running":
                    running.add(pid)
                if len(running) == 2:
                    break
                await anyio.sleep(0.05)
            assert len(running) == 2, "two workers with farms of their own"
            assert str(server.pid) not in running
            assert (await get(client, "/secret")).status_code == 403
            assert (await get(client, "/page")).headers["location"] == f"{us.url}/page"
            store.modify_site("us", lambda site: replace(site, drained=True))
            kept = 0
            for _ in range(400):  # both workers read the drain from the database
                kept = kept + 1 if (await get(client, "/page")).status_code == 200 else 0
                if kept == 10:
                    break
                await anyio.sleep(0.05)
            assert kept == 10, "every worker to see the drain"
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = await anyio.to_thread.run_sync(lambda: server.communicate(timeout=15))
        sock.close()
        store.close()
    assert "registry refresh failed" not in errors, errors
    assert "Traceback" not in errors, errors
