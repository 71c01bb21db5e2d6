"""Fixtures for the end-to-end journeys: a real dispatcher (in this event loop, on
127.0.0.1) and real cart sites on 127.0.0.2 and 127.0.0.3, registered through the admin API.

Health checks are fast (interval and timeout 0.3 s, rise 1, fall 1) and use the site's
address (``http://127.0.0.2:PORT/health``), so the dispatcher needs no name resolution.
The pool's policy is ``failover``: a new client lands on the first registered site that is
healthy and not drained, which makes "site A" a fixed choice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Protocol

import pytest

from dispatcher.server import Runner
from tests.conftest import RunningDispatcher, dispatcher_table
from tests.farm_e2e.carts import CartServer, Kind, cart_server

CHECK: dict[str, Any] = {"expect": "OK", "interval": 0.3, "timeout": 0.3, "rise": 1, "fall": 1}
WAIT_LIMIT = 10.0  # seconds; a health change takes about interval * fall here


class E2EFarm(RunningDispatcher):
    """A running dispatcher, with the admin calls the journeys make."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        assert runner.public is not None
        self.port = runner.public.port

    @property
    def url(self) -> str:
        """The public listener, by address."""
        return f"http://127.0.0.1:{self.port}"

    def url_as(self, host: str) -> str:
        """The public listener under another name for 127.0.0.1 (``www.farm.test``)."""
        return f"http://{host}:{self.port}"

    async def register(self, site: CartServer, base_url: str) -> None:
        """Add ``site`` at ``base_url``, its check on its address; wait until it is up."""
        body = {
            "name": site.name,
            "base_url": base_url,
            "check": {**CHECK, "url": f"{site.address}/health"},
        }
        response = await self.admin.post("/api/v1/sites", json=body)
        assert response.status_code == 201, response.text
        await self.wait_site(site.name, "health", "up")

    async def site(self, name: str) -> dict[str, Any]:
        """The site as ``GET /api/v1/status`` shows it."""
        response = await self.admin.get("/api/v1/status")
        assert response.status_code == 200, response.text
        for site in response.json()["sites"]:
            if site["name"] == name:
                found: dict[str, Any] = site
                return found
        raise AssertionError(f"no site {name!r} in the dispatcher's status")

    async def wait_site(self, name: str, key: str, value: object) -> float:
        """Poll the status until the site's ``key`` is ``value``; the seconds it took."""
        start = time.monotonic()
        while (await self.site(name))[key] != value:
            if time.monotonic() - start > WAIT_LIMIT:
                raise AssertionError(f"site {name}: {key} not {value!r} within {WAIT_LIMIT}s")
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    async def kill(self, site: CartServer) -> None:
        """Stop ``site`` for real and wait until the dispatcher's probes see it down."""
        await site.stop()
        await self.wait_site(site.name, "health", "down")

    async def revive(self, site: CartServer) -> None:
        """Start ``site`` again on its port and wait until the dispatcher sees it up."""
        await site.start()
        await self.wait_site(site.name, "health", "up")


def farm_config(database_url: str, secret_keys: list[str], cookie_domain: str | None) -> str:
    """A dispatcher with no sites yet (they come through the admin API), ``failover``, and
    cookie affinity (its stamp on ``cookie_domain`` when given)."""
    keys = ", ".join(f'"{key}"' for key in secret_keys)
    extra = f'secret_keys = [{keys}]\naffinity = "cookie"\n'
    if cookie_domain is not None:
        extra += f'cookie_domain = "{cookie_domain}"\n'
    table = dispatcher_table(database_url, extra=extra)
    return f'{table}\n[pools.default]\npolicy = "failover"\nfallback = "sorry"\n'


@pytest.fixture
def secret_keys() -> list[str]:
    """The farm's keys, shared by the dispatcher and every site (fresh for each test)."""
    return [secrets.token_urlsafe(32)]


@pytest.fixture
def cookie_domain() -> str | None:
    """The dispatcher's ``cookie_domain`` (a module overrides it for its deployment)."""
    return None


@pytest.fixture
async def farm(
    tmp_path: Path, secret_keys: list[str], cookie_domain: str | None
) -> AsyncIterator[E2EFarm]:
    """A started dispatcher on 127.0.0.1 (SQLite in ``tmp_path``); stopped afterwards."""
    config_file = tmp_path / "farm.toml"
    database = f"sqlite:///{tmp_path / 'farm.db'}"
    config_file.write_text(farm_config(database, secret_keys, cookie_domain))
    running = E2EFarm(await E2EFarm.start_runner(config_file))
    try:
        yield running
    finally:
        await running.close()


class StartCart(Protocol):
    def __call__(
        self, kind: Kind, name: str, host: str, *, domain: str | None = None
    ) -> Awaitable[CartServer]: ...


@pytest.fixture
async def start_cart(secret_keys: list[str]) -> AsyncIterator[StartCart]:
    """Start cart sites (with the farm's keys); every one is stopped afterwards."""
    started: list[CartServer] = []

    async def start(kind: Kind, name: str, host: str, *, domain: str | None = None) -> CartServer:
        site = cart_server(kind, name, host, secret_keys, domain=domain)
        await site.start()
        started.append(site)
        return site

    try:
        yield start
    finally:
        for site in started:
            await site.stop()
