"""Learned latency on the dispatcher, for real on SQLite and PostgreSQL: the load report's
``rtt`` list through the admin API (hostile entries refused naming their index and field,
a full table accepted), and a table reported to one replica reaching another's snapshot and
its worker processes' state."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.admin_input import MAX_BODY
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.store import LoadReport, SqlSiteStore
from dispatcher.config import build_config
from dispatcher.farm import Farm
from dispatcher.placement.rtt import MAX_REPORT_ENTRIES, RTT_MAX_AGE, RttEntry, RttReport
from dispatcher.worker import StateBuilder
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml

pytestmark = pytest.mark.anyio

LOAD = "/api/v1/sites/eu/load"
GOOD = {"network": "192.0.2.0/24", "rtt": 0.0123, "samples": 17}


def entry(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


@pytest.fixture
async def farm(
    sites: dict[str, LoopbackSite], database_url: str, tmp_path: Path
) -> AsyncIterator[RunningDispatcher]:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(farm_toml({"eu": (sites["eu"], 1)}, database_url=database_url))
    running = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    running.runner.farm.rtt_rebuild_every = 0  # every table in force at once
    try:
        yield running
    finally:
        await running.close()


# (the rtt list, or a raw body; the field the 422 names)
HOSTILE: list[tuple[Any, str]] = [
    ("192.0.2.0/24", "rtt"),
    ({"192.0.2.0/24": 0.01}, "rtt"),
    ([GOOD] * (MAX_REPORT_ENTRIES + 1), "rtt"),
    (["192.0.2.0/24"], "rtt[0]"),
    ([entry(network="192.0.2.1/24")], "rtt[0].network"),
    ([entry(network="192.0.2.0/23")], "rtt[0].network"),
    ([entry(network="192.0.2.0")], "rtt[0].network"),
    ([GOOD, entry(network="2001:DB8::/48")], "rtt[1].network"),
    ([GOOD, entry(network="2001:db8:0::/48")], "rtt[1].network"),
    ([GOOD, entry(network="2001:db8::/56")], "rtt[1].network"),
    ([GOOD, entry(network=24)], "rtt[1].network"),
    ([GOOD, entry(rtt=0.5)], "rtt[1].network"),  # the same network twice
    ([entry(rtt=-0.001)], "rtt[0].rtt"),
    ([entry(rtt=60.5)], "rtt[0].rtt"),
    ([entry(rtt=True)], "rtt[0].rtt"),
    ([entry(rtt="0.01")], "rtt[0].rtt"),
    (b'{"load": 0.5, "rtt": [{"network": "192.0.2.0/24", "rtt": NaN, "samples": 1}]}',
     "rtt[0].rtt"),
    (b'{"load": 0.5, "rtt": [{"network": "192.0.2.0/24", "rtt": 1e999, "samples": 1}]}',
     "rtt[0].rtt"),
    ([entry(samples=0)], "rtt[0].samples"),
    ([entry(samples=1.5)], "rtt[0].samples"),
    ([entry(samples=2**31)], "rtt[0].samples"),
    ([entry(samples=None)], "rtt[0].samples"),
    ([{"network": "192.0.2.0/24", "rtt": 0.01}], "rtt[0].samples"),
    ([entry(extra=1)], "rtt[0].extra"),
]  # fmt: skip


async def test_hostile_rtt_entries_are_refused_naming_index_and_field(
    farm: RunningDispatcher,
) -> None:
    for rtt, field in HOSTILE:
        raw = rtt if isinstance(rtt, bytes) else None
        body = None if raw is not None else {"load": 0.5, "connections": 1, "rtt": rtt}
        response = await farm.admin.put(LOAD, content=raw, json=body)
        case = f"{rtt!r:.100}"
        assert response.status_code == 422, f"{case}: {response.text[:300]}"
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("invalid", field), f"{case}: {error}"
        assert len(error["message"]) < 400, case
    dispatcher = farm.runner.farm
    assert await dispatcher._io(dispatcher.store.rtt_stamps) == {}  # nothing was stored
    assert len(dispatcher.rtt_view) == 0
    status = (await farm.admin.get("/api/v1/status")).json()
    assert [s["load"] for s in status["sites"]] == [None]  # nor the load that came with it


def worst_case_table() -> list[dict[str, Any]]:
    """The longest entries a switch can send: IPv6 networks, long numbers."""
    return [
        {"network": f"ffff:ffff:{i + 1:x}::/48", "rtt": 59.999999, "samples": 2**31 - 1}
        for i in range(MAX_REPORT_ENTRIES)
    ]


async def test_a_full_table_is_taken_and_answers_lookups(farm: RunningDispatcher) -> None:
    table = worst_case_table()
    body = json.dumps({"load": 1.0, "connections": 2**31 - 1, "rtt": table}, separators=(",", ":"))
    assert len(body) < MAX_BODY * 0.8  # what farmnode sends fits, with room to spare
    response = await farm.admin.put(LOAD, content=body)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["rtt_networks"] == MAX_REPORT_ENTRIES
    view = farm.runner.farm.snapshot.rtt
    assert view.lookup("ffff:ffff:1::9") == {"eu": (59.999999, 2**31 - 1)}
    assert view.lookup("ffff:ffff:2710:1::1") == {"eu": (59.999999, 2**31 - 1)}  # the last
    assert view.lookup("192.0.2.1") == {}
    # a report without a table keeps it; an empty table replaces it
    assert (await farm.admin.put(LOAD, json={"load": 0.5})).json().get("rtt_networks") is None
    assert farm.runner.farm.snapshot.rtt.lookup("ffff:ffff:1::9") != {}
    response = await farm.admin.put(LOAD, json={"load": 0.5, "rtt": []})
    assert response.json()["rtt_networks"] == 0
    assert farm.runner.farm.snapshot.rtt.lookup("ffff:ffff:1::9") == {}


# --- replicas -----------------------------------------------------------------------------------

EU = SiteSpec("eu", "http://127.0.0.2:9")
US = SiteSpec("us", "http://127.0.0.3:9")


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[tuple[Farm, Farm]]:
    """Two dispatchers' farms on one registry with sites eu and us (probed on loopback)."""
    config = build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={})
    stores = [SqlSiteStore(database_url), SqlSiteStore(database_url)]
    stores[0].upgrade()
    stores[0].seed([EU, US])
    farms = (Farm(config, stores[0]), Farm(config, stores[1]))
    for farm in farms:
        farm.rtt_rebuild_every = 0
    try:
        for farm in farms:
            await farm.refresh()
        yield farms
    finally:
        for farm in farms:
            await farm.stop()
        for store in stores:
            store.close()


async def test_a_table_reported_to_one_replica_reaches_the_other(
    replicas: tuple[Farm, Farm],
) -> None:
    a, b = replicas
    await a.report_load("eu", 0.5, 3, (RttEntry("192.0.2.0/24", 0.012, 9),))
    assert a.snapshot.rtt.lookup("192.0.2.7") == {"eu": (0.012, 9)}
    assert b.snapshot.rtt.lookup("192.0.2.7") == {}
    assert "1 new load" in await b.refresh()
    assert b.snapshot.rtt.lookup("192.0.2.7") == {"eu": (0.012, 9)}
    await b.report_load("us", 0.1, 1, (RttEntry("192.0.2.0/24", 0.080, 4),))
    await a.refresh()
    both = {"eu": (0.012, 9), "us": (0.080, 4)}
    assert a.snapshot.rtt.lookup("::ffff:192.0.2.7") == both
    assert b.snapshot.rtt.lookup("192.0.2.7") == both
    # what worker processes are sent: the view, pickled, and built into their snapshot
    state = pickle.loads(pickle.dumps(b.worker_state(1)))
    assert StateBuilder().build(state).rtt.lookup("192.0.2.200") == both
    # nothing changes without new reports: the view is not rebuilt
    view = b.rtt_view
    await b.refresh()
    assert b.rtt_view is view
    # a deleted site's table goes with it
    await a.delete_site("us")
    await b.refresh()
    assert b.snapshot.rtt.lookup("192.0.2.7") == {"eu": (0.012, 9)}


async def test_a_table_older_than_the_max_age_is_ignored(replicas: tuple[Farm, Farm]) -> None:
    a, _ = replicas
    old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=RTT_MAX_AGE + 60)
    table = RttReport("us", (RttEntry("198.51.100.0/24", 0.03, 2),), old)
    await a._io(a.store.record_load, LoadReport("us", 0.1, 1, old), table)
    await a.refresh()
    assert a.snapshot.rtt.lookup("198.51.100.1") == {}
    fresh = dt.datetime.now(dt.UTC)
    await a._io(
        a.store.record_load, LoadReport("us", 0.1, 1, fresh), RttReport("us", table.entries, fresh)
    )
    await a.refresh()
    assert a.snapshot.rtt.lookup("198.51.100.1") == {"us": (0.03, 2)}


async def test_views_are_built_at_most_once_per_interval(replicas: tuple[Farm, Farm]) -> None:
    a, _ = replicas
    a.rtt_rebuild_every = 0.5
    await a.report_load("eu", 0.5, 3, (RttEntry("192.0.2.0/24", 0.012, 9),))
    assert a.snapshot.rtt.lookup("192.0.2.7") == {"eu": (0.012, 9)}  # the first at once
    await a.report_load("us", 0.5, 3, (RttEntry("192.0.2.0/24", 0.050, 2),))
    assert a.snapshot.rtt.lookup("192.0.2.7") == {"eu": (0.012, 9)}  # the next one waits
    await a.refresh()
    assert "us" not in a.snapshot.rtt.lookup("192.0.2.7")
    await asyncio.sleep(0.5)
    assert "1 new load" not in await a.refresh()  # no new load, but a new view
    assert a.snapshot.rtt.lookup("192.0.2.7") == {"eu": (0.012, 9), "us": (0.050, 2)}
