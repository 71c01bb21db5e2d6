"""The ``postgresql`` agent with real PostgreSQL clusters on loopback, its health endpoints
over real HTTP, and the parsers by property (hypothesis).

Two nodes ``n1`` and ``n2`` share a :class:`FakeCluster` (the node attributes the heartbeat
would carry, and which node is alive). Each points ``primary_host:primary_port`` at the
other's port: with two nodes that is where the floating address would lead. A fresh pair per
test is copied from a module-wide template (one initdb and one base backup); a new agent
object on the same data directory stands for a farmnode restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from farmnode.agents import AGENTS, Action, AgentParamError, build_agent, run_action
from farmnode.agents.context import Observation, check_attribute
from farmnode.agents.postgresql import PostgresAgent
from farmnode.errors import ConfigError
from farmnode.pg.formats import (
    conf_quote,
    format_lsn,
    log_reason,
    make_conninfo,
    parse_lsn,
    parse_sync_names,
    render_sync_names,
)
from farmnode.pg.health import (
    BadRequest,
    HealthServer,
    HealthState,
    Request,
    answer,
    format_size,
    parse_listen,
    parse_request_line,
    parse_size,
)
from farmnode.pg.instance import Instance, InstanceError
from farmnode.pg.promotion import (
    LastPrimary,
    blocking_reason,
    fence_argv,
    lag_reason,
)
from tests.conftest import skip_or_fail
from tests.farmnode.pgcluster import PgLab, PgNode, pg_lab, process_alive, unavailable

pytestmark = pytest.mark.anyio
MiB = 1024 * 1024


# --- a two-node cluster's attributes ---


class FakeCluster:
    """Node attributes as the heartbeat would share them; ``dead`` nodes keep their last."""

    def __init__(self) -> None:
        self.attrs: dict[str, dict[str, str]] = {}
        self.dead: set[str] = set()

    def view(self, node: str) -> NodeView:
        self.attrs.setdefault(node, {})
        return NodeView(self, node)


class NodeView:
    def __init__(self, cluster: FakeCluster, node: str) -> None:
        self.cluster = cluster
        self._node = node

    @property
    def node(self) -> str:
        return self._node

    def publish(self, key: str, value: str | None) -> None:
        mine = self.cluster.attrs[self._node]
        if value is None:
            mine.pop(key, None)
        else:
            check_attribute(key, value)
            mine[key] = value

    def observed(self, key: str) -> Mapping[str, Observation]:
        return {
            node: Observation(node, values[key], 0.0, self.alive(node))
            for node, values in self.cluster.attrs.items()
            if key in values
        }

    def alive(self, node: str) -> bool:
        return node not in self.cluster.dead


# --- fixtures ---


@pytest.fixture(scope="module")
def lab() -> Iterator[PgLab]:
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    with pg_lab() as made:
        began = time.monotonic()
        primary = made.initdb("tpl")
        primary.start()
        made.basebackup(primary, "tpl-standby")
        primary.stop()
        print(f"\ntemplate pair (initdb + base backup): {time.monotonic() - began:.2f} s")
        yield made


_serial = iter(range(1000))


@pytest.fixture
def pair(lab: PgLab) -> Iterator[tuple[PgNode, PgNode]]:
    """Fresh n1 (a cleanly stopped, never-replicated cluster) and n2 (a base backup of it)."""
    i = next(_serial)
    n1 = lab.copy(lab.nodes[0], f"n1-{i}")
    n2 = lab.copy(lab.nodes[1], f"n2-{i}")
    try:
        yield n1, n2
    finally:
        for node in (n1, n2):
            if node.running():
                node.stop("immediate")
            node.kill9()
            shutil.rmtree(node.data_dir, ignore_errors=True)


def make_agent(
    node: PgNode, name: str, peer: PgNode, cluster: FakeCluster, **extra: Any
) -> PostgresAgent:
    params: dict[str, Any] = {
        "data_dir": str(node.data_dir),
        "bin_dir": str(node.lab.bin),
        "port": node.port,
        "listen": "127.0.0.1",
        "socket_dir": str(node.socket_dir),
        "primary_host": "127.0.0.1",
        "primary_port": peer.port,
        "health_listen": "127.0.0.1:0",
        "start_timeout": 40,
        "stop_timeout": 40,
        **extra,
    }
    agent = PostgresAgent(params, name=f"pg-{name}")
    agent.bind(cluster.view(name))
    return agent


@contextlib.asynccontextmanager
async def closing(*agents: PostgresAgent) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for agent in agents:
            await agent.close()


async def until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll ``check`` (every 0.1 s) until true; the seconds it took. Fails after ``timeout``."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def act(agent: PostgresAgent, action: Action) -> Any:
    outcome = await run_action(agent, action)
    print(f"{agent.name} {action.value}: {outcome.result.name} in {outcome.elapsed:.2f} s"
          f"{': ' + outcome.reason if outcome.reason else ''}")  # fmt: skip
    return outcome


async def health(agent: PostgresAgent, path: str) -> tuple[int, dict[str, Any]]:
    address = agent.health_address
    assert address is not None
    host, port = address
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"http://{host}:{port}{path}")
    return response.status_code, response.json()


def streaming_to(primary: PgNode, name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            rows = primary.sql(
                "SELECT state FROM pg_stat_replication WHERE application_name = %s", name
            )
        except psycopg.Error:
            return False
        return bool(rows) and rows[0][0] == "streaming"

    return check


def has_row(node: PgNode, row_id: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(node.sql("SELECT 1 FROM t WHERE id = %s", row_id))
        except psycopg.Error:
            return False

    return check


async def primary_and_standby(
    n1: PgNode, n2: PgNode, cluster: FakeCluster, a1: PostgresAgent, a2: PostgresAgent
) -> None:
    """n1 primary (fresh cluster: stop starts a standby, start promotes it), n2 streaming."""
    assert (await act(a1, Action.STOP)).ok
    assert (await act(a1, Action.START)).ok
    assert (await act(a2, Action.STOP)).ok
    await until("n2 streams from n1", streaming_to(n1, "n2"))


# --- the scenarios ---


async def test_fresh_pair_sync_failover_and_rejoin_by_rewind(
    pair: tuple[PgNode, PgNode], tmp_path: Path
) -> None:
    n1, n2 = pair
    cluster = FakeCluster()
    fenced = tmp_path / "fenced"  # the fence command runs as farmnode (root), not postgres
    password = "pa'ss\\word"
    a1 = make_agent(n1, "n1", n2, cluster, replication_password=password)
    fence = ["/bin/sh", "-c", f'echo "$FARM_FENCE_NODE" > {fenced}']
    a2 = make_agent(n2, "n2", n1, cluster, fence=fence)
    async with closing(a1, a2):
        # stop on a fresh, never-started-as-standby cluster leaves a running standby
        assert (await act(a1, Action.STOP)).ok
        assert n1.in_recovery() is True
        assert (n1.data_dir / "standby.signal").exists()
        conninfo = conninfo_to_dict(n1.sql("SHOW primary_conninfo")[0][0])
        assert conninfo["port"] == str(n2.port)
        assert conninfo["application_name"] == "n1"
        assert conninfo["password"] == password
        assert n1.sql("SHOW recovery_target_timeline")[0][0] == "latest"
        assert cluster.attrs["n1"]["pg.role"] == "standby"
        assert (await act(a1, Action.MONITOR)).result.name == "NOT_RUNNING"

        # start promotes it: no primary was ever observed
        assert (await act(a1, Action.START)).ok
        assert n1.writable()
        assert not (n1.data_dir / "standby.signal").exists()
        assert cluster.attrs["n1"]["pg.role"] == "primary"
        assert (await act(a1, Action.START)).ok  # idempotent

        # n2 (a base backup) comes up as its standby; strict sync once it streams
        assert (await act(a2, Action.STOP)).ok
        assert n2.in_recovery() is True
        took = await until("pg.sync names n2", lambda: cluster.attrs["n1"].get("pg.sync") == "n2")
        print(f"standby started -> named synchronous in pg.sync: {took:.2f} s")
        assert n1.sql("SHOW synchronous_standby_names")[0][0] == 'FIRST 1 ("n2")'
        assert n1.sql(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'n2'"
        ) == [("sync",)]
        assert (await act(a1, Action.MONITOR)).ok
        assert int(cluster.attrs["n1"]["pg.lsn"]) > 0
        await until("n2 publishes its lsn", lambda: "pg.lsn" in cluster.attrs["n2"])

        # the health endpoints of each role
        assert (await health(a1, "/primary"))[0] == 200
        assert (await health(a2, "/primary"))[0] == 503
        code, body = await health(a2, "/replica")
        assert (code, body["role"], body["state"]) == (200, "replica", "running")
        assert (await health(a1, "/replica"))[0] == 503
        assert (await health(a2, "/replica?lag=1MB"))[0] == 200
        assert (await health(a2, "/read-only"))[0] == 200
        assert (await health(a2, "/health"))[0] == 200
        code, body = await health(a1, "/master")
        assert (code, body["role"], body["sync_standbys"]) == (200, "primary", ["n2"])
        assert body["timeline"] == 2
        assert body["lsn"] > 0

        # a committed row; then n2 falls behind, n1 writes locally and crashes (diverges)
        n1.sql("CREATE TABLE t (id int PRIMARY KEY, note text)")
        n1.sql("INSERT INTO t VALUES (1, 'acknowledged')")
        assert has_row(n2, 1)()  # synchronous: on n2 when the commit returns
        n2.stop()
        with n1.connect() as conn:
            conn.execute("SET synchronous_commit = local")
            conn.execute("INSERT INTO t VALUES (2, 'never acknowledged to anyone else')")
        n1.kill9()
        crashed = await act(a1, Action.MONITOR)
        assert crashed.result.name == "ERR_GENERIC"
        assert crashed.reason == "PostgreSQL is not running (was primary)"
        cluster.dead.add("n1")
        await a1.close()

        # n2 was synchronous at n1's last report: promoted, after fencing the dead n1
        assert (await act(a2, Action.START)).ok
        assert n2.writable()
        assert fenced.read_text().strip() == "n1"
        assert has_row(n2, 1)()
        assert not has_row(n2, 2)()
        n2.sql("INSERT INTO t VALUES (3, 'on the new timeline')")
        assert cluster.attrs["n2"]["pg.role"] == "primary"

        # n1 comes back (a new farmnode): rewound, its own config restored, standby of n2
        with open(n1.data_dir / "postgresql.conf", "a") as conf:
            conf.write("work_mem = '7MB'\t# n1's own\n")
        cluster.dead.discard("n1")
        a1b = make_agent(n1, "n1", n2, cluster)
        async with closing(a1b):
            began = time.monotonic()
            assert (await act(a1b, Action.STOP)).ok
            print(f"stop of the crashed primary returned in {time.monotonic() - began:.2f} s")
            assert not n1.writable()
            took = await until("n1 rejoins with row 3", has_row(n1, 3))
            print(f"rejoin (pg_rewind + standby start) took {took:.2f} s")
            assert n1.in_recovery() is True
            assert not has_row(n1, 2)()
            assert n1.sql("SHOW port")[0][0] == str(n1.port)
            assert n1.sql("SHOW work_mem")[0][0] == "7MB"
            assert "n1's own" not in n2.read_file("postgresql.conf")
            assert not (n1.data_dir / "farmnode.rewind").exists()
            await until(
                "n2 names n1 synchronous", lambda: cluster.attrs["n2"].get("pg.sync") == "n1"
            )
            assert (await health(a1b, "/replica"))[0] == 200


async def test_async_lagging_standby_is_refused_then_forced(pair: tuple[PgNode, PgNode]) -> None:
    n1, n2 = pair
    cluster = FakeCluster()
    a1 = make_agent(n1, "n1", n2, cluster, synchronous=False)
    a2 = make_agent(n2, "n2", n1, cluster)
    async with closing(a1, a2):
        await primary_and_standby(n1, n2, cluster, a1, a2)
        assert (await act(a1, Action.MONITOR)).ok
        assert n1.sql("SHOW synchronous_standby_names")[0][0] == ""
        assert cluster.attrs["n1"]["pg.sync"] == ""

        # the standby's farmnode and PostgreSQL stop; the primary goes on acknowledging
        await a2.close()
        n2.stop()
        n1.sql("CREATE TABLE big (id int, pad text)")
        began = time.monotonic()
        n1.sql("INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g")
        print(
            f"3 MB written and acknowledged without a standby in {time.monotonic() - began:.2f} s"
        )
        assert (await act(a1, Action.MONITOR)).ok
        n1.kill9()
        cluster.dead.add("n1")
        await a1.close()

    a2b = make_agent(n2, "n2", n1, cluster, fence=["/bin/false"])
    async with closing(a2b):
        refused = await act(a2b, Action.START)
        assert refused.result.name == "ERR_GENERIC"
        assert "not promoting n2: not synchronous at n1's last report and" in refused.reason
        assert "MiB behind it (limit 1.0 MiB); `farmnode promote --force n2`" in refused.reason
        assert n2.in_recovery() is True  # read-only, running as a standby
        code, body = await health(a2b, "/primary")
        assert code == 503
        assert "not synchronous" in body["reason"]

        a2b.force_next_promotion()  # forced: the lag rule is skipped, the fence is not
        fenced = await act(a2b, Action.START)
        assert fenced.result.name == "ERR_GENERIC"
        assert "fencing n1 failed (exit 1" in fenced.reason
        assert n2.in_recovery() is True
    a2c = make_agent(n2, "n2", n1, cluster)
    async with closing(a2c):
        a2c.force_next_promotion()
        assert (await act(a2c, Action.START)).ok
        assert n2.writable()
        assert cluster.attrs["n2"]["pg.role"] == "primary"


async def test_demote_is_a_switchover_and_the_old_primary_follows(
    pair: tuple[PgNode, PgNode],
) -> None:
    n1, n2 = pair
    cluster = FakeCluster()
    a1 = make_agent(n1, "n1", n2, cluster)
    a2 = make_agent(n2, "n2", n1, cluster, fence=["/bin/false"])  # must not run: n1 demoted
    async with closing(a1, a2):
        await primary_and_standby(n1, n2, cluster, a1, a2)
        await until("pg.sync names n2", lambda: cluster.attrs["n1"].get("pg.sync") == "n2")
        n1.sql("CREATE TABLE t (id int PRIMARY KEY)")

        # strict: with the synchronous standby crashed, a commit waits for it to come back
        n2.kill9()  # the background task starts it again
        committed = threading.Event()

        def write() -> None:
            n1.sql("INSERT INTO t VALUES (1)")
            committed.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        await asyncio.sleep(0.5)
        assert not committed.is_set()
        assert n1.sql("SHOW synchronous_standby_names")[0][0] == 'FIRST 1 ("n2")'
        assert cluster.attrs["n1"]["pg.sync"] == "n2"  # kept: no commit went without n2
        took = await until("the waiting commit returns", committed.is_set)
        print(f"crashed standby back, the waiting commit returned after {took:.2f} s")
        writer.join(5)
        assert has_row(n2, 1)()

        demoted = await act(a1, Action.STOP)
        assert demoted.ok
        assert not n1.writable()
        assert (n1.data_dir / "standby.signal").exists()
        assert cluster.attrs["n1"]["pg.role"] == "demoted"
        assert (await act(a1, Action.MONITOR)).result.name in ("NOT_RUNNING", "ERR_GENERIC")

        assert (await act(a2, Action.START)).ok
        assert n2.writable()
        assert has_row(n2, 1)()
        n2.sql("INSERT INTO t VALUES (2)")
        took = await until("n1 follows n2", has_row(n1, 2))
        print(f"old primary rejoined as a standby in {took:.2f} s")
        assert n1.in_recovery() is True
        await until("n2 names n1 synchronous", lambda: cluster.attrs["n2"].get("pg.sync") == "n1")
        assert (await health(a1, "/replica"))[0] == 200
        assert (await health(a2, "/primary"))[0] == 200


async def test_failed_rewind_leaves_the_old_primary_down(pair: tuple[PgNode, PgNode]) -> None:
    n1, n2 = pair
    cluster = FakeCluster()
    a1 = make_agent(n1, "n1", n2, cluster)
    a2 = make_agent(n2, "n2", n1, cluster)
    async with closing(a1, a2):
        await primary_and_standby(n1, n2, cluster, a1, a2)
        await until("pg.sync names n2", lambda: cluster.attrs["n1"].get("pg.sync") == "n2")
        n1.kill9()
        cluster.dead.add("n1")
        await a1.close()
        assert (await act(a2, Action.START)).ok
        n2.sql("CREATE TABLE after_failover (id int)")

        # n1 returns with credentials pg_rewind cannot use
        cluster.dead.discard("n1")
        a1b = make_agent(n1, "n1", n2, cluster, replication_user="no_such_role")
        async with closing(a1b):
            assert (await act(a1b, Action.STOP)).ok
            await until("the rewind fails", lambda: a1b.state == "rewind failed")
            assert "pg_rewind from n2 failed" in a1b.problem
            await asyncio.sleep(2.5)  # two more background ticks: it stays down
            assert not n1.running()
            assert (n1.data_dir / "standby.signal").exists()
            assert (n1.data_dir / "farmnode.rewind").exists()
            code, body = await health(a1b, "/health")
            assert (code, body["state"], body["role"]) == (503, "rewind failed", "demoted")
            assert "pg_rewind" in body["reason"]
            assert (await health(a1b, "/primary"))[0] == 503
            refused = await act(a1b, Action.START)
            assert "n2 is alive and still primary" in refused.reason
            assert not n1.running()


async def test_kill_takes_the_postmaster_and_its_backends(pair: tuple[PgNode, PgNode]) -> None:
    n1, _ = pair
    n1.start()
    instance = Instance(str(n1.data_dir), str(n1.lab.bin), "postgres", n1.port, str(n1.socket_dir))
    with n1.connect() as conn:
        backend = conn.info.backend_pid
        postmaster = instance.postmaster_pid()
        assert postmaster == n1.postmaster_pid()
        assert (await instance.snapshot()).writable
        instance.kill()
        await until("the postmaster is gone", lambda: not instance.running())
        await until("the backend is gone", lambda: not process_alive(backend), 10)
    assert (await instance.snapshot()).running is False
    with pytest.raises(InstanceError, match=r"refusing to start without standby\.signal"):
        await instance.start(10)
    assert not n1.running()


async def test_a_standby_that_will_not_start_says_why(pair: tuple[PgNode, PgNode]) -> None:
    """The error names the server's FATAL line (here: its port is taken), not the log's last
    line ("database system is shut down")."""
    _, n2 = pair
    instance = Instance(str(n2.data_dir), str(n2.lab.bin), "postgres", n2.port, str(n2.socket_dir))
    (n2.data_dir / "standby.signal").touch()  # a base backup, made a standby
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", n2.port))
        squatter.listen()
        with pytest.raises(InstanceError, match=r"pg_ctl start exited 1: .*FATAL:") as caught:
            await instance.start(10)
    assert "shut down" not in str(caught.value)
    assert not n2.running()


def test_log_reason_prefers_the_fatal_line() -> None:
    log = (
        "2026-12-07 16:10:53.620 UTC [15336] LOG:  starting PostgreSQL 15\n"
        '2026-12-07 16:10:53.621 UTC [15336] LOG:  could not bind IPv4 address "127.0.0.1"\n'
        "2026-12-07 16:10:53.622 UTC [15336] FATAL:  could not create any TCP/IP sockets\n"
        "2026-12-07 16:10:53.627 UTC [15336] LOG:  database system is shut down\n"
    )
    assert log_reason(log).endswith("FATAL:  could not create any TCP/IP sockets")
    assert log_reason("one\ntwo\n\n") == "two"
    assert log_reason("") == "no output"


# --- parameters and check-config ---


BASE = {"data_dir": "/var/lib/postgresql/15/main", "primary_host": "10.213.0.60"}


@pytest.mark.parametrize(
    ("params", "param", "expected"),
    [
        ({"primary_host": "x"}, "data_dir", "required"),
        ({**BASE, "data_dir": "relative/dir"}, "data_dir", "an absolute path"),
        ({"data_dir": "/d"}, "primary_host", "required"),
        ({**BASE, "port": 0}, "port", "a port 1-65535"),
        ({**BASE, "port": "5432"}, "port", "an integer"),
        ({**BASE, "synchronous": "yes"}, "synchronous", "true or false"),
        (
            {**BASE, "maximum_lag_on_failover": -1},
            "maximum_lag_on_failover",
            "a number of bytes >= 0",
        ),
        ({**BASE, "fence": "stonith --node"}, "fence", "absolute path"),
        ({**BASE, "fence": ["/bin/fence", 3]}, "fence", "an argv list"),
        ({**BASE, "health_listen": "8008"}, "health_listen", "host:port"),
        ({**BASE, "application_name": "a b"}, "application_name", "letters"),
        ({**BASE, "wal_keep_size": "lots"}, "wal_keep_size", "256MB"),
        ({**BASE, "primary_host": "a host"}, "primary_host", "host name"),
        ({**BASE, "datadir": "/x"}, "datadir", "a known parameter"),
    ],
)
def test_parameter_errors(params: dict[str, Any], param: str, expected: str) -> None:
    with pytest.raises(AgentParamError) as caught:
        build_agent({"agent": "postgresql", **params}, name="db")
    assert caught.value.param == param
    assert expected in str(caught.value)
    assert "resource db (agent postgresql)" in str(caught.value)


def test_registered_and_defaults() -> None:
    assert AGENTS["postgresql"] is PostgresAgent
    agent = build_agent({"agent": "postgresql", **BASE, "fence": "/usr/sbin/fence -n x"})
    assert isinstance(agent, PostgresAgent)
    assert agent.primary_port == 5432
    assert agent.limit == MiB
    assert agent.synchronous
    assert agent.fence == ["/usr/sbin/fence", "-n", "x"]
    assert agent.app_name == agent.context.node
    settings = agent.settings(["n2", "n3"])
    assert settings["synchronous_standby_names"] == 'FIRST 1 ("n2", "n3")'
    assert settings["wal_log_hints"] is True
    assert settings["wal_keep_size"] == "256MB"
    assert conninfo_to_dict(str(settings["primary_conninfo"]))["host"] == "10.213.0.60"
    assert 'parameter name="maximum_lag_on_failover"' in agent.meta_data()


@pytest.fixture
def fake_data_dir() -> Iterator[Path]:
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    import pwd

    entry = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="farm-pgcheck-"))
    data = root / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "postgresql.conf").write_text("")
    for path in (root, data):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    yield data
    shutil.rmtree(root, ignore_errors=True)


def _checked(data: Path, **extra: Any) -> PostgresAgent:
    params = {**BASE, "data_dir": str(data), "socket_dir": str(data), **extra}
    return PostgresAgent(params, name="db")


def test_check_config_accepts_a_good_data_dir(fake_data_dir: Path) -> None:
    from tests.farmnode.pgcluster import pg_bin

    if pg_bin() != Path("/usr/lib/postgresql/15/bin"):
        pytest.skip("the fake data directory says PostgreSQL 15")
    _checked(fake_data_dir).check()


def test_check_config_errors(fake_data_dir: Path) -> None:
    def error(**extra: Any) -> str:
        with pytest.raises(ConfigError) as caught:
            _checked(fake_data_dir, **extra).check()
        return str(caught.value)

    missing = error(data_dir="/nonexistent/pgdata")
    assert "data_dir: an existing data directory (/nonexistent/pgdata does not exist)" in missing
    assert "'no_such_user_x' does not exist" in error(user="no_such_user_x")
    assert "is owned by postgres" in error(user="root")
    assert "socket_dir: an existing directory" in error(socket_dir="/nonexistent/sock")
    assert "bin_dir: PostgreSQL 15's programs" in error(bin_dir="/nonexistent/bin")

    (fake_data_dir / "PG_VERSION").write_text("14\n")
    from tests.farmnode.pgcluster import pg_bin

    wrong = error(bin_dir=str(pg_bin()))
    assert "bin_dir: PostgreSQL 14, the version of" in wrong
    assert "is version 1" in wrong
    (fake_data_dir / "PG_VERSION").write_text("15\n")
    (fake_data_dir / "postgresql.conf").unlink()
    assert "has none" in error(bin_dir=str(pg_bin()))
    (fake_data_dir / "PG_VERSION").unlink()
    assert "PG_VERSION cannot be read" in error()


# --- the promotion rules, pure ---


def test_promotion_rules() -> None:
    alive = LastPrimary("n1", "primary", True, 10 * MiB, ())
    assert blocking_reason("n2", alive, False, True) == (
        "not promoting n2: n1 is alive and still primary"
    )
    dead = LastPrimary("n1", "primary", False, 10 * MiB, ("n2",))
    assert blocking_reason("n2", dead, False, False) is None
    assert "has not rejoined (pg_rewind) since n1" in str(blocking_reason("n2", dead, True, False))
    assert blocking_reason("n2", dead, True, True) is None  # forced
    assert blocking_reason("n2", None, True, False) is None  # a fresh cluster
    assert lag_reason("n2", dead, 0, MiB) is None  # synchronous at the last report
    behind = LastPrimary("n1", "primary", False, int(4.2 * MiB), ())
    assert lag_reason("n2", behind, MiB, MiB) == (
        "not promoting n2: not synchronous at n1's last report and 3.2 MiB behind it "
        "(limit 1.0 MiB); `farmnode promote --force n2` to override"
    )
    assert lag_reason("n2", behind, int(3.2 * MiB), MiB) is None  # within the limit
    assert "position is unknown" in str(lag_reason("n2", behind, None, MiB))
    assert fence_argv("/sbin/fence -n 'a b'") == ["/sbin/fence", "-n", "a b"]


# --- the parsers, by property ---

UNITS = {"": 1, "B": 1, "kB": 1024, "KiB": 1024, "MB": MiB, "mb": MiB, "GB": 1024**3, "TB": 1024**4}


@given(st.integers(0, 10**12), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]))
def test_parse_size_units(number: int, unit: str, space: str) -> None:
    assert parse_size(f"{number}{space}{unit}") == number * UNITS[unit]


@given(st.text(max_size=30))
def test_parse_size_never_raises_anything_but_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert parse_size(text) >= 0


@given(st.floats(0, 2**50, allow_nan=False))
def test_format_size(value: float) -> None:
    text = format_size(value)
    number, unit = text.split(" ")
    assert unit in ("B", "KiB", "MiB", "GiB", "TiB")
    assert float(number) >= 0


@given(st.binary(max_size=200))
def test_request_line_parser_rejects_garbage_cleanly(line: bytes) -> None:
    with contextlib.suppress(BadRequest):
        request = parse_request_line(line)
        assert request.path.startswith("/")


PATH_CHARS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?%#"),
    max_size=30,
)


@given(
    st.sampled_from(["GET", "HEAD", "OPTIONS", "POST"]),
    PATH_CHARS,
    st.integers(0, 10**9),
    st.sampled_from(["HTTP/1.0", "HTTP/1.1"]),
)
def test_request_line_round_trip(method: str, path: str, lag: int, version: str) -> None:
    request = parse_request_line(f"{method} /{path}?lag={lag} {version}\r\n".encode())
    assert (request.method, request.path, request.query["lag"]) == (method, f"/{path}", [str(lag)])


def test_request_line_examples() -> None:
    assert parse_request_line(b"GET http://db:8008/replica?lag=1MB HTTP/1.1\r\n").path == "/replica"
    assert parse_request_line(b"GET /a%20b HTTP/1.0\n").path == "/a b"
    for bad in (b"", b"GET / HTTP/2\r\n", b"GET  / HTTP/1.1", b"GET * HTTP/1.1", b"G(T / HTTP/1.1",
                b"GET /%ff HTTP/1.1", "GET /é HTTP/1.1".encode()):  # fmt: skip
        with pytest.raises(BadRequest):
            parse_request_line(bad)


NAMES = st.text(alphabet='abn12_-." ,()', min_size=1, max_size=12).filter(lambda s: s.strip() == s)


@given(st.lists(NAMES, max_size=4))
def test_sync_names_round_trip(names: list[str]) -> None:
    assert parse_sync_names(render_sync_names(names)) == names


def test_sync_names_forms() -> None:
    assert parse_sync_names("") == []
    assert parse_sync_names("n2, n3") == ["n2", "n3"]
    assert parse_sync_names('ANY 1 ("n2", n3)') == ["n2", "n3"]
    assert parse_sync_names("*") == ["*"]


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"),
               max_size=40))  # fmt: skip
def test_conninfo_round_trip(password: str) -> None:
    info = make_conninfo(host="127.0.0.1", port=5432, user="replicator", password=password)
    assert conninfo_to_dict(info)["password"] == password


@given(st.text(max_size=30).filter(lambda s: "\0" not in s))
def test_conf_quote_doubles_quotes(value: str) -> None:
    quoted = conf_quote(value)
    assert quoted.startswith("'")
    assert quoted.endswith("'")
    inner = quoted[1:-1].replace("''", "").replace("\\\\", "")
    assert "'" not in inner
    assert "\\" not in inner


@given(st.integers(0, 2**64 - 1))
def test_lsn_round_trip(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8008") == ("127.0.0.1", 8008)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":8008") == ("0.0.0.0", 8008)
    for bad in ("8008", "::1:8008", "host:99999", "host:"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# --- the health endpoints: the route table and a real server ---


PRIMARY = HealthState("n1", "primary", "running", True, primary=True, timeline=2, lsn=100, lag=0)
REPLICA = HealthState("n2", "replica", "running", True, streaming=True, lsn=90, lag=2 * MiB)


@pytest.mark.parametrize(
    ("method", "path", "state", "status"),
    [
        ("GET", "/primary", PRIMARY, 200),
        ("GET", "/master", PRIMARY, 200),
        ("OPTIONS", "/read-write", PRIMARY, 200),
        ("GET", "/", PRIMARY, 200),
        ("GET", "/primary", REPLICA, 503),
        ("GET", "/replica", REPLICA, 200),
        ("GET", "/replica", PRIMARY, 503),
        ("GET", "/replica?lag=1MB", REPLICA, 503),
        ("GET", "/replica?lag=3MB", REPLICA, 200),
        ("GET", "/replica?lag=nonsense", REPLICA, 503),
        ("GET", "/read-only", PRIMARY, 200),
        ("GET", "/health", REPLICA, 200),
        ("GET", "/liveness", None, 200),
        ("GET", "/health", None, 503),
        ("GET", "/nope", PRIMARY, 404),
        ("POST", "/primary", PRIMARY, 405),
    ],
)
def test_answer(method: str, path: str, state: HealthState | None, status: int) -> None:
    target, _, query = path.partition("?")
    request = parse_request_line(f"{method} {path} HTTP/1.1".encode())
    assert (request.path, request.method) == (target, method)
    assert answer(request, state)[0] == status
    assert answer(Request(method, target, request.query), state)[0] == status
    assert query == "" or "lag" in request.query


async def test_health_server_over_http() -> None:
    states = {"now": PRIMARY}

    async def probe() -> HealthState:
        return states["now"]

    server = HealthServer(probe, "127.0.0.1", 0)
    await server.start()
    host, port = server.address
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False) as client:
            response = await client.get("/primary")
            assert response.status_code == 200
            assert response.json()["role"] == "primary"
            assert response.headers["connection"] == "close"
            head = await client.head("/primary")
            assert head.status_code == 200
            assert head.content == b""
            assert (await client.request("OPTIONS", "/replica")).status_code == 503
            states["now"] = REPLICA
            assert (await client.get("/replica", params={"lag": "4MB"})).status_code == 200
            assert (await client.delete("/replica")).status_code == 405
        for raw in (b"garbage\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
                    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n"):  # fmt: skip
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(raw)
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert reply.startswith(b"HTTP/1.1 400 Bad Request"), reply[:60]
        reader, writer = await asyncio.open_connection(host, port)  # a client that says nothing
        writer.close()
        assert (await probe()) is REPLICA
    finally:
        await server.close()


# --- the command line: check-config and promote --force ---


NODE_TOML = """
[node]
name = "n2"
[cluster]
name = "db"
key = "db-cluster-key-0123456789"
priority = 100
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:16940"
[[cluster.peers]]
name = "n1"
addresses = ["127.0.0.1:16941"]
[[groups]]
name = "primary"
[[groups.resources]]
agent = "postgresql"
data_dir = "{data}"
socket_dir = "{data}"
primary_host = "10.213.0.60"
"""


def test_check_config_checks_the_system_at_the_resource_path(
    tmp_path: Path, fake_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from farmnode.__main__ import run

    config = tmp_path / "node.toml"
    config.write_text(NODE_TOML.format(data="/nonexistent/pgdata"))
    assert run(["check-config", "--config", str(config)]) == 2
    said = capsys.readouterr().err
    assert "groups[0].resources[0].data_dir" in said
    assert "/nonexistent/pgdata does not exist" in said
    config.write_text(NODE_TOML.format(data=fake_data_dir))
    assert run(["check-config", "--config", str(config)]) == 0


def test_promote_force_leaves_a_request_the_agent_uses_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from farmnode.__main__ import run
    from farmnode.agents.context import LocalContext
    from farmnode.pg.instance import FORCE_MARKER
    from farmnode.pg.promotion import FORCE_VALID

    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "node.toml"
    config.write_text(NODE_TOML.format(data=data))
    argv = ["promote", "--config", str(config)]
    assert run([*argv, "n2"]) == 1  # no --force: refused, with the reason
    assert "give --force" in capsys.readouterr().err
    assert run([*argv, "--force", "n1"]) == 1  # n1's request belongs on n1
    assert "run `farmnode promote --force n1` on n1" in capsys.readouterr().err
    assert not (data / FORCE_MARKER).exists()
    assert run([*argv, "--force", "n2"]) == 0
    assert "the next promotion of" in capsys.readouterr().out
    agent = PostgresAgent({**BASE, "data_dir": str(data)}, name="db")
    agent.bind(LocalContext("n2"))
    assert agent._take_force_marker()
    assert not agent._take_force_marker()  # used up
    assert not (data / FORCE_MARKER).exists()
    for request in (
        {"node": "n1", "at": time.time()},  # another node's
        {"node": "n2", "at": time.time() - FORCE_VALID - 1},  # stale
        {"node": "n2", "at": "soon"},
        "garbage",
    ):
        (data / FORCE_MARKER).write_text(json.dumps(request))
        assert not agent._take_force_marker(), request
        assert not (data / FORCE_MARKER).exists()  # dropped, not kept for later


def test_a_remembered_primary_promotes_only_its_synchronous_standby() -> None:
    """After farmnode restarts, the last primary is known from the data directory but not
    its position: only a standby it named synchronous may take over without --force."""
    remembered = LastPrimary("n1", "primary", False, None, ("n2",), remembered=True)
    assert lag_reason("n2", remembered, 5 * MiB, MiB) is None
    stranger = LastPrimary("n1", "primary", False, None, ("n3",), remembered=True)
    said = lag_reason("n2", stranger, 5 * MiB, MiB)
    assert said is not None
    assert "last seen as primary before farmnode restarted" in said
    assert "farmnode promote --force n2" in said


def test_the_last_primary_is_kept_in_the_data_directory(tmp_path: Path) -> None:
    from farmnode.agents.context import LocalContext
    from farmnode.pg.instance import LAST_PRIMARY

    class Seen(LocalContext):
        """n2's view while n1 was primary, then after a restart (nothing heard)."""

        def __init__(self, heard: bool) -> None:
            super().__init__("n2")
            self.heard = heard

        def observed(self, key: str) -> Mapping[str, Observation]:
            values = {"pg.role": "primary", "pg.lsn": "4096", "pg.sync": "n3"}
            if not self.heard:
                return {}
            return {"n1": Observation("n1", values[key], 0.5, alive=True)}

        def alive(self, node: str) -> bool:
            return node == "n2" or (self.heard and node == "n1")

    data = tmp_path / "data"
    data.mkdir()
    params = {**BASE, "data_dir": str(data), "bin_dir": "/usr/lib/postgresql/15/bin"}
    agent = PostgresAgent(params, name="db")
    agent.bind(Seen(heard=True))
    live = agent._last_primary()
    assert live is not None
    assert not live.remembered
    assert (live.lsn, live.sync) == (4096, ("n3",))
    assert json.loads((data / LAST_PRIMARY).read_text()) == {
        "node": "n1",
        "role": "primary",
        "sync": ["n3"],
    }
    restarted = PostgresAgent(params, name="db")
    restarted.bind(Seen(heard=False))
    kept = restarted._last_primary()
    assert kept == LastPrimary("n1", "primary", False, None, ("n3",), remembered=True)
    (data / LAST_PRIMARY).write_text("{not json")
    worst = restarted._last_primary()  # unreadable: never taken for a fresh cluster
    assert worst is not None
    assert worst.remembered
    assert worst.sync == ()
    (data / LAST_PRIMARY).unlink()
    assert restarted._last_primary() is None  # nothing kept: a fresh cluster
