"""``GET /metrics`` on the dispatcher's admin listener: tokens, the text format (checked by
``promtool check metrics``), what the names say, hostile requests; the prober's check
counters as a pure core."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.backends.health import Prober, ProbeResult, Tally, Target
from tests.conftest import ADMIN_TOKEN, LoopbackSite, RunningDispatcher, farm_toml

pytestmark = pytest.mark.anyio
READER = "reader-token-0123456789"
REPORTER = "reporter-token-0123456789"
TOKENS = (
    f'admin_tokens = ["{ADMIN_TOKEN}", {{ name = "scraper", token = "{READER}", role = "reader" }},'
    f' {{ name = "feed", token = "{REPORTER}", role = "reporter", sites = ["eu"] }}]'
)


def config_text(tmp_path: Path, sites: dict[str, LoopbackSite], extra: str = "") -> str:
    text = farm_toml(
        {"eu": (sites["eu"], 3), "us": (sites["us"], 1)},
        database_url=f"sqlite:///{tmp_path / 'farm.db'}",
        extra=extra,
    )
    return text.replace(f'admin_tokens = ["{ADMIN_TOKEN}"]', TOKENS)


async def start(
    tmp_path: Path, sites: dict[str, LoopbackSite], extra: str = "", *, workers: bool = False
) -> RunningDispatcher:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(config_text(tmp_path, sites, extra))
    runner = await RunningDispatcher.start_runner(config_file, worker_processes=workers)
    return RunningDispatcher(runner)


@pytest.fixture
async def farm(tmp_path: Path, sites: dict[str, LoopbackSite]) -> AsyncIterator[RunningDispatcher]:
    farm = await start(tmp_path, sites)
    try:
        yield farm
    finally:
        await farm.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def promtool(text: str) -> None:
    """``promtool check metrics`` must accept ``text`` (lint problems included)."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/system-deps)")
    done = subprocess.run(
        [tool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


async def scrape(farm: RunningDispatcher, token: str | None = READER) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {"authorization": ""}
    return await farm.admin.get("/metrics", headers=headers)


async def test_tokens_decide_who_reads(farm: RunningDispatcher) -> None:
    assert (await scrape(farm, None)).status_code == 401
    assert (await scrape(farm, "wrong-token-0123456789")).status_code == 401
    refused = await scrape(farm, REPORTER)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    for token in (READER, ADMIN_TOKEN):
        answer = await scrape(farm, token)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")


async def test_public_when_configured(tmp_path: Path, sites: dict[str, LoopbackSite]) -> None:
    farm = await start(tmp_path, sites, "metrics_public = true")
    try:
        assert (await scrape(farm, None)).status_code == 200
        assert (
            await farm.admin.get("/api/v1/sites", headers={"authorization": ""})
        ).status_code == 401
    finally:
        await farm.close()


async def test_output_passes_promtool_and_says_what_happened(farm: RunningDispatcher) -> None:
    for _ in range(3):
        assert (await farm.public.get("/")).status_code == 302
    await farm.admin.post("/api/v1/sites/us/drain")
    text = (await scrape(farm)).text
    promtool(text)
    assert value(text, "webfarm_site_status", site="eu", pool="default", state="up") == 1
    assert value(text, "webfarm_site_status", site="us", pool="default", state="drained") == 1
    assert value(text, "webfarm_site_status", site="us", pool="default", state="up") == 0
    assert value(text, "webfarm_site_weight", site="eu", pool="default") == 3
    assert value(text, "webfarm_site_drained", site="us", pool="default") == 1
    placed = [
        value(text, "webfarm_redirects_total", site=s, pool="default", reason="placed")
        for s in ("eu", "us")
    ]
    assert sum(placed) == 3
    for site in ("eu", "us"):  # every reason of every site, from zero (rate() needs them)
        for reason in ("affinity", "rules"):
            labels = {"site": site, "pool": "default", "reason": reason}
            assert value(text, "webfarm_redirects_total", **labels) == 0
    assert "# HELP webfarm_redirects_total Clients sent to the site" in text
    assert value(text, "webfarm_worker_up", worker="0") == 1
    assert value(text, "webfarm_site_check_failures_total", site="eu", pool="default") == 0
    assert value(text, "webfarm_site_check_duration_seconds", site="eu", pool="default") > 0
    assert value(text, "webfarm_probe_late_results_total") == 0


async def test_a_dead_site_counts_failures_and_downtime(
    farm: RunningDispatcher, sites: dict[str, LoopbackSite]
) -> None:
    sites["us"].app.health_status = 500
    labels = {"site": "us", "pool": "default"}
    async with asyncio.timeout(10):
        while True:
            text = (await scrape(farm)).text
            if value(text, "webfarm_site_status", **labels, state="down") == 1:
                break
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    text = (await scrape(farm)).text
    assert value(text, "webfarm_site_check_up_down_total", **labels) == 1
    assert value(text, "webfarm_site_check_failures_total", **labels) >= 2
    assert value(text, "webfarm_site_downtime_seconds_total", **labels) > 0.2
    assert value(text, "webfarm_site_eligible", **labels) == 0


@pytest.mark.parametrize(
    ("method", "headers", "path"),
    [
        ("GET", {"accept": "application/openmetrics-text; version=1.0.0"}, "/metrics"),
        ("GET", {"accept": "*/*;q=nonsense, \x7f"}, "/metrics"),
        ("GET", {"accept": "a" * 8000}, "/metrics?name[]=x&format=json&%ff=%00"),
        ("HEAD", {}, "/metrics"),
        ("GET", {}, "/metrics?"),
    ],
)
async def test_odd_requests_are_answered(
    farm: RunningDispatcher, method: str, headers: dict[str, str], path: str
) -> None:
    answer = await farm.admin.request(
        method, path, headers={"authorization": f"Bearer {READER}", **headers}
    )
    assert answer.status_code == 200
    if method == "HEAD":
        assert answer.content == b""
        assert int(answer.headers["content-length"]) > 0
    else:
        promtool(answer.text)


async def test_other_methods_are_405(farm: RunningDispatcher) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        answer = await farm.admin.request(method, "/metrics", content=b"x")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET, HEAD"


async def test_worker_processes_are_summed(tmp_path: Path, sites: dict[str, LoopbackSite]) -> None:
    farm = await start(tmp_path, sites, "workers = 2", workers=True)
    try:
        for _ in range(6):
            assert (await farm.public.get("/")).status_code == 302
        async with asyncio.timeout(10):
            while True:  # the workers report twice a second
                text = (await scrape(farm)).text
                placed = sum(
                    value(text, "webfarm_redirects_total", site=s, pool="default", reason="placed")
                    for s in ("eu", "us")
                )
                if placed == 6:
                    break
                await asyncio.sleep(0.1)
        promtool(text)
        for worker in ("0", "1"):
            assert value(text, "webfarm_worker_up", worker=worker) == 1
            assert value(text, "webfarm_worker_restarts_total", worker=worker) == 0
    finally:
        await farm.close()


async def test_worker_processes_report_why_each_site_was_chosen(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    """A new client is ``placed``, its return with the cookie ``affinity``, a rule's
    ``${site:default}`` ``rules``: what the workers count reaches the control process."""
    (tmp_path / "rules.conf").write_text(
        "RewriteEngine on\nRewriteRule ^/pick$ ${site:default}/x [R=302,L]\n"
    )
    keys = f'secret_keys = ["{"k" * 40}"]'
    extra = f'workers = 2\nrules = "rules.conf"\naffinity = "cookie"\n{keys}'
    farm = await start(tmp_path, sites, extra, workers=True)
    try:
        first = await farm.public.get("/")
        farm.public.cookies.clear()  # (sent by hand below, not by the client's jar)
        chosen = next(n for n in ("eu", "us") if first.headers["location"] == sites[n].url + "/")
        stamp = {"cookie": first.headers["set-cookie"].split(";")[0]}
        for _ in range(3):
            back = await farm.public.get("/", headers=stamp)
            assert back.headers["location"] == first.headers["location"]
        assert (await farm.public.get("/pick")).status_code == 302
        want = {"placed": 1, "affinity": 3, "rules": 1}
        async with asyncio.timeout(10):
            while True:  # the workers report twice a second
                text = (await scrape(farm)).text
                got = {
                    reason: sum(
                        value(
                            text, "webfarm_redirects_total", site=s, pool="default", reason=reason
                        )
                        for s in ("eu", "us")
                    )
                    for reason in want
                }
                if got == want:
                    break
                await asyncio.sleep(0.1)
        labels = {"site": chosen, "pool": "default", "reason": "affinity"}
        assert value(text, "webfarm_redirects_total", **labels) == 3
        promtool(text)
        status = (await farm.admin.get("/api/v1/status")).json()
        assert sum(site["redirects"] for site in status["sites"]) == 5  # (the sum per site)
    finally:
        await farm.close()


# --- the check counters, pure -------------------------------------------------------------


def test_tally_counts_moves_and_downtime() -> None:
    tally = Tally()
    tally.record(True, "unknown", "up", 0.0)
    tally.record(False, "up", "up", 1.0)
    tally.record(False, "up", "down", 2.0)
    assert (tally.failures, tally.up_down) == (2, 1)
    assert tally.downtime(5.0) == 3.0
    tally.record(True, "down", "down", 6.0)
    tally.record(True, "down", "up", 7.0)
    assert tally.downtime(100.0) == 5.0
    tally.record(False, "up", "down", 10.0)
    assert (tally.up_down, tally.downtime(11.0)) == (2, 6.0)


async def test_prober_keeps_a_tally_per_target() -> None:
    now = [0.0]
    verdicts = iter([False, True, True, False, False])

    async def probe(target: Target) -> ProbeResult:
        return ProbeResult(next(verdicts), "fake", now[0], dt.datetime.now(dt.UTC), 0.01)

    prober = Prober(lambda *_: None, probes={"http": probe}, clock=lambda: now[0])
    target = Target("a", "http://127.0.0.1:9/", "OK", 3600.0, 1.0, 2, 2)
    await prober.sync([target])  # the first result: down from unknown, not an up->down
    for step in range(4):
        now[0] = 10.0 * (step + 1)
        await prober._probe(target, now[0])
    tally = prober.tally("a")
    assert tally is not None
    assert (tally.failures, tally.up_down) == (3, 1)
    assert tally.downtime(now[0]) == pytest.approx(20.0 + 0.0)  # 0..20 down, 40.. down again
    await prober.close()
    assert prober.tally("a") is None
