"""The dispatcher for real: uvicorn on loopback ports, real sites, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.admin import AdminApi
from dispatcher.backends.store import SqlSiteStore
from dispatcher.errors import SchemaBehind
from dispatcher.server import Runner
from dispatcher.vitals import LIVEZ, READYZ
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml

pytestmark = pytest.mark.anyio
INTERVAL, FALL = 0.5, 2


class Farm(RunningDispatcher):
    """A running dispatcher in front of known sites."""

    def __init__(self, runner: Runner, sites: dict[str, LoopbackSite]) -> None:
        super().__init__(runner)
        self.sites = sites

    async def where(self, path: str = "/") -> str | None:
        """The site name a new client is sent to, or None for the sorry page."""
        response = await self.public.get(path)
        if response.status_code == 503:
            return None
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        for name, site in self.sites.items():
            if location.startswith(site.url + "/"):
                return name
        raise AssertionError(f"redirect to an unknown place: {location}")

    async def spread(self, n: int) -> Counter[str | None]:
        return Counter([await self.where() for _ in range(n)])


Start = Callable[..., Awaitable[Farm]]


@pytest.fixture
async def start_farm(
    sites: dict[str, LoopbackSite], database_url: str, tmp_path: Path
) -> AsyncIterator[Start]:
    """Start a dispatcher in front of ``sites`` (name -> weight); stopped afterwards."""
    farms: list[Farm] = []

    async def start(
        weights: dict[str, int] | None = None,
        extra: str = "",
        pool: str = 'policy = "weighted"\nfallback = "sorry"',
        upgrade: bool = True,
    ) -> Farm:
        weights = weights or {"eu": 1, "us": 1, "asia": 1}
        config_file = tmp_path / f"farm{len(farms)}.toml"
        config_file.write_text(
            farm_toml(
                {name: (sites[name], w) for name, w in weights.items()},
                database_url=database_url,
                extra=extra,
                pool=pool,
                check=f"interval = {INTERVAL}, timeout = 0.3, rise = 2, fall = {FALL}",
            )
        )
        farm = Farm(await Farm.start_runner(config_file, upgrade=upgrade), sites)
        farms.append(farm)
        return farm

    yield start
    for farm in farms:
        await farm.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], limit: float) -> float:
    """Poll ``predicate`` every 20 ms; return the seconds it took, or fail after ``limit``."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > limit:
            raise AssertionError(f"condition not met within {limit}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# --- redirects and health -----------------------------------------------------------------


async def test_weighted_shares_over_real_http(start_farm: Start) -> None:
    farm = await start_farm({"eu": 2, "us": 1, "asia": 1})
    counts = await farm.spread(1000)
    assert abs(counts["eu"] / 1000 - 0.5) <= 0.02
    assert abs(counts["us"] / 1000 - 0.25) <= 0.02
    assert abs(counts["asia"] / 1000 - 0.25) <= 0.02


async def test_path_and_query_reach_the_site(start_farm: Start) -> None:
    farm = await start_farm({"eu": 1})
    response = await farm.public.get("/shop/a%20b/%C3%A9?x=1&y=%2F&z")
    assert response.status_code == 302
    assert response.headers["location"] == farm.sites["eu"].url + "/shop/a%20b/%C3%A9?x=1&y=%2F&z"
    followed = await farm.public.get("/hello", follow_redirects=True)
    assert followed.text == "site eu"


async def test_first_client_is_never_sent_to_a_dead_site(
    start_farm: Start, sites: dict[str, LoopbackSite]
) -> None:
    await sites["us"].stop()
    sites["asia"].app.health_status = 500
    farm = await start_farm()
    assert (await farm.spread(30)) == {"eu": 30}


async def test_a_site_that_stops_answering_stops_getting_clients_in_time(
    start_farm: Start, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start_farm({"eu": 1, "us": 1})
    assert set(await farm.spread(4)) == {"eu", "us"}
    await sites["us"].stop()

    async def us_gone() -> bool:
        return "us" not in await farm.spread(2)

    took = await wait_for(us_gone, limit=5 * INTERVAL * FALL)
    assert took <= INTERVAL * FALL + INTERVAL, f"still sent clients to a dead site for {took:.2f}s"
    assert (await farm.spread(20)) == {"eu": 20}
    status = (await farm.admin.get("/api/v1/sites/us")).json()
    assert status["health"] == "down"
    assert "ConnectError" in status["last_probe"]["detail"]


async def test_a_recovered_site_comes_back_after_rise_checks(
    start_farm: Start, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start_farm({"eu": 1, "us": 1})
    sites["us"].app.health_body = b"maintenance"
    await wait_for(lambda: _not_in(farm, "us"), limit=5)
    sites["us"].app.health_body = b"OK"
    took = await wait_for(lambda: _in(farm, "us"), limit=5)
    assert took <= INTERVAL * 2 + INTERVAL


async def _in(farm: Farm, name: str) -> bool:
    return name in await farm.spread(4)


async def _not_in(farm: Farm, name: str) -> bool:
    return name not in await farm.spread(4)


async def test_no_healthy_site_gives_503_with_retry_after(
    start_farm: Start, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start_farm({"eu": 1}, extra="retry_after = 12")
    await sites["eu"].stop()
    await wait_for(lambda: _not_in(farm, "eu"), limit=5)
    response = await farm.public.get("/x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "12"


async def test_failover_policy_uses_the_first_healthy_site(
    start_farm: Start, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start_farm({"eu": 1, "us": 1}, pool='policy = "failover"')
    assert (await farm.spread(10)) == {"eu": 10}
    sites["eu"].app.health_status = 503
    await wait_for(lambda: _in(farm, "us"), limit=5)
    assert (await farm.spread(10)) == {"us": 10}


async def test_least_load_follows_load_reports(start_farm: Start) -> None:
    farm = await start_farm({"eu": 1, "us": 1, "asia": 2}, pool='policy = "least-load"')
    for name, load in (("eu", 0.9), ("us", 0.2), ("asia", 0.5)):  # asia: 0.5 / 2 = 0.25
        response = await farm.admin.put(f"/api/v1/sites/{name}/load", json={"load": load})
        assert response.status_code == 200, response.text
    assert (await farm.spread(10)) == {"us": 10}
    await farm.admin.put("/api/v1/sites/us/load", json={"load": 0.95, "connections": 80})
    assert (await farm.spread(10)) == {"asia": 10}
    status = (await farm.admin.get("/api/v1/sites/us")).json()
    assert status["load"]["load"] == 0.95
    assert status["load"]["connections"] == 80
    assert 0 <= status["load"]["age"] < 5


async def test_a_refresh_that_read_before_a_report_does_not_forget_it(start_farm: Start) -> None:
    """The refresher's read of the stored loads may start before an admin report and end
    after it (a slow database): what it lacks is then newer than the read, and stays."""
    farm = await start_farm({"eu": 1, "us": 1}, pool='policy = "least-load"')
    state = farm.runner.farm
    began = time.monotonic()
    await farm.admin.put("/api/v1/sites/us/load", json={"load": 0.1})
    state._merge_loads({}, began)  # what a read begun before the report returns
    assert "us" in state._loads
    state._merge_loads({}, time.monotonic())  # a read after it that lacks it: gone
    assert "us" not in state._loads


async def test_stale_load_reports_are_ignored(start_farm: Start) -> None:
    farm = await start_farm(
        {"eu": 1, "us": 1}, pool='policy = "least-load"', extra="load_max_age = 0.3"
    )
    await farm.admin.put("/api/v1/sites/eu/load", json={"load": 0.1})
    assert (await farm.spread(6)) == {"eu": 6}
    await asyncio.sleep(0.4)
    assert set(await farm.spread(6)) == {"eu", "us"}


# --- the admin API -------------------------------------------------------------------------


async def test_admin_requires_a_valid_token(start_farm: Start) -> None:
    farm = await start_farm({"eu": 1})
    url = farm.admin.base_url.join("/api/v1/status")
    async with httpx.AsyncClient(trust_env=False) as anonymous:
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": "secret-token"},
            {"authorization": "Basic c2VjcmV0LXRva2Vu"},
        ):
            response = await anonymous.get(url, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await farm.admin.get("/api/v1/status")).status_code == 200


async def test_drain_takes_effect_on_the_next_request_and_persists(
    start_farm: Start, database_url: str
) -> None:
    farm = await start_farm({"eu": 1, "us": 1})
    response = await farm.admin.post("/api/v1/sites/us/drain")
    assert response.status_code == 200
    assert response.json()["drained"] is True
    assert (await farm.spread(10)) == {"eu": 10}
    store = SqlSiteStore(farm.runner.config.dispatcher.database_url)
    try:
        assert store.get_site("us").drained
    finally:
        store.close()
    await farm.admin.post("/api/v1/sites/us/undrain")
    assert set(await farm.spread(4)) == {"eu", "us"}


async def test_sites_crud(start_farm: Start, sites: dict[str, LoopbackSite]) -> None:
    farm = await start_farm({"eu": 1})
    new = {
        "name": "us",
        "base_url": sites["us"].url,
        "weight": 3,
        "check": {"url": "/health", "expect": "OK", "interval": 0.5},
    }
    response = await farm.admin.post("/api/v1/sites", json=new)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/api/v1/sites/us"
    body = response.json()
    assert (body["name"], body["weight"], body["health"]) == ("us", 3, "up")
    assert body["check"]["interval"] == 0.5
    counts = await farm.spread(40)
    assert counts == {"eu": 10, "us": 30}

    response = await farm.admin.patch("/api/v1/sites/us", json={"weight": 1})
    assert response.json()["weight"] == 1
    listing = (await farm.admin.get("/api/v1/sites")).json()["sites"]
    assert [s["name"] for s in listing] == ["eu", "us"]

    assert (await farm.admin.delete("/api/v1/sites/us")).status_code == 204
    assert (await farm.admin.get("/api/v1/sites/us")).status_code == 404
    assert (await farm.spread(5)) == {"eu": 5}


BAD_INPUT: list[tuple[str, str, Any, int, str, str | None]] = [
    ("POST", "/api/v1/sites", b"{not json", 400, "invalid_json", None),
    ("POST", "/api/v1/sites", b"[1, 2]", 422, "invalid", None),
    ("POST", "/api/v1/sites", {"name": "x"}, 422, "invalid", "base_url"),
    ("POST", "/api/v1/sites", {"name": "x", "base_url": "ftp://x"}, 422, "invalid", "base_url"),
    ("POST", "/api/v1/sites", {"name": "x", "base_url": "example.com"}, 422, "invalid", "base_url"),
    (
        "POST",
        "/api/v1/sites",
        {"name": "x", "base_url": "http://x", "weight": "2"},
        422,
        "invalid",
        "weight",
    ),
    (
        "POST",
        "/api/v1/sites",
        {"name": "x", "base_url": "http://x", "pool": "nope"},
        422,
        "invalid",
        "pool",
    ),
    (
        "POST",
        "/api/v1/sites",
        {"name": "x", "base_url": "http://x", "colour": 1},
        422,
        "invalid",
        "colour",
    ),
    (
        "POST",
        "/api/v1/sites",
        {"name": "x", "base_url": "http://x", "check": {"interval": 0}},
        422,
        "invalid",
        "check.interval",
    ),
    ("POST", "/api/v1/sites", {"name": "eu", "base_url": "http://x"}, 409, "conflict", "name"),
    ("PATCH", "/api/v1/sites/eu", {"weight": -1}, 422, "invalid", "weight"),
    ("PATCH", "/api/v1/sites/eu", {"name": "renamed"}, 422, "invalid", "name"),
    (
        "PATCH",
        "/api/v1/sites/eu",
        {"base_url": "http://ok", "weight": "x"},
        422,
        "invalid",
        "weight",
    ),
    ("PATCH", "/api/v1/sites/nope", {"weight": 1}, 404, "not_found", "name"),
    ("DELETE", "/api/v1/sites/nope", None, 404, "not_found", "name"),
    ("POST", "/api/v1/sites/nope/drain", None, 404, "not_found", "name"),
    ("PUT", "/api/v1/sites/eu/load", {"load": 1.5}, 422, "invalid", "load"),
    (
        "PUT",
        "/api/v1/sites/eu/load",
        {"load": 0.5, "connections": -1},
        422,
        "invalid",
        "connections",
    ),
    ("PUT", "/api/v1/sites/eu/load", {}, 422, "invalid", "load"),
    ("PUT", "/api/v1/sites/nope/load", {"load": 0.5}, 404, "not_found", "name"),
    ("GET", "/api/v1/nothing-here", None, 404, "not_found", None),
    ("PUT", "/api/v1/sites", {}, 405, "method_not_allowed", None),
]


async def test_bad_input_gets_a_json_4xx_and_changes_nothing(start_farm: Start) -> None:
    farm = await start_farm({"eu": 1})
    for method, path, body, status, code, field in BAD_INPUT:
        case = f"{method} {path} {body!r}"
        before = (await farm.admin.get("/api/v1/sites")).json()
        revision = farm.runner.farm.snapshot.revision
        content = body if isinstance(body, bytes) else None
        json_body = None if content is not None or body is None else body
        response = await farm.admin.request(method, path, content=content, json=json_body)
        assert response.status_code == status, f"{case}: {response.text}"
        error = response.json()["error"]
        assert (error["code"], error["field"]) == (code, field), case
        assert error["message"], case
        after = (await farm.admin.get("/api/v1/sites")).json()
        for site in before["sites"] + after["sites"]:
            site.pop("last_probe")
        assert after == before, case
        assert farm.runner.farm.snapshot.revision == revision, case


async def test_status_reports_every_site(start_farm: Start) -> None:
    farm = await start_farm({"eu": 2, "us": 1})
    await farm.spread(3)
    status = (await farm.admin.get("/api/v1/status")).json()
    assert status["pools"]["default"]["policy"] == "weighted"
    assert status["pools"]["default"]["eligible"] == ["eu", "us"]
    eu = status["sites"][0]
    assert eu["name"] == "eu"
    assert eu["health"] == "up"
    assert eu["drained"] is False
    assert eu["last_probe"]["ok"] is True
    assert eu["last_probe"]["at"].endswith("+00:00")
    assert eu["load"] is None
    assert eu["redirects"] + status["sites"][1]["redirects"] == 3


async def test_openapi_document(start_farm: Start) -> None:
    farm = await start_farm({"eu": 1})
    doc = (await farm.admin.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    routes = AdminApi(farm.runner.farm).routes()
    served = {route.path for route in routes} | {LIVEZ, READYZ}  # those two need no token
    assert "/api/v1/rules" in served
    assert set(doc["paths"]) == served  # every route documented, nothing else
    assert doc["paths"][LIVEZ]["get"]["security"] == []


# --- schema and replicas -------------------------------------------------------------------


async def test_refuses_to_start_on_a_schema_that_is_behind(start_farm: Start) -> None:
    with pytest.raises(SchemaBehind, match="farm-dispatcher db upgrade --config"):
        await start_farm({"eu": 1}, upgrade=False)


@pytest.mark.postgres
async def test_replicas_sharing_postgresql_see_each_others_changes(
    sites: dict[str, LoopbackSite], postgres_url: str, tmp_path: Path
) -> None:
    clients: list[Farm] = []
    try:
        for i in range(2):
            config_file = tmp_path / f"replica{i}.toml"
            config_file.write_text(
                farm_toml(
                    {"eu": (sites["eu"], 1), "us": (sites["us"], 1)}, database_url=postgres_url
                )
            )
            clients.append(Farm(await Farm.start_runner(config_file), sites))
        a, b = clients
        assert (await a.admin.post("/api/v1/sites/us/drain")).status_code == 200
        took = await wait_for(lambda: _not_in(b, "us"), limit=3)
        assert took < 1.0  # registry_refresh is 0.2 s
        assert (await b.admin.get("/api/v1/sites/us")).json()["drained"] is True
        await a.admin.put("/api/v1/sites/eu/load", json={"load": 0.4})
        await wait_for(lambda: _has_load(b, "eu"), limit=3)
    finally:
        for client in clients:
            await client.close()


async def _has_load(farm: Farm, name: str) -> bool:
    site = (await farm.admin.get(f"/api/v1/sites/{name}")).json()
    return site["load"] is not None and site["load"]["load"] == 0.4
