"""The control/worker split: its pure parts without sockets, then a Runner in this process
driving real worker processes (``python -m dispatcher.worker``) on real loopback sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backends.snapshot import Load
from dispatcher.backends.store import LoadReport
from dispatcher.config import build_config
from dispatcher.control import worker_environment
from dispatcher.reload import plan_reload
from dispatcher.wire import (
    RulesText,
    WireError,
    WorkerState,
    decode_report,
    decode_state,
    encode_redirects,
    encode_report,
    encode_state,
    for_workers,
)
from dispatcher.worker import StateBuilder
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml

# --- pure parts ---------------------------------------------------------------------------


def test_a_reload_applies_what_it_can_and_keeps_what_needs_a_restart() -> None:
    old = build_config({"dispatcher": {"admin_tokens": ["t"], "workers": 2}}, environ={})
    new = build_config(
        {
            "dispatcher": {
                "admin_tokens": ["t", "u"],
                "workers": 4,
                "listen": "127.0.0.1:9999",
                "redirect_status": 307,
            },
            "pools": {"eu": {"policy": "failover"}},
        },
        environ={},
    )
    plan = plan_reload(old, new)
    assert plan.config.dispatcher.workers == 2  # the running value stays
    assert plan.config.dispatcher.listen == old.dispatcher.listen
    assert plan.config.dispatcher.redirect_status == 307
    assert [t.token for t in plan.config.dispatcher.admin_tokens] == ["t", "u"]
    assert plan.config.pools["eu"].policy == "failover"
    assert plan.needs_restart == ("dispatcher.listen", "dispatcher.workers")
    assert set(plan.applied) == {
        "dispatcher.admin_tokens",
        "dispatcher.redirect_status",
        "pools",
    }
    assert "needs a restart (running values kept): dispatcher.listen" in plan.summary()
    assert plan_reload(old, old).summary() == "applied: nothing changed"


def test_workers_get_no_admin_tokens_no_database_url_and_no_farm_environment() -> None:
    cfg = build_config(
        {"dispatcher": {"admin_tokens": ["t"], "database_url": "postgresql://u:pw@db/farm"}},
        environ={},
    )
    shipped = for_workers(cfg).dispatcher
    assert shipped.admin_tokens == ()
    assert shipped.database_url == ""
    env = worker_environment({"PATH": "/bin", "FARM_ADMIN_TOKENS": "x", "FARM_SECRET_KEYS": "k"})
    assert env == {"PATH": "/bin"}


def state(generation: int, *, health: str = "up", rules: RulesText | None = None) -> WorkerState:
    cfg = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"]},
            "pools": {"eu": {}},
            "sites": [
                {"name": "a", "base_url": "http://a.example:8001"},
                {"name": "b", "base_url": "http://b.example:8002", "pool": "eu"},
            ],
        },
        environ={},
    )
    report = LoadReport("a", 0.5, 3, dt.datetime.now(dt.UTC))
    return WorkerState(
        generation=generation,
        config=for_workers(cfg),
        revision=7,
        sites=cfg.sites,
        health={"a": health, "b": "up"},  # type: ignore[dict-item]
        loads={"a": Load(report, time.monotonic())},
        rules=rules,
    )


def test_a_state_travels_and_builds_the_snapshot_a_worker_serves() -> None:
    rules = RulesText("RewriteEngine on\nRewriteRule ^/eu(.*)$ ${site:eu}$1 [R=302,L]\n", "t")
    message = decode_state(encode_state(state(1, rules=rules))[4:])
    assert isinstance(message, WorkerState)
    builder = StateBuilder()
    snapshot = builder.build(message)
    assert snapshot.revision == 7
    assert [c.name for c in snapshot.default_pool.candidates] == ["a"]
    assert snapshot.rules is not None
    assert snapshot.rules.source == rules.text
    down = builder.build(state(2, health="down", rules=rules))
    assert down.default_pool.candidates == ()
    assert down.rules is snapshot.rules  # same text: not compiled again
    assert down.pools["default"].policy is snapshot.pools["default"].policy  # rotation kept


def test_rules_that_no_longer_compile_in_a_worker_leave_the_running_ones() -> None:
    builder = StateBuilder()
    good = RulesText("RewriteEngine on\nRewriteRule ^/old$ /new [R=301,L]\n", "t")
    first = builder.build(state(1, rules=good))
    bad = RulesText("RewriteEngine on\nRewriteRule ^/x$ ${nomap:y} [R]\n", "t")
    second = builder.build(state(2, rules=bad))
    assert second.rules is first.rules


@given(st.binary(max_size=200))
def test_a_worker_report_is_a_checked_report_or_a_wire_error(payload: bytes) -> None:
    try:
        report = decode_report(payload)
    except WireError:
        return
    assert report.kind in ("ready", "ack", "counts")


@pytest.mark.parametrize(
    "report",
    [
        {"type": "ack", "generation": -1},
        {"type": "ack", "generation": True},
        {"type": "ack", "generation": 1 << 70},
        {"type": "counts", "redirects": {"a": "many"}},
        {"type": "counts", "redirects": [1]},
        {"type": "counts", "redirects": {"a": 3}, "redirect_reasons": [1]},
        {"type": "counts", "redirects": {"a": 3}, "redirect_reasons": {"a": 3}},
        {"type": "counts", "redirects": {"a": 3}, "redirect_reasons": {"b": {"placed": 3}}},
        {"type": "counts", "redirects": {"a": 3}, "redirect_reasons": {"a": {"bogus": 3}}},
        {"type": "counts", "redirects": {"a": 3}, "redirect_reasons": {"a": {"placed": 2}}},
        {"type": "counts", "redirects": {"a": 3}, "redirect_reasons": {"a": {"placed": 4}}},
        {"type": "counts", "redirects": {"a": 3}, "redirect_reasons": {}},
        {"type": "counts", "redirects": {"a": 1}, "redirect_reasons": {"a": {"rules": True}}},
        {"type": "counts", "redirects": {"a": 1}, "redirect_reasons": {"a": {"rules": "1"}}},
        {
            "type": "counts",
            "redirects": {"a": 1},
            "redirect_reasons": {"a": {"placed": 2, "rules": -1}},
        },
        {"type": "shell", "cmd": "rm"},
        [1, 2],
    ],
)
def test_malformed_worker_reports_are_refused(report: object) -> None:
    with pytest.raises(WireError):
        decode_report(encode_report(report)[4:])  # type: ignore[arg-type]


def test_counts_and_acks_are_read() -> None:
    counts = decode_report(encode_report({"type": "counts", "redirects": {"a": 3}})[4:])
    assert counts.redirects == {"a": (3, 0, 0)}  # (from before the reasons: all placed)
    split = {"a": (3, 1, 0), "b": (0, 0, 7)}
    report = encode_redirects(split)
    assert report == {
        "redirects": {"a": 4, "b": 7},
        "redirect_reasons": {"a": {"placed": 3, "affinity": 1}, "b": {"rules": 7}},
    }
    counts = decode_report(encode_report({"type": "counts", **report})[4:])
    assert counts.redirects == split
    none = {"type": "counts", "redirects": {"a": 0}, "redirect_reasons": {}}
    assert decode_report(encode_report(none)[4:]).redirects == {"a": (0, 0, 0)}
    assert decode_report(encode_report({"type": "ack", "generation": 9})[4:]).generation == 9


# --- a Runner in this process with real worker processes ---------------------------------


async def start_with_workers(
    tmp_path: Path, sites: dict[str, LoopbackSite], workers: int = 2, extra: str = ""
) -> RunningDispatcher:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(
        farm_toml(
            {name: (site, 1) for name, site in sites.items()},
            database_url=f"sqlite:///{tmp_path / 'farm.db'}",
            extra=f"workers = {workers}\ngraceful_timeout = 1.0\n{extra}",
        )
    )
    runner = await RunningDispatcher.start_runner(config_file, worker_processes=True)
    return RunningDispatcher(runner)


async def fresh_get(port: int, path: str) -> httpx.Response:
    """One request on a new connection (SO_REUSEPORT spreads new connections over the
    workers, so enough of these reach every worker)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


@pytest.mark.anyio
async def test_an_admin_change_is_in_force_in_every_worker_within_100_ms(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start_with_workers(tmp_path, {"eu": sites["eu"], "us": sites["us"]})
    try:
        workers = farm.runner.workers
        assert workers is not None
        assert {v.ready for v in workers.views()} == {True}
        assert len({v.pid for v in workers.views()}) == 2
        shown = (await farm.admin.get("/api/v1/status")).json()["workers"]
        assert [(w["index"], w["pid"], w["ready"]) for w in shown] == [
            (v.index, v.pid, True) for v in workers.views()
        ]
        before = workers.generation
        await asyncio.sleep(1.0)  # 5 probe rounds of 2 sites, nothing changed: nothing shipped
        assert workers.generation == before
        response = await farm.admin.post("/api/v1/sites/eu/drain")
        answered = time.monotonic()
        assert response.status_code == 200
        while not (
            workers.generation > before
            and all(v.generation >= workers.generation for v in workers.views())
        ):
            assert time.monotonic() - answered < 1.0, workers.views()
            await asyncio.sleep(0.001)
        latency = time.monotonic() - answered
        print(f"state propagation: every worker acked {latency * 1000:.1f} ms after the answer")
        assert latency < 0.1
        answers = await asyncio.gather(
            *(fresh_get(farm.runner.public_port, f"/p{i}") for i in range(40))
        )
        assert {a.headers["location"] for a in answers} == {
            f"{sites['us'].url}/p{i}" for i in range(40)
        }
    finally:
        await farm.close()


async def from_address(port: int, source: str) -> str:
    """The Location a request from ``source`` (a loopback address) gets, on a new
    connection."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{port}/page")
    assert response.status_code == 302, response.text
    return response.headers["location"]


@pytest.mark.anyio
async def test_network_affinity_places_a_network_alike_in_every_worker_and_every_replica(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = await start_with_workers(tmp_path / "one", sites, extra='affinity = "network"')
    try:
        two = await start_with_workers(tmp_path / "two", sites, extra='affinity = "network"')
    except BaseException:
        await one.close()
        raise
    try:
        landed: dict[str, set[str]] = {}
        for network in range(8):  # 127.9.N.0/24: one client network each
            sources = [f"127.9.{network}.{host}" for host in (1, 2, 3, 50, 200, 254)]
            answers = await asyncio.gather(
                *(
                    from_address(farm.runner.public_port, source)
                    for farm in (one, two)
                    for source in sources
                )
            )
            landed[f"127.9.{network}.0/24"] = set(answers)
        assert all(len(targets) == 1 for targets in landed.values()), landed
        spread = {next(iter(targets)) for targets in landed.values()}
        assert len(spread) >= 2  # networks spread over the sites
        workers = one.runner.workers
        assert workers is not None
        assert len({v.pid for v in workers.views()}) == 2
    finally:
        await one.close()
        await two.close()


@pytest.mark.anyio
async def test_redirect_counts_of_all_workers_reach_the_admin_api_as_totals(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start_with_workers(tmp_path, {"eu": sites["eu"]})
    try:
        answers = await asyncio.gather(
            *(fresh_get(farm.runner.public_port, "/") for _ in range(30))
        )
        assert {a.status_code for a in answers} == {302}
        deadline = time.monotonic() + 3
        total = 0
        while time.monotonic() < deadline and total < 30:
            await asyncio.sleep(0.1)
            status = (await farm.admin.get("/api/v1/status")).json()
            total = sum(site["redirects"] for site in status["sites"])
        assert total == 30
    finally:
        await farm.close()


@pytest.mark.anyio
async def test_a_reload_reaches_the_workers_and_a_bad_file_changes_nothing(
    tmp_path: Path, sites: dict[str, LoopbackSite], caplog: pytest.LogCaptureFixture
) -> None:
    farm = await start_with_workers(tmp_path, {"eu": sites["eu"]})
    config_file = tmp_path / "farm.toml"
    good = config_file.read_text()
    try:
        config_file.write_text(
            good.replace("registry_refresh = 0.2", "registry_refresh = 0.2\nredirect_status = 307")
        )
        assert await farm.runner.reload()
        await asyncio.sleep(0.2)
        answers = await asyncio.gather(
            *(fresh_get(farm.runner.public_port, "/") for _ in range(20))
        )
        assert {a.status_code for a in answers} == {307}
        config_file.write_text(good.replace("redirect_status", "nonsense") + "\n[dispatcher\n")
        assert not await farm.runner.reload()
        assert "refused, the running configuration stays" in caplog.text
        answers = await asyncio.gather(
            *(fresh_get(farm.runner.public_port, "/") for _ in range(10))
        )
        assert {a.status_code for a in answers} == {307}
        assert (await farm.admin.get("/api/v1/status")).status_code == 200
    finally:
        await farm.close()


@pytest.mark.anyio
async def test_stop_kills_and_reaps_a_worker_that_ignores_sigterm(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    """A worker that cannot stop (SIGSTOPped: SIGTERM waits) is killed after the graceful
    timeout, and reaped before ``stop`` returns: no worker process outlives the pool."""
    farm = await start_with_workers(tmp_path, {"eu": sites["eu"]})
    workers = farm.runner.workers
    assert workers is not None
    procs = [slot.proc for slot in workers._slots]
    os.kill(workers.views()[0].pid or 0, signal.SIGSTOP)
    began = time.monotonic()
    await farm.close()
    assert time.monotonic() - began < 1.0 + 1.0 + 8.0  # graceful_timeout, +1 s, slack
    assert [p is not None and p.returncode for p in procs] == [-signal.SIGKILL, 0]


@pytest.mark.anyio
async def test_a_hung_worker_is_replaced_and_the_other_keeps_answering(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start_with_workers(tmp_path, {"eu": sites["eu"]})
    try:
        workers = farm.runner.workers
        assert workers is not None
        workers.hung_after = 3.0  # (a starved worker can be silent 1 s on a busy machine)
        await asyncio.sleep(0.7)  # the next report waits with the new limit
        hung = workers.views()[0].pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)  # alive, but silent and answering nothing
        deadline = time.monotonic() + 20
        while hung in {v.pid for v in workers.views()} or not all(v.ready for v in workers.views()):
            assert time.monotonic() < deadline, workers.views()
            await asyncio.sleep(0.05)
        assert workers.views()[0].restarts == 1
        assert farm.runner.farm.worker_views is not None
        answers = await asyncio.gather(
            *(fresh_get(farm.runner.public_port, "/") for _ in range(20))
        )
        assert {a.status_code for a in answers} == {302}
    finally:
        await farm.close()


@pytest.mark.anyio
async def test_a_reload_adds_a_pool_with_its_rules_and_refuses_to_drop_a_pool_in_use(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    config_file = tmp_path / "farm.toml"
    rules = tmp_path / "rules.conf"
    rules.write_text("RewriteEngine on\n")
    base = farm_toml(
        {"eu": (sites["eu"], 1)},
        database_url=f"sqlite:///{tmp_path / 'farm.db'}",
        extra='rules = "rules.conf"',
    )
    config_file.write_text(base)
    farm = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    try:
        site = {"name": "us", "base_url": sites["us"].url, "pool": "us"}
        refused = await farm.admin.post("/api/v1/sites", json=site)
        assert refused.status_code == 422  # no pool "us" yet
        rules.write_text("RewriteEngine on\nRewriteRule ^/us(/.*)$ ${site:us}$1 [R=307,L]\n")
        config_file.write_text(base + '\n[pools.us]\npolicy = "failover"\n')
        assert await farm.runner.reload()
        assert (await farm.admin.post("/api/v1/sites", json=site)).status_code == 201
        for _ in range(50):  # the new site's first probe
            answer = await farm.public.get("/us/cart")
            if answer.status_code == 307:
                break
            await asyncio.sleep(0.1)
        assert answer.status_code == 307
        assert answer.headers["location"] == f"{sites['us'].url}/cart"
        config_file.write_text(base)  # pool "us" gone, but site us is in it
        assert not await farm.runner.reload()
        assert "us" in farm.runner.config.pools
        assert (await farm.public.get("/us/cart")).status_code == 307
    finally:
        await farm.close()
