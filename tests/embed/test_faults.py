"""A database fault never fails a request of the embedding site: before the first snapshot
the app answers, after it the last snapshot does, and a database that comes (back) is picked
up. Both shapes, on real servers, with a real PostgreSQL database dropped under them."""

from __future__ import annotations

import logging

import anyio
import psycopg
import pytest

from dispatcher.backends.store import SqlSiteStore
from tests.embed.conftest import SHAPES, Start, stamp, until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_dropped_database_keeps_the_last_snapshot_answering(
    start: Start,
    shape: str,
    postgres_server: str,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    farm = await start(shape, database_url=postgres_url, standalone=True)
    us = farm.us.url
    before = (await farm.get("/page")).headers["location"]
    assert before == f"{us}/page"
    name = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # every connection cut
    failures = 0
    for n in range(12):  # over 2 s: several failed refreshes (registry_refresh = 0.2 s)
        placed = await farm.get(f"/page?n={n}")
        assert (placed.status_code, placed.headers["location"]) == (302, f"{us}/page?n={n}")
        kept = await farm.get(f"/legacy/x?n={n}", stamp("eu"))
        assert kept.status_code == 200
        assert kept.json()["query"] == f"from=legacy&n={n}"
        forbidden = await farm.get("/secret")
        failures += forbidden.status_code != 403
        await anyio.sleep(0.15)
    assert failures == 0
    assert farm.embedded.state == "running"
    lost = [r for r in caplog.records if "registry refresh failed" in r.getMessage()]
    assert lost, "the database was never missed"


@pytest.mark.parametrize("shape", SHAPES)
async def test_until_the_database_is_ready_the_app_answers_then_the_rules_do(
    start: Start, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The database exists but has no schema: the embedded dispatcher waits (backing off),
    every request reaches the app meanwhile (a warning says so); once the schema is there,
    the rules and placement answer."""
    caplog.set_level(logging.WARNING, "webfarm.embed")
    farm = await start(shape, standalone=False, upgrade=False, wait=False)
    for target in ("/page", "/secret"):
        response = await farm.get(target)
        assert response.status_code == 200, response.text
        assert response.json()["path"] == target
    assert farm.embedded.core is None
    await until(  # (the first attempt runs in the background: on a busy machine, later)
        lambda: "waiting for the database" in farm.embedded.state, "the first failed attempt"
    )
    assert any("no registry snapshot yet" in r.getMessage() for r in caplog.records)
    database = farm.embedded.config.dispatcher.database_url
    store = SqlSiteStore(database)
    try:
        store.upgrade()
    finally:
        store.close()
    await until(farm.all_up, "the embedded dispatcher to start", timeout=15)
    assert (await farm.get("/secret")).status_code == 403
    assert (await farm.get("/page")).headers["location"] == f"{farm.us.url}/page"
