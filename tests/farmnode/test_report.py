"""Load reports: the body (pure, with hypothesis), the reporter against a real dispatcher
started in-process, its failures (never raised, retried), and a node whose reports reach the
dispatcher's status end to end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmnode.config import ReportSettings
from farmnode.daemon import Node
from farmnode.report import Measure, Reporter, load_body, request_timeout, rtt_list
from farmnode.rtt import RttTable
from tests.conftest import ADMIN_TOKEN, LoopbackSite, RunningDispatcher, farm_toml
from tests.farmnode.test_daemon import (
    FAST,
    id_servers,
    node_config,
    running_node,
    service_toml,
    wait_for,
    wait_until,
)
from tests.ports import free_port

pytestmark = pytest.mark.anyio


# --- the body (pure) -----------------------------------------------------------------------------


@given(
    connections=st.integers(min_value=-10, max_value=10**12),
    capacity=st.integers(min_value=1, max_value=10**9),
    available=st.booleans(),
)
def test_load_is_a_utilisation_from_0_to_1(
    connections: int, capacity: int, available: bool
) -> None:
    body = load_body(Measure(connections, available), capacity)
    assert set(body) == {"load", "connections"}
    assert 0.0 <= body["load"] <= 1.0
    assert body["connections"] == max(0, connections)
    if not available:
        assert body["load"] == 1.0
    elif connections <= capacity:
        assert body["load"] == max(0, connections) / capacity
    else:
        assert body["load"] == 1.0  # over capacity is full, not more


def test_load_examples() -> None:
    assert load_body(Measure(0, True), 500) == {"load": 0.0, "connections": 0}
    assert load_body(Measure(125, True), 500) == {"load": 0.25, "connections": 125}
    assert load_body(Measure(900, True), 500) == {"load": 1.0, "connections": 900}
    assert load_body(Measure(3, False), 500) == {"load": 1.0, "connections": 3}


def test_request_timeout_is_bounded() -> None:
    assert [request_timeout(s) for s in (0.1, 2.0, 60.0)] == [1.0, 2.0, 5.0]


# --- against a real dispatcher -------------------------------------------------------------------


@pytest.fixture
async def dispatcher(
    sites: dict[str, LoopbackSite], tmp_path: Path
) -> AsyncIterator[RunningDispatcher]:
    """A dispatcher with sites eu and us (both healthy), on free loopback ports."""
    path = tmp_path / "farm.toml"
    text = farm_toml(
        {"eu": (sites["eu"], 1), "us": (sites["us"], 1)},
        database_url=f"sqlite:///{tmp_path / 'farm.db'}",
    )
    path.write_text(text, encoding="utf-8")
    running = RunningDispatcher(await RunningDispatcher.start_runner(path))
    try:
        yield running
    finally:
        await running.close()


def admin_url(dispatcher: RunningDispatcher) -> str:
    assert dispatcher.runner.admin is not None
    return f"http://127.0.0.1:{dispatcher.runner.admin.port}"


def settings(url: str, **changes: Any) -> ReportSettings:
    base = ReportSettings(url=url, site="eu", token=ADMIN_TOKEN, capacity=10, interval=0.1)
    return replace(base, **changes)


def measuring(connections: int, available: bool = True) -> Any:
    async def measure() -> Measure:
        return Measure(connections, available)

    return measure


async def site_load(dispatcher: RunningDispatcher, site: str = "eu") -> dict[str, Any] | None:
    """The load the dispatcher's status (``GET /api/v1/status``) shows for ``site``."""
    response = await dispatcher.admin.get("/api/v1/status")
    assert response.status_code == 200
    [entry] = [s for s in response.json()["sites"] if s["name"] == site]
    load: dict[str, Any] | None = entry["load"]
    return load


async def test_a_report_reaches_the_dispatcher(dispatcher: RunningDispatcher) -> None:
    reporter = Reporter(settings(admin_url(dispatcher)), measuring(3))
    try:
        assert await reporter.report_once() == "reported load 0.300 (3 conn)"
        load = await site_load(dispatcher)
        assert load is not None
        assert (load["load"], load["connections"]) == (0.3, 3)
        assert await site_load(dispatcher, "us") is None
        reporter_down = Reporter(settings(admin_url(dispatcher)), measuring(2, False))
        assert await reporter_down.report_once() == "reported load 1.000 (2 conn)"
        await reporter_down.close()
        load = await site_load(dispatcher)
        assert load is not None
        assert (load["load"], load["connections"]) == (1.0, 2)
        assert (reporter.sent, reporter.failed) == (1, 0)
        assert reporter.status()["body"] == {"load": 0.3, "connections": 3}
    finally:
        await reporter.close()


async def test_refusals_are_reported_not_raised(dispatcher: RunningDispatcher) -> None:
    url = admin_url(dispatcher)
    cases = [
        (settings(url, token="wrong"), "report refused: HTTP 401: the dispatcher does not accept"),
        (
            settings(url, site="mars"),
            "report refused: HTTP 404: the dispatcher knows no site 'mars'",
        ),
    ]
    for wrong, expected in cases:
        reporter = Reporter(wrong, measuring(1))
        try:
            assert (await reporter.report_once()).startswith(expected)
            assert (reporter.sent, reporter.failed) == (0, 1)
        finally:
            await reporter.close()
    assert await site_load(dispatcher) is None  # nothing was stored


async def test_an_unreachable_dispatcher_is_retried_every_interval(
    dispatcher: RunningDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="webfarm.farmnode.report")
    reporter = Reporter(settings(f"http://127.0.0.1:{free_port()}"), measuring(4))
    task = asyncio.create_task(reporter.run())
    try:
        await wait_until("three failed reports", lambda: reporter.failed >= 3)
        assert not task.done()
        assert reporter.last.startswith("report failed: http://127.0.0.1:")
        assert "ConnectError" in reporter.last
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # said once, then quietly retried
        reporter.settings = settings(admin_url(dispatcher))  # the dispatcher is back
        await wait_until("a report through", lambda: reporter.sent >= 1)
        assert reporter.last == "reported load 0.400 (4 conn)"
        assert any("go through again" in r.getMessage() for r in caplog.records)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reporter.close()


async def test_a_broken_measure_does_not_end_the_reports(
    dispatcher: RunningDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def measure() -> Measure:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return Measure(1, True)

    reporter = Reporter(settings(admin_url(dispatcher)), measure)
    task = asyncio.create_task(reporter.run())
    try:
        await wait_until("a report after the bug", lambda: reporter.sent >= 1)
        assert any(r.exc_info for r in caplog.records)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reporter.close()


# --- a node's reports, end to end -------------------------------------------------------------


async def test_a_node_reports_its_load_to_the_dispatcher(dispatcher: RunningDispatcher) -> None:
    report = f"""
[report]
url = "{admin_url(dispatcher)}"
site = "eu"
token = "{ADMIN_TOKEN}"
capacity = 4
interval = 0.1
"""
    async with id_servers("a", "b") as (a, b):
        port = free_port()
        config = node_config(service_toml("web", port, [a, b]), report=report)
        async with running_node(config) as node:

            async def reported(load: float, connections: int) -> bool:
                got = await site_load(dispatcher)
                return got is not None and (got["load"], got["connections"]) == (load, connections)

            await wait_for("an idle report", lambda: reported(0.0, 0))
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            try:
                await wait_for("two connections reported", lambda: reported(0.5, 2))
                await a.kill()
                await b.kill()
                for reader, writer in held:  # the servers closed: so does the client
                    assert await asyncio.wait_for(reader.read(), 10) == b""
                    writer.close()
                await wait_for("no real server: load 1.0", lambda: reported(1.0, 0))
                status = node.status()["report"]
                assert status["site"] == "eu"
                assert status["sent"] >= 3
                assert status["last"].startswith("reported load ")
            finally:
                for _, writer in held:
                    writer.close()


# --- learned latency -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rtt_list_is_the_best_sampled_networks() -> None:
    table = RttTable()
    for _ in range(3):
        table.add("192.0.2.1", 0.012)
    table.add("2001:db8:1::7", 0.2)
    assert rtt_list(table) == [
        {"network": "192.0.2.0/24", "rtt": 0.012, "samples": 3},
        {"network": "2001:db8:1::/48", "rtt": 0.2, "samples": 1},
    ]
    assert rtt_list(table, limit=1) == [{"network": "192.0.2.0/24", "rtt": 0.012, "samples": 3}]


async def test_reports_carry_the_rtt_table_once_per_interval(
    dispatcher: RunningDispatcher,
) -> None:
    clock = Clock()
    table = RttTable(clock=clock)
    reporter = Reporter(
        settings(admin_url(dispatcher)), measuring(1), rtt=table, rtt_interval=60, clock=clock
    )
    farm = dispatcher.runner.farm
    farm.rtt_rebuild_every = 0  # every table in force at once
    try:
        assert await reporter.report_once() == "reported load 0.100 (1 conn)"  # nothing yet
        assert "rtt" not in (reporter.status()["body"] or {})
        table.add("192.0.2.1", 0.012)
        assert await reporter.report_once() == "reported load 0.100 (1 conn), RTT of 1 networks"
        assert reporter.status()["body"]["rtt"] == "1 networks"
        assert reporter.status()["rtt_networks"] == 1
        assert farm.snapshot.rtt.lookup("192.0.2.9") == {"eu": (0.012, 1)}
        table.add("198.51.100.1", 0.02)
        clock.now += 59
        assert await reporter.report_once() == "reported load 0.100 (1 conn)"  # not yet again
        assert farm.snapshot.rtt.lookup("198.51.100.9") == {}
        clock.now += 1
        assert (await reporter.report_once()).endswith("RTT of 2 networks")
        assert farm.snapshot.rtt.lookup("198.51.100.9") == {"eu": (0.02, 1)}
        clock.now += 10_000  # everything is forgotten: an empty table replaces the last one
        assert (await reporter.report_once()).endswith("RTT of 0 networks")
        assert farm.snapshot.rtt.lookup("192.0.2.9") == {}
        clock.now += 60
        assert await reporter.report_once() == "reported load 0.100 (1 conn)"  # once is enough
    finally:
        await reporter.close()


async def test_a_refused_table_is_sent_again_at_the_next_report(
    dispatcher: RunningDispatcher,
) -> None:
    table = RttTable()
    table.add("192.0.2.1", 0.012)
    reporter = Reporter(settings(admin_url(dispatcher), site="mars"), measuring(1), rtt=table)
    try:
        assert (await reporter.report_once()).startswith("report refused: HTTP 404")
        reporter.settings = settings(admin_url(dispatcher))
        assert (await reporter.report_once()).endswith("RTT of 1 networks")
    finally:
        await reporter.close()


async def test_a_node_reports_its_clients_rtt_to_the_dispatcher(
    dispatcher: RunningDispatcher,
) -> None:
    """Real connections through a node's switch, from two client networks: the dispatcher's
    snapshot then answers each network with the RTT the switch read from the kernel."""
    report = f"""
[report]
url = "{admin_url(dispatcher)}"
site = "eu"
token = "{ADMIN_TOKEN}"
capacity = 4
interval = 0.1
"""
    async with id_servers("a") as (a,):
        port = free_port()
        config = node_config(service_toml("web", port, [a]), report=report)
        dispatcher.runner.farm.rtt_rebuild_every = 0.2
        node = Node(config, timeouts=replace(FAST, rtt_report=0.2))
        await node.start()
        try:
            for source in ("127.0.5.9", "127.0.5.10", "127.0.5.11", "127.0.6.1"):
                async with httpx.AsyncClient(
                    transport=httpx.AsyncHTTPTransport(local_address=source), trust_env=False
                ) as client:
                    assert (await client.get(f"http://127.0.0.1:{port}/")).text == "a"
            farm = dispatcher.runner.farm

            async def learned() -> bool:
                view = farm.snapshot.rtt
                three = view.lookup("127.0.5.77").get("eu", (0, 0))[1] == 3
                return three and set(view.lookup("127.0.6.200")) == {"eu"}

            await wait_for("the RTT table of both networks at the dispatcher", learned)
            for address in ("127.0.5.77", "127.0.6.200"):
                rtt, _ = farm.snapshot.rtt.lookup(address)["eu"]
                assert 0 < rtt < 0.2  # loopback
            assert farm.snapshot.rtt.lookup("127.0.7.1") == {}
            assert node.status()["report"]["rtt_networks"] == 2
        finally:
            await node.stop()
