"""The truth tier in Patroni's names: what the ``postgresql`` agent last saw of real
PostgreSQL servers, as ``GET /status`` and ``GET /metrics`` show it.

1. Two agents on loopback (the pair and :class:`FakeCluster` of ``test_postgresql``): a
   primary and its synchronous standby, the standby's replay paused while the primary
   writes (lag in bytes and seconds, on both sides), then a failover (the new primary's
   timeline). Each step renders :class:`farmnode.metrics.NodeCollector` over the agents'
   :meth:`status` and passes ``promtool check metrics``; values are checked against what
   PostgreSQL itself says.
2. A real node (``farmnode.daemon.Node``) with a one-node ``[cluster]`` whose group holds a
   ``postgresql`` resource: its status listener's ``/metrics`` and ``/status`` show the
   primary it promoted, and ``farmnode status`` prints it.
3. Without PostgreSQL: what is not known (a lag without a primary's position, a stopped
   server) is left out, and odd documents still render.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from dispatcher.metrics import exposition
from farmnode.agents import Action
from farmnode.agents.postgresql import PostgresAgent
from farmnode.config import parse_config
from farmnode.metrics import NodeCollector
from farmnode.pg.instance import Snapshot
from farmnode.pg.view import Seen, describe
from farmnode.status import render_text
from tests.farmnode.pgcluster import PgNode
from tests.farmnode.test_daemon import running_node, wait_for
from tests.farmnode.test_postgresql import (  # noqa: F401 - lab and pair are fixtures
    FakeCluster,
    act,
    closing,
    lab,
    make_agent,
    pair,
    primary_and_standby,
    until,
)
from tests.ports import free_port
from tests.test_metrics import promtool, samples, value

pytestmark = pytest.mark.anyio
DB = {"group": "db", "resource": "pg"}


def scrape(*agents: PostgresAgent) -> str:
    """The metrics of a node document holding each agent's status (one group each)."""
    groups = {
        f"db{i or ''}": {"owner": None, "resources": {"pg": agent.status()}}
        for i, agent in enumerate(agents)
    }
    doc: dict[str, Any] = {
        "uptime": 1.0,
        "reloads": 0,
        "services": [],
        "cluster": {"groups": groups},
    }
    text = exposition(NodeCollector(lambda: doc))().decode()
    promtool(text)
    return text


def pg(text: str, name: str, **labels: str) -> float:
    return value(text, f"webfarm_postgres_{name}", **{**DB, **labels})


def has(text: str, name: str, **labels: str) -> bool:
    key = (f"webfarm_postgres_{name}", frozenset({**DB, **labels}.items()))
    return key in samples(text)


def position(node: PgNode, function: str) -> int:
    return int(node.sql(f"SELECT pg_wal_lsn_diff({function}(), '0/0')::bigint")[0][0])


async def fresh(agent: PostgresAgent, ready: Any, what: str) -> Mapping[str, Any]:
    """The agent's status once ``ready(status)`` (its background asks once a second)."""
    await until(what, lambda: bool(ready(agent.status())), timeout=30)
    return agent.status()


async def test_primary_standby_lag_and_failover_in_patronis_names(
    pair: tuple[PgNode, PgNode],  # noqa: F811 - the fixture imported above
) -> None:
    n1, n2 = pair
    cluster = FakeCluster()
    a1 = make_agent(n1, "n1", n2, cluster)
    a2 = make_agent(n2, "n2", n1, cluster, fence=["/bin/true"])
    async with closing(a1, a2):
        await primary_and_standby(n1, n2, cluster, a1, a2)
        await until("pg.sync names n2", lambda: cluster.attrs["n1"].get("pg.sync") == "n2")
        n1.sql("CREATE TABLE t (id int PRIMARY KEY, pad text)")
        assert (await act(a1, Action.MONITOR)).ok  # publishes the primary's position
        flushed = position(n1, "pg_current_wal_flush_lsn")
        await fresh(a2, lambda s: s["sync_standby"] and s["lag"]["bytes"] == 0, "n2 caught up")

        def n2_replayed(seen: Mapping[str, Any]) -> bool:  # (each agent looks once a second)
            return [s["lag_bytes"] for s in seen["standbys"] if s["name"] == "n2"] == [0]

        await fresh(a1, n2_replayed, "n1 sees n2 caught up")

        text = scrape(a1)  # the primary's node
        assert (pg(text, "primary"), pg(text, "replica"), pg(text, "running")) == (1, 0, 1)
        assert (pg(text, "streaming"), pg(text, "sync_standby")) == (0, 0)
        assert pg(text, "timeline") == 2  # promoted once
        assert pg(text, "xlog_location") >= flushed
        assert pg(text, "xlog_received_location") == pg(text, "xlog_replayed_location") == 0
        assert (pg(text, "replication_lag_bytes"), pg(text, "replication_lag_seconds")) == (0, 0)
        assert pg(text, "standby_lag_bytes", standby="n2") == 0
        assert pg(text, "observed_age_seconds") < 5

        text = scrape(a2)  # the standby's node
        assert (pg(text, "primary"), pg(text, "replica"), pg(text, "running")) == (0, 1, 1)
        assert (pg(text, "streaming"), pg(text, "sync_standby")) == (1, 1)
        assert pg(text, "timeline") == 2
        assert pg(text, "xlog_location") == 0
        assert pg(text, "xlog_received_location") >= flushed
        assert pg(text, "xlog_replayed_location") >= flushed
        assert pg(text, "replication_lag_bytes") == 0
        assert pg(text, "replication_lag_seconds") == 0

        # replay paused on n2 while n1 commits (synchronous: received and flushed on n2)
        n2.sql("SELECT pg_wal_replay_pause()")
        began = time.monotonic()
        n1.sql("INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g")
        written = position(n1, "pg_current_wal_flush_lsn") - flushed
        await asyncio.sleep(1.2)  # so that the last replayed commit is over a second old

        def replay_lags(seen: Mapping[str, Any]) -> bool:
            return (seen["lag"]["seconds"] or 0) >= 1

        seen = await fresh(a2, replay_lags, "n2's replay lag in seconds")
        text = scrape(a2)
        behind = pg(text, "xlog_received_location") - pg(text, "xlog_replayed_location")
        assert behind >= written * 0.9, (behind, written)
        lag = pg(text, "replication_lag_seconds")
        assert 1 <= lag <= time.monotonic() - began + 60  # bounded by the test's own run
        assert seen["streaming"]
        assert seen["sync_standby"]

        def standby_lags(seen: Mapping[str, Any]) -> bool:
            return any((s["lag_bytes"] or 0) > 0 for s in seen["standbys"])

        await fresh(a1, standby_lags, "n1 sees n2 behind")
        text = scrape(a1)
        assert pg(text, "standby_lag_bytes", standby="n2") >= written * 0.9
        assert pg(text, "standby_lag_seconds", standby="n2") >= 0
        n2.sql("SELECT pg_wal_replay_resume()")
        print(f"replay paused: {behind:.0f} bytes received not replayed, lag {lag:.1f} s")

        # failover: n1 dies, n2 is promoted onto a new timeline
        n1.kill9()
        cluster.dead.add("n1")
        await a1.close()
        assert (await act(a2, Action.START)).ok
        await fresh(a2, lambda s: s["primary"], "n2 primary")
        text = scrape(a2)
        assert (pg(text, "primary"), pg(text, "replica"), pg(text, "streaming")) == (1, 0, 0)
        assert pg(text, "timeline") == 3
        assert pg(text, "xlog_location") >= flushed + written
        assert pg(text, "xlog_received_location") == 0
        assert not has(text, "standby_lag_bytes", standby="n1")  # n1 is gone


def one_node(data: PgNode, status_port: int) -> str:
    return f"""
[node]
name = "n1"
status_listen = "127.0.0.1:{status_port}"

[cluster]
name = "pgm"
key = "pg-metrics-cluster-key-0123456789"
interval = 0.2
deadtime = 1.0
initdead = 1.0
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:{free_port()}"

[[groups]]
name = "db"
[[groups.resources]]
agent = "postgresql"
name = "pg"
data_dir = "{data.data_dir}"
bin_dir = "{data.lab.bin}"
port = {data.port}
listen = "127.0.0.1"
socket_dir = "{data.socket_dir}"
primary_host = "127.0.0.1"
start_timeout = 40
stop_timeout = 40
"""


async def test_a_node_serves_its_primary_in_metrics_and_status(
    pair: tuple[PgNode, PgNode],  # noqa: F811 - the fixture imported above
) -> None:
    n1, _ = pair
    status_port = free_port()
    config = parse_config(tomllib.loads(one_node(n1, status_port)), "test", environ={})
    base = f"http://127.0.0.1:{status_port}"
    async with running_node(config), httpx.AsyncClient(trust_env=False, timeout=10) as client:

        async def primary() -> bool:
            text = (await client.get(f"{base}/metrics")).text
            return samples(text).get(("webfarm_postgres_primary", frozenset(DB.items()))) == 1

        began = time.monotonic()
        await wait_for("the node's PostgreSQL primary in /metrics", primary, timeout=60)
        print(f"node start -> primary in /metrics: {time.monotonic() - began:.1f} s")
        text = (await client.get(f"{base}/metrics")).text
        promtool(text)
        assert pg(text, "timeline") == 2
        assert pg(text, "running") == 1
        assert value(text, "webfarm_cluster_group_owner", group="db", owner="n1") == 1
        doc = (await client.get(f"{base}/status")).json()
        seen = doc["cluster"]["groups"]["db"]["resources"]["pg"]
        assert (seen["agent"], seen["role"], seen["primary"]) == ("postgresql", "primary", True)
        lines = render_text(doc).splitlines()
        assert "  db/pg: primary, running, timeline 2, no standby" in lines, lines


# --- the pure parts: what is left out when it is not known ----------------------------------


def test_unknowns_are_left_out_and_odd_documents_render() -> None:
    stopped = describe(None, 10.0, mode="rejoin", state="rewinding", problem="pg_rewind runs")
    streaming = Snapshot(
        True, True, True, 3, 900, "streaming", received=900, replayed=800, replay_age=2.5
    )
    behind = describe(Seen(streaming, 9.0), 10.0, mode="follow", state="standby")
    waiting = Snapshot(True, True, True, 3, 900, "waiting", received=None, replayed=900)
    alone = describe(Seen(waiting, 9.5), 10.0, mode="follow", state="standby", primary_lsn=1000)
    doc: dict[str, Any] = {
        "cluster": {
            "groups": {
                "a": {"resources": {"pg": stopped}},
                "b": {"resources": {"pg": behind}},
                "c": {"resources": {"pg": alone, "odd": "not a mapping", "ip": {"x": 1}}},
                "d": {"resources": None},
            }
        }
    }
    text = exposition(NodeCollector(lambda: doc))().decode()
    promtool(text)
    found = samples(text)

    def at(name: str, group: str) -> float | None:
        labels = frozenset({"group": group, "resource": "pg"}.items())
        return found.get((f"webfarm_postgres_{name}", labels))

    assert (at("running", "a"), at("timeline", "a"), at("replica", "a")) == (0, 0, 0)
    assert at("replication_lag_bytes", "a") is None  # stopped: unknown
    assert at("observed_age_seconds", "a") is None  # never asked
    assert at("replication_lag_bytes", "b") is None  # no primary advertises a position
    assert at("replication_lag_seconds", "b") == 2.5  # replay behind what was received
    assert at("replication_lag_bytes", "c") == 100
    assert at("replication_lag_seconds", "c") is None  # not streaming: unknown
    assert at("xlog_replayed_location", "c") == 900
    assert at("observed_age_seconds", "c") == 0.5
    assert render_text({"cluster": doc["cluster"]}).splitlines()[-4:-1] == [
        "  a/pg: demoted, not running, rewinding, problem: pg_rewind runs",
        "  b/pg: replica, running, timeline 3, streaming, lag ?B/2.5s",
        "  c/pg: replica, running, timeline 3, not streaming, lag 100B/?s",
    ]
