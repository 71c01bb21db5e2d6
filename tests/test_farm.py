"""The farm's slow side: store calls when a dispatcher stops; snapshots built only for what
placement reads (an up/down change), never for a probe that changes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from pathlib import Path

import pytest

from dispatcher.backends.health import Health, Prober, ProbeResult, Target
from dispatcher.backends.store import LoadReport, SqlSiteStore
from dispatcher.config import build_config
from dispatcher.farm import Farm
from dispatcher.snapshot import Snapshot
from tests.conftest import LoopbackSite

pytestmark = pytest.mark.anyio


class SlowStore(SqlSiteStore):
    """A real SQLite store whose ``loads()`` takes a while, and that notes misuse."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.running = 0
        self.closed_while_running = False
        self.started = threading.Event()

    def loads(self) -> dict[str, LoadReport]:
        self.running += 1
        self.started.set()
        try:
            time.sleep(0.5)
            return dict(super().loads())
        finally:
            self.running -= 1

    def close(self) -> None:
        self.closed_while_running = self.running > 0
        super().close()


async def test_stop_waits_for_store_calls_of_cancelled_callers(tmp_path: Path) -> None:
    store = SlowStore(f"sqlite:///{tmp_path / 'farm.db'}")
    store.upgrade()
    config = build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={})
    farm = Farm(config, store)
    refresh = asyncio.create_task(farm.refresh())
    assert await asyncio.to_thread(store.started.wait, 5)
    refresh.cancel()  # as Runner.stop cancels the refresher mid-query
    with pytest.raises(asyncio.CancelledError):
        await refresh
    assert store.running == 1  # the thread goes on regardless
    await farm.stop()
    assert store.running == 0
    store.close()
    assert not store.closed_while_running


# --- the snapshot is rebuilt for what placement reads, not for every probe ------------------


def probed_farm(tmp_path: Path, site: LoopbackSite) -> Farm:
    """A farm with one site, probed every 0.1 s; an up/down change after one probe."""
    store = SqlSiteStore(f"sqlite:///{tmp_path / 'farm.db'}")
    store.upgrade()
    check = {"url": "/health", "expect": "OK", "interval": 0.1, "rise": 1, "fall": 1}
    raw = {
        "dispatcher": {"admin_tokens": ["t"]},
        "sites": [{"name": "eu", "base_url": site.url, "check": check}],
    }
    return Farm(build_config(raw, environ={}), store)


async def probes_seen(farm: Farm, count: int) -> list[ProbeResult]:
    """Wait (3 s at most) until ``count`` more probes of ``eu`` were counted; return them."""
    seen: list[ProbeResult] = []
    async with asyncio.timeout(3):
        while len(seen) < count:
            last = farm.last_probe("eu")
            if last is not None and (not seen or last.at != seen[-1].at):
                seen.append(last)
            await asyncio.sleep(0.01)
    return seen


async def test_a_probe_that_changes_nothing_builds_no_snapshot_and_ships_nothing(
    tmp_path: Path,
) -> None:
    site = LoopbackSite("eu")
    await site.start()
    farm = probed_farm(tmp_path, site)
    shipped: list[Snapshot] = []
    try:
        await farm.start()
        farm.on_change = lambda: shipped.append(farm.snapshot)
        steady = farm.snapshot
        assert steady.sites["eu"].health == Health("up", None)  # the state only

        seen = await probes_seen(farm, 4)
        assert all(r.ok for r in seen)
        assert farm.snapshot is steady  # four probes, not one rebuild
        assert shipped == []

        site.app.health_status = 503  # fall = 1: the next probe takes it down
        async with asyncio.timeout(3):
            while farm.snapshot.sites["eu"].health.state != "down":
                await asyncio.sleep(0.01)
        down = farm.snapshot
        assert shipped == [down]  # one rebuild, shipped once
        assert down.default_pool.candidates == ()
        last = farm.last_probe("eu")
        assert last is not None
        assert last.detail == "HTTP 503"

        await probes_seen(farm, 3)  # still down: nothing more to build or ship
        assert farm.snapshot is down
        assert shipped == [down]
    finally:
        await farm.stop()
        farm.store.close()
        await site.stop()


async def test_a_first_round_of_many_probes_makes_one_snapshot(tmp_path: Path) -> None:
    """300 sites come up in the first round: one snapshot with all of them, not 300 (each
    rebuilding all 300 sites) while the round is still in flight."""
    store = SqlSiteStore(f"sqlite:///{tmp_path / 'farm.db'}")
    store.upgrade()
    sites = [{"name": f"s{i}", "base_url": f"http://127.0.0.1:{10_000 + i}"} for i in range(300)]
    raw = {"dispatcher": {"admin_tokens": ["t"]}, "sites": sites}
    farm = Farm(build_config(raw, environ={}), store)
    farm.prober = Prober(farm._on_health, probes={"http": answered})
    shipped: list[Snapshot] = []
    farm.on_change = lambda: shipped.append(farm.snapshot)
    try:
        await farm.start()
        await asyncio.sleep(0.01)  # (a rebuild deferred to the end of a turn would be here)
        assert len(shipped) == 1
        assert len(farm.snapshot.default_pool.candidates) == 300
    finally:
        await farm.stop()
        store.close()


async def answered(target: Target) -> ProbeResult:
    """A probe without a socket: the site answered."""
    return ProbeResult(True, "HTTP 200", time.monotonic(), dt.datetime.now(dt.UTC), 0.001)
