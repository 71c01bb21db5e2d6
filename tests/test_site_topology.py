"""A site's region, country and coordinates: validated alike in ``[[sites]]`` and the admin
API, stored (SQLite and PostgreSQL), shown in GET, changed and cleared with PATCH."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatcher.backends.sites import SiteSpec, parse_site, update_site
from dispatcher.backends.store import SqlSiteStore
from dispatcher.config import build_config
from dispatcher.errors import ConfigError, InvalidValue
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml

BASE = {"name": "eu", "base_url": "http://127.0.0.2:9"}


def test_topology_is_optional_and_normalised() -> None:
    assert parse_site(BASE) == SiteSpec("eu", "http://127.0.0.2:9")
    site = parse_site({**BASE, "region": "EU-West", "country": "de", "coordinates": [50, 8.7]})
    assert (site.region, site.country, site.coordinates) == ("eu-west", "DE", (50.0, 8.7))
    assert site.as_dict()["coordinates"] == [50.0, 8.7]
    assert parse_site({**BASE, "region": None, "country": None, "coordinates": None}) == (
        SiteSpec("eu", "http://127.0.0.2:9")
    )


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("region", "", "a region name"),
        ("region", "eu west", "a region name"),
        ("country", "XX", "ISO 3166-1 alpha-2"),
        ("country", "Germany", "ISO 3166-1 alpha-2"),
        ("coordinates", [95, 0], "latitude -90 to 90"),
        ("coordinates", [0, 181], "latitude -90 to 90, longitude -180 to 180"),
        ("coordinates", [float("nan"), 0], "latitude"),
        ("coordinates", [1.0], "latitude"),
        ("coordinates", "1,2", "latitude"),
    ],
)
def test_bad_topology_is_refused_naming_the_field(key: str, value: Any, words: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_site({**BASE, key: value})
    assert (info.value.field, words in info.value.message) == (key, True)
    with pytest.raises(InvalidValue) as info:
        update_site(SiteSpec("eu", "http://127.0.0.2:9"), {key: value})
    assert (info.value.field, words in info.value.message) == (key, True)


def test_patch_sets_changes_and_clears() -> None:
    site = SiteSpec("eu", "http://127.0.0.2:9", region="eu", country="DE", coordinates=(1.0, 2.0))
    assert update_site(site, {"weight": 3}) == replace(site, weight=3)  # untouched
    assert update_site(site, {"country": "fr", "coordinates": None}) == replace(
        site, country="FR", coordinates=None
    )
    assert update_site(site, {"region": None}).region is None


def test_the_configuration_names_the_site() -> None:
    raw: dict[str, Any] = {
        "dispatcher": {"admin_tokens": ["t" * 20]},
        "sites": [
            {**BASE, "country": "DE", "coordinates": [50.1, 8.7]},
            {"name": "us", "base_url": "http://127.0.0.3:9", "coordinates": [40.7, -200]},
        ],
    }
    with pytest.raises(ConfigError) as info:
        build_config(raw, source="farm.toml", environ={})
    assert info.value.path == "sites[1].coordinates"
    raw["sites"].pop()
    (site,) = build_config(raw, environ={}).sites
    assert (site.country, site.coordinates, site.region) == ("DE", (50.1, 8.7), None)


# --- the admin API, on both databases ---


@pytest.fixture
async def farm(
    sites: dict[str, LoopbackSite], database_url: str, tmp_path: Path
) -> AsyncIterator[RunningDispatcher]:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(farm_toml({"eu": (sites["eu"], 1)}, database_url=database_url))
    running = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    try:
        yield running
    finally:
        await running.close()


@pytest.mark.anyio
async def test_the_admin_api_stores_and_shows_topology(
    farm: RunningDispatcher, database_url: str
) -> None:
    new = {
        "name": "syd",
        "base_url": "http://127.0.0.9:9",
        "region": "APAC",
        "country": "au",
        "coordinates": [-33.87, 151.21],
    }
    created = await farm.admin.post("/api/v1/sites", json=new)
    assert created.status_code == 201, created.text
    shown = (await farm.admin.get("/api/v1/sites/syd")).json()
    assert (shown["region"], shown["country"], shown["coordinates"]) == (
        "apac",
        "AU",
        [-33.87, 151.21],
    )
    eu = (await farm.admin.get("/api/v1/sites/eu")).json()
    assert (eu["region"], eu["country"], eu["coordinates"]) == (None, None, None)

    changed = await farm.admin.patch(
        "/api/v1/sites/syd", json={"region": None, "coordinates": [-37.8, 144.96]}
    )
    assert changed.status_code == 200, changed.text
    shown = changed.json()
    assert (shown["region"], shown["country"], shown["coordinates"]) == (
        None,
        "AU",
        [-37.8, 144.96],
    )
    refused = await farm.admin.patch("/api/v1/sites/syd", json={"country": "UK"})
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "country"

    store = SqlSiteStore(database_url)
    try:
        assert store.get_site("syd").coordinates == (-37.8, 144.96)
        assert store.get_site("syd").country == "AU"
    finally:
        store.close()
