"""A real Prometheus server (Debian's ``prometheus``) scrapes a running dispatcher (with a
``reader`` token) and two running farmnodes every second; its query API shows the values
move as a site is drained, killed and brought back, as a real server dies, and as the two
farmnodes' cluster group fails over.

The farmnodes ``n1`` (priority 200, with a virtual service) and ``n2`` (100) run in this
process, a heartbeat between them over UDP on 127.0.0.1 (interval 0.1 s, deadtime 0.5 s),
and share one group, ``front``: a ``script`` resource (``tests/farmnode/
test_cluster_runtime.py``'s, marking the node that holds it with a file) monitored every
0.3 s. ``n1`` takes it at start; at the end ``fail-n1`` makes its monitor fail there, and
the group moves to ``n2``: every node's ``webfarm_cluster_group_owner`` must name ``n2``.

The server runs in a temp dir of its own on a free loopback port, with no remote storage
or alerting; every wait is bounded, and the server is stopped at the end whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from farmnode.config import NodeConfig, parse_config
from tests.conftest import LoopbackSite, RunningDispatcher
from tests.farmnode.test_cluster_runtime import cluster_tables
from tests.farmnode.test_daemon import (
    id_servers,
    node_text,
    running_node,
    service_toml,
)
from tests.ports import free_port, free_ports
from tests.test_metrics import READER, config_text

pytestmark = pytest.mark.anyio
WAIT = 30.0  # a scrape a second; a generous bound for each change to show


def cluster_node(name: str, tmp_path: Path, ports: dict[str, int], *services: str) -> NodeConfig:
    """Node ``name`` of the two-node cluster (module docstring), with ``services``."""
    doc = tomllib.loads(node_text(*services).replace('name = "n1"', f'name = "{name}"', 1))
    doc["cluster"], doc["groups"] = cluster_tables(
        name,
        ports,
        tmp_path,
        priority=200 if name == "n1" else 100,
        monitor_interval=0.3,
        interval=0.1,
        initdead=0.5,
    )
    return parse_config(doc, f"{name}.toml", environ={})


@contextlib.contextmanager
def prometheus(tmp_path: Path, dispatcher: int, farmnodes: list[int]) -> Iterator[str]:
    """A Prometheus server scraping the dispatcher and the farmnodes; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (.ci/system-deps)")
    home = tmp_path / "prometheus"
    home.mkdir()
    (home / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: dispatcher
    authorization:
      credentials: "{READER}"
    static_configs:
      - targets: ["127.0.0.1:{dispatcher}"]
  - job_name: farmnode
    static_configs:
      - targets: {[f"127.0.0.1:{port}" for port in farmnodes]}
""")
    port = free_port()
    with (home / "log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def query(client: httpx.AsyncClient, base: str, expr: str) -> float | None:
    """The instant value of ``expr`` (one series), or None while there is none."""
    try:
        answer = await client.get(f"{base}/api/v1/query", params={"query": expr})
    except httpx.TransportError:
        return None  # not listening yet
    if answer.status_code != 200:
        return None
    result = answer.json()["data"]["result"]
    return float(result[0]["value"][1]) if len(result) == 1 else None


async def shows(client: httpx.AsyncClient, base: str, expr: str, wanted: float) -> float:
    """Wait (bounded) until Prometheus reports ``wanted`` for ``expr``; how long it took."""
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < WAIT:
        seen = await query(client, base, expr)
        if seen == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"{expr}: {seen}, not {wanted}, after {WAIT} s")


@pytest.fixture
async def farm(tmp_path: Path, sites: dict[str, LoopbackSite]) -> AsyncIterator[RunningDispatcher]:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(config_text(tmp_path, sites))
    farm = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    try:
        yield farm
    finally:
        await farm.close()


async def test_prometheus_sees_sites_and_servers_move(
    tmp_path: Path, farm: RunningDispatcher, sites: dict[str, LoopbackSite]
) -> None:
    us = 'site="us",pool="default"'
    ports = dict(zip(("n1", "n2"), free_ports(2), strict=True))
    async with id_servers("a", "b") as (a, b):
        web = service_toml("web", free_port(), [a, b])
        async with (
            running_node(cluster_node("n1", tmp_path, ports, web)) as node,
            running_node(cluster_node("n2", tmp_path, ports)) as n2,
            httpx.AsyncClient(trust_env=False) as client,
        ):
            assert farm.runner.admin is not None
            nodes = [node.status_port, n2.status_port]
            with prometheus(tmp_path, farm.runner.admin.port, nodes) as base:
                await shows(client, base, 'up{job="dispatcher"}', 1)
                await shows(client, base, 'count(up{job="farmnode"} == 1)', 2)
                owner = 'count(webfarm_cluster_group_owner{group="front",owner="%s"} == 1)'
                await shows(client, base, owner % "n1", 2)  # as both nodes see it
                await shows(client, base, f'webfarm_site_status{{{us},state="up"}}', 1)

                await farm.admin.post("/api/v1/sites/us/drain")
                await shows(client, base, f"webfarm_site_drained{{{us}}}", 1)
                await shows(client, base, f'webfarm_site_status{{{us},state="drained"}}', 1)
                await farm.admin.patch("/api/v1/sites/us", json={"weight": 7, "drained": False})
                await shows(client, base, f"webfarm_site_weight{{{us}}}", 7)

                await sites["us"].stop()  # killed
                await shows(client, base, f'webfarm_site_status{{{us},state="down"}}', 1)
                await shows(client, base, f"webfarm_site_check_up_down_total{{{us}}}", 1)
                await sites["us"].start()  # back, on the same port
                await shows(client, base, f'webfarm_site_status{{{us},state="up"}}', 1)
                await shows(
                    client, base, f"webfarm_site_downtime_seconds_total{{{us}}} > bool 0", 1
                )

                real_b = f'service="web",server="{b.address}"'
                await shows(client, base, f'webfarm_server_status{{{real_b},state="up"}}', 1)
                await b.kill()
                await shows(client, base, f'webfarm_server_status{{{real_b},state="down"}}', 1)
                await shows(client, base, 'webfarm_service_up{service="web"}', 1)

                (tmp_path / "fail-n1").touch()  # n1's monitor fails: the group moves
                began = time.monotonic()
                await shows(client, base, owner % "n2", 2)
                took = time.monotonic() - began
                here = 'webfarm_cluster_group_owned_here{group="front",instance="127.0.0.1:%d"}'
                await shows(client, base, here % n2.status_port, 1)
                await shows(client, base, here % node.status_port, 0)
                assert (tmp_path / "up-n2").exists()
                assert not (tmp_path / "up-n1").exists()
                print(f"group failover -> both nodes name n2 in Prometheus: {took:.1f} s")
