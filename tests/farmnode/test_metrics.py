"""``GET /metrics`` on farmnode's status listener: a real node with a userspace service
(and a single-node ``[cluster]``), its output checked by ``promtool check metrics`` and read
back by name."""

from __future__ import annotations

import httpx
import pytest

from tests.farmnode.test_daemon import (
    id_servers,
    ids,
    new_client,
    node_config,
    running_node,
    service_toml,
    url_of,
    wait_for,
)
from tests.ports import free_port
from tests.test_metrics import promtool, samples, value

pytestmark = pytest.mark.anyio
KEY = "metrics-test-cluster-key-0123456789"


def cluster_toml() -> str:
    return f"""
[cluster]
name = "mlab"
key = "{KEY}"
interval = 0.2
deadtime = 1.0
initdead = 1.0
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:{free_port()}"
"""


async def test_services_servers_and_heartbeat(tmp_path: object) -> None:
    async with id_servers("a", "b") as (a, b):
        await b.kill()
        config = node_config(service_toml("web", free_port(), [a, b]), report=cluster_toml())
        async with running_node(config) as node, new_client() as client:
            await ids(client, url_of(node), 3)
            url = f"http://127.0.0.1:{node.status_port}/metrics"

            async def scraped() -> str:
                return (await client.get(url)).text

            async def b_is_down() -> bool:
                text = await scraped()
                return (
                    value(
                        text, "webfarm_server_status", service="web", server=b.address, state="down"
                    )
                    == 1
                )

            await wait_for("b down in the metrics", b_is_down)
            answer = await client.get(url)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = answer.text
            promtool(text)
            web, real_a, real_b = (
                {"service": "web"},
                {"service": "web", "server": a.address},
                {"service": "web", "server": b.address},
            )
            assert value(text, "webfarm_service_up", **web) == 1
            assert value(text, "webfarm_service_sessions_total", **web) == 3
            assert value(text, "webfarm_server_sessions_total", **real_a) == 3
            assert value(text, "webfarm_server_bytes_in_total", **real_a) > 0
            assert value(text, "webfarm_server_bytes_out_total", **real_a) > 0
            assert value(text, "webfarm_server_status", **real_a, state="up") == 1
            assert value(text, "webfarm_server_check_status", **real_b, state="down") == 1
            assert value(text, "webfarm_server_check_failures_total", **real_b) >= 1
            assert value(text, "webfarm_server_downtime_seconds_total", **real_b) >= 0
            assert value(text, "webfarm_cluster_quorate") in (0, 1)
            assert value(text, "webfarm_cluster_heartbeats_sent_total") >= 0
            names = {name for name, _ in samples(text)}
            assert "webfarm_cluster_voters" in names
            assert "webfarm_node_uptime_seconds" in names


async def test_odd_requests_on_the_status_listener() -> None:
    async with id_servers("a") as (a,):
        config = node_config(service_toml("web", free_port(), [a]))
        async with running_node(config) as node, httpx.AsyncClient(trust_env=False) as client:
            base = f"http://127.0.0.1:{node.status_port}"
            for path, headers in (
                ("/metrics?name[]=x&%ff", {"accept": "application/openmetrics-text"}),
                ("/metrics", {"accept": "\x7f;;q=", "authorization": "Bearer nonsense"}),
            ):
                answer = await client.get(base + path, headers=headers)
                assert answer.status_code == 200
                promtool(answer.text)
            head = await client.head(f"{base}/metrics")
            assert (head.status_code, head.content) == (200, b"")
            assert (await client.post(f"{base}/metrics")).status_code == 405
