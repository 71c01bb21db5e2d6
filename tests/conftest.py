"""Shared fixtures: store backends (SQLite and the machine's real PostgreSQL), loopback sites.

Under ``CI=true`` a test that cannot reach what it needs fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import settings as hypothesis_settings

from dispatcher.asgi import Receive, Scope, Send
from dispatcher.backends.httpcheck import HttpChecker
from dispatcher.backends.probes import ProbeResult, check_http, probe_http
from dispatcher.backends.store import SqlSiteStore
from dispatcher.backends.wire import probe_client
from dispatcher.config import load_config
from dispatcher.server import Listener, Runner, Timeouts

# Hypothesis's 200 ms deadline per example measures the machine (shared, often loaded), not
# the code; pytest-timeout bounds every test instead.
hypothesis_settings.register_profile("webfarm", deadline=None)
hypothesis_settings.load_profile("webfarm")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the imports and the collection made lives as long as the run: out of the
    collector's way (``gc.freeze``), so each collection below looks at the tests' objects."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _leaks_fail_in_their_module() -> Iterator[None]:
    """A resource a test leaks (a transport never closed, a child process still running)
    warns when the garbage collector frees it, and the warning fails a test (the suite's
    ``filterwarnings = error``): collecting at the end of every module makes that the
    leaking module's last test, not whichever test ran when the collector next came by."""
    yield
    gc.collect()


POSTGRES_ADMIN_URL = os.environ.get(
    "FARM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


FARM_DISPATCHER = str(Path(sys.executable).parent / "farm-dispatcher")


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``farm-dispatcher ARGS`` as a user would, capturing its output (30 s at most)."""
    return subprocess.run(
        [FARM_DISPATCHER, *args],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=30,
        check=check,
    )


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` on a developer machine; fail under CI, where a skip hides a gap."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# --- databases --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the machine's PostgreSQL, checked once per session."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        skip_or_fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the real PostgreSQL server, dropped afterwards."""
    name = f"webfarm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_server.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs twice: on embedded SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'farm.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[SqlSiteStore]:
    """An upgraded, empty store on each backend."""
    store = SqlSiteStore(database_url)
    store.upgrade()
    try:
        yield store
    finally:
        store.close()


# --- the HTTP probe, both implementations -------------------------------------------------

#: One HTTP check: ``(url, expect, timeout) -> ProbeResult``.
Fetch = Callable[[str, str, float], Awaitable[ProbeResult]]


@pytest.fixture(params=["httpx", "lean"])
async def fetch(request: pytest.FixtureRequest) -> AsyncIterator[Fetch]:
    """The HTTP probe two ways, to hold both to one spec: ``httpx`` is
    :func:`~dispatcher.backends.probes.probe_http` with a ``probe_client()``, ``lean`` is
    :func:`~dispatcher.backends.probes.check_http` (the prober's default)."""
    if request.param == "lean":
        checker = HttpChecker()
        yield lambda url, expect, timeout: check_http(checker, url, expect, timeout)
        return
    async with probe_client() as client:
        yield lambda url, expect, timeout: probe_http(client, url, expect, timeout)


# --- loopback sites ----------------------------------------------------------------------


class SiteApp:
    """A small web site for tests: ``/health`` answers ``health_body`` with ``health_status``;
    every other page names the site. Flip the attributes to make it sick."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health_status = 200
        self.health_body = b"OK"
        self.health_delay = 0.0
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            if self.health_delay:
                await asyncio.sleep(self.health_delay)
            status, body = self.health_status, self.health_body
        else:
            self.hits += 1
            status, body = 200, f"site {self.name}".encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class LoopbackSite:
    """A :class:`SiteApp` served for real by uvicorn on 127.0.0.1, on a free port."""

    def __init__(self, name: str) -> None:
        self.app = SiteApp(name)
        self.listener: Listener | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        address = f"127.0.0.1:{self.port}"
        self.listener = Listener(
            self.app,
            address,
            access_log=False,
            timeouts=Timeouts(graceful_shutdown=1.0, keep_alive=1),
        )
        self.port = self.listener.port
        await self.listener.start()

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None


@pytest.fixture
async def sites() -> AsyncIterator[dict[str, LoopbackSite]]:
    """Three real sites, eu, us and asia, on loopback ports; stopped afterwards."""
    started = {name: LoopbackSite(name) for name in ("eu", "us", "asia")}
    for site in started.values():
        await site.start()
    try:
        yield started
    finally:
        for site in started.values():
            await site.stop()


ADMIN_TOKEN = "secret-token"


class RunningDispatcher:
    """A started :class:`Runner` with httpx clients for its public and admin listeners."""

    def __init__(self, runner: Runner) -> None:
        assert runner.admin is not None
        self.runner = runner
        self.public = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{runner.public_port}", trust_env=False
        )
        self.admin = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{runner.admin.port}",
            trust_env=False,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )

    @staticmethod
    async def start_runner(
        config_file: Path, *, upgrade: bool = True, worker_processes: bool = False
    ) -> Runner:
        """Load ``config_file``, bring its database to head (unless told not to), start.

        The public app runs in this process unless ``worker_processes`` asks for the real
        worker processes (``config``'s ``workers`` of them), as ``serve`` runs them.
        """
        config = load_config(config_file, environ={})
        store = SqlSiteStore(config.dispatcher.database_url, config.dispatcher.database_timeout)
        if upgrade:
            store.upgrade()
        runner = Runner(
            config,
            store,
            Timeouts(graceful_shutdown=1.0, keep_alive=1),
            worker_processes=worker_processes,
            reload_config=lambda: load_config(config_file, environ={}),
        )
        try:
            await runner.start()
        except BaseException:
            await runner.stop()
            raise
        return runner

    async def close(self) -> None:
        await self.public.aclose()
        await self.admin.aclose()
        await self.runner.stop()


def farm_toml(
    sites: dict[str, Any],
    *,
    database_url: str,
    extra: str = "",
    pool: str = 'policy = "weighted"\nfallback = "sorry"',
    check: str = "interval = 0.2, timeout = 0.2, rise = 2, fall = 2",
) -> str:
    """A dispatcher config on free ports (``listen`` ``:0``) in front of ``sites``."""
    blocks = "".join(
        f"""
[[sites]]
name = "{name}"
base_url = "{site.url}"
weight = {weight}
check = {{ url = "/health", expect = "OK", {check} }}
"""
        for name, (site, weight) in sites.items()
    )
    return f"""{dispatcher_table(database_url, extra)}
[pools.default]
{pool}
{blocks}"""


def dispatcher_table(database_url: str, extra: str = "") -> str:
    """The ``[dispatcher]`` table every test config shares: free loopback ports, fast refresh."""
    return f"""
[dispatcher]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
database_url = "{database_url}"
admin_tokens = ["{ADMIN_TOKEN}"]
registry_refresh = 0.2
{extra}
"""
