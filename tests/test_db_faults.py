"""Database faults on a real PostgreSQL of the test's own (never the shared one on 5432):
stopped with SIGSTOP (it hangs), shut down (it refuses), and back.

The admin API answers 503 within ``database_timeout`` (+1 s), a write whose client got an
error never appears later, the public listener keeps redirecting from its snapshot all
along, changes made elsewhere are picked up when the database returns, and the
dispatcher stops promptly while the database hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dispatcher.backends.store import SqlSiteStore
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml, skip_or_fail
from tests.farmnode.pgcluster import PgLab, PgNode, _pids, _ppid, unavailable

pytestmark = pytest.mark.anyio
TIMEOUT = 2.0  # database_timeout of the dispatcher under test


@pytest.fixture(scope="module")
def lab_node() -> Iterator[PgNode]:
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    lab = PgLab()
    try:
        node = lab.initdb("faults")
        node.start()
        yield node
    finally:
        _signal(lab.nodes, signal.SIGCONT)
        time.sleep(0.5)
        for node in lab.nodes:
            node.stop("fast")  # "immediate" can wait a minute for backends forked late
        lab.close()


@pytest.fixture
def lab_url(lab_node: PgNode) -> Iterator[str]:
    name = f"farm_{os.getpid()}_{time.monotonic_ns()}"
    if not lab_node.running():
        lab_node.start()
    lab_node.sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:{lab_node.port}/{name}"
    finally:
        _signal([lab_node], signal.SIGCONT)
        if not lab_node.running():
            lab_node.start()
        lab_node.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _signal(nodes: list[PgNode], sig: signal.Signals) -> None:
    """``sig`` to every process of the clusters: the postmaster and all its children."""
    for node in nodes:
        pid = node.postmaster_pid()
        if pid is None:
            continue
        for target in (pid, *(p for p in _pids() if _ppid(p) == pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)


@contextlib.contextmanager
def stopped(node: PgNode) -> Iterator[None]:
    """The cluster hangs (SIGSTOP) inside the block; it always resumes after it."""
    _signal([node], signal.SIGSTOP)
    try:
        yield
    finally:
        _signal([node], signal.SIGCONT)


async def start(lab_url: str, sites: dict[str, LoopbackSite], tmp_path: Path) -> RunningDispatcher:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(
        farm_toml(
            {"eu": (sites["eu"], 1), "us": (sites["us"], 1)},
            database_url=lab_url,
            extra=f"database_timeout = {TIMEOUT}",
        )
    )
    return RunningDispatcher(await RunningDispatcher.start_runner(config_file))


async def _redirects(farm: RunningDispatcher, n: int) -> set[str]:
    """``n`` public requests; the sites they were sent to (each must be a redirect)."""
    places = set()
    for _ in range(n):
        response = await farm.public.get("/x")
        assert response.status_code == 302, response.text
        places.add(response.headers["location"].rsplit("/", 1)[0])
    return places


async def test_a_hung_database_gets_503s_in_time_and_late_writes_never_appear(
    lab_node: PgNode, lab_url: str, sites: dict[str, LoopbackSite], tmp_path: Path
) -> None:
    farm = await start(lab_url, sites, tmp_path)
    new = {"name": "late", "base_url": sites["asia"].url}
    try:
        await _redirects(farm, 5)
        with stopped(lab_node):
            began = time.monotonic()
            created = await farm.admin.post("/api/v1/sites", json=new)
            took = time.monotonic() - began
            assert created.status_code == 503, created.text
            assert created.json()["error"]["code"] == "store_unavailable"
            assert "did not answer" in created.json()["error"]["message"]
            assert took < TIMEOUT + 1.0, took
            began = time.monotonic()
            rules = await farm.admin.get("/api/v1/rules")
            assert rules.status_code == 503
            assert time.monotonic() - began < TIMEOUT + 1.0
            # the hot path never waits on the database: it serves from its snapshot
            began = time.monotonic()
            assert await _redirects(farm, 50) == {sites["eu"].url, sites["us"].url}
            assert time.monotonic() - began < 2.0
            await asyncio.sleep(TIMEOUT)  # let the refresher hang on it too
            assert await _redirects(farm, 5)
        # back: the refused write never appears, and the dispatcher works again
        await asyncio.sleep(1.0)
        assert (await farm.admin.get("/api/v1/sites/late")).status_code == 404
        other = SqlSiteStore(lab_url)
        try:
            assert "late" not in {s.name for s in other.list_sites()}
            other.modify_site("us", lambda site: replace(site, drained=True))
        finally:
            other.close()
        # a change made elsewhere (another replica) reaches the hot path without a restart
        deadline = time.monotonic() + TIMEOUT + 3
        while await _redirects(farm, 4) != {sites["eu"].url}:
            assert time.monotonic() < deadline, "the drain made elsewhere was never picked up"
            await asyncio.sleep(0.1)
        assert (await farm.admin.post("/api/v1/sites", json=new)).status_code == 201
    finally:
        await farm.close()


async def test_a_refusing_database_says_so_and_the_hot_path_serves_on(
    lab_node: PgNode, lab_url: str, sites: dict[str, LoopbackSite], tmp_path: Path
) -> None:
    farm = await start(lab_url, sites, tmp_path)
    try:
        lab_node.stop("fast")
        began = time.monotonic()
        response = await farm.admin.put("/api/v1/sites/eu/load", json={"load": 0.5})
        assert time.monotonic() - began < TIMEOUT + 1.0
        assert response.status_code == 503, response.text
        message = response.json()["error"]["message"]
        assert "cannot connect" in message, message
        assert "refused" in message.lower(), message
        assert "upgrade" not in message, message
        assert await _redirects(farm, 20) == {sites["eu"].url, sites["us"].url}
        lab_node.start()
        load = await farm.admin.put("/api/v1/sites/eu/load", json={"load": 0.5})
        assert load.status_code == 200, load.text
    finally:
        await farm.close()


async def test_the_dispatcher_stops_promptly_while_the_database_hangs(
    lab_node: PgNode, lab_url: str, sites: dict[str, LoopbackSite], tmp_path: Path
) -> None:
    farm = await start(lab_url, sites, tmp_path)
    with stopped(lab_node):
        request = asyncio.create_task(farm.admin.post("/api/v1/sites/eu/drain"))
        await asyncio.sleep(0.3)  # the drain is waiting on the database
        began = time.monotonic()
        await farm.close()
        took = time.monotonic() - began
        request.cancel()
        with contextlib.suppress(BaseException):
            await request
    assert took < TIMEOUT + 2.0, took


async def test_readyz_fails_while_the_database_hangs_and_recovers_after(
    lab_node: PgNode, lab_url: str, sites: dict[str, LoopbackSite], tmp_path: Path
) -> None:
    farm = await start(lab_url, sites, tmp_path)  # registry_refresh 0.2 s: a bound of 2 s
    try:
        assert (await farm.admin.get("/readyz")).status_code == 200
        with stopped(lab_node):
            began = time.monotonic()
            while (ready := await farm.admin.get("/readyz")).status_code == 200:
                assert time.monotonic() - began < 2.0 + 1.0, "still ready on a hung database"
                await asyncio.sleep(0.05)
            assert ready.status_code == 503
            doc = ready.json()
            assert doc["status"] == "failing"
            assert doc["checks"]["database"]["ok"] is False
            assert "beyond the bound of 2 s" in doc["checks"]["database"]["detail"]
            assert [n for n, c in doc["checks"].items() if not c["ok"]] == ["database"]
            assert doc["snapshot_age"] >= 1.5
            # alive all the same (no restart wanted), and the hot path serves on
            assert (await farm.admin.get("/livez")).status_code == 200
            assert await _redirects(farm, 5)
            await asyncio.sleep(1.0)
            assert (await farm.admin.get("/readyz")).status_code == 503
        began = time.monotonic()
        while (ready := await farm.admin.get("/readyz")).status_code != 200:
            assert time.monotonic() - began < TIMEOUT + 3.0, ready.text
            await asyncio.sleep(0.05)
        assert ready.json()["snapshot_age"] < 1.0
    finally:
        await farm.close()
