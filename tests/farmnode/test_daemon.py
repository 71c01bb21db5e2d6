"""The node daemon for real on loopback: health checks driving the switch, fallback, agents,
reload without dropping connections, the status endpoint, and ``farmnode serve``/``status``
as a user runs them.

Real servers are small asyncio HTTP servers on 127.0.0.x that answer every request with
their own id; clients go through the userspace plane with httpx (a new connection per
request, so every request is scheduled) or raw sockets (one long-lived connection).
Every wait is bounded and generous; nothing asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from farmnode.config import NodeConfig, load_config, parse_config
from farmnode.daemon import Node, Timeouts
from farmnode.dataplane.nftables import NftablesPlane
from farmnode.errors import DataplaneError
from farmnode.services import Running, agent_weight, probe_targets
from farmnode.spec import CheckSpec, RealSpec, ServiceSpec
from farmnode.status import render_text
from farmnode.switch.service import VirtualService
from tests.conftest import skip_or_fail
from tests.farmnode.realservers import IdServer
from tests.ports import free_port

pytestmark = pytest.mark.anyio

WAIT = 10.0  # generous bound of every wait in this file
FAST = Timeouts(cycle=0.1, reload_drain=0.3, shutdown_drain=0.2)
CHECK = '{ kind = "http", url = "/health", interval = 0.2, timeout = 0.2, rise = 2, fall = 2 }'
FARMNODE = str(Path(sys.executable).parent / "farmnode")


# --- real servers ------------------------------------------------------------------------------


class Agent:
    """An agent-check server: each connection gets ``reply`` and a newline, then EOF."""

    def __init__(self, sock: socket.socket, reply: str = "up") -> None:
        self.sock = sock
        self.reply = reply
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._answer, sock=self.sock)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.reply.encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def id_servers(*idents: str, host: str = "127.0.0.1") -> AsyncIterator[list[IdServer]]:
    servers = [await IdServer(ident, host).start() for ident in idents]
    try:
        yield servers
    finally:
        for server in servers:
            await server.kill()


def same_port_sockets(hosts: list[str]) -> list[socket.socket]:
    """Listening sockets on one port number free on every one of ``hosts``."""
    for _ in range(50):
        first = socket.socket()
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.bind((hosts[0], 0))
        port = first.getsockname()[1]
        sockets = [first]
        try:
            for host in hosts[1:]:
                sock = socket.socket()
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError:
            for sock in sockets:
                sock.close()
            continue
        for sock in sockets:
            sock.listen(16)
        return sockets
    raise RuntimeError(f"no port free on all of {hosts}")


# --- configuration and the node ----------------------------------------------------------------


def service_toml(
    name: str,
    port: int,
    reals: Sequence[IdServer | tuple[IdServer, int]],
    *,
    scheduler: str = "rr",
    check: str = CHECK,
    extra: str = "",
) -> str:
    blocks = ""
    for real in reals:
        server, weight = real if isinstance(real, tuple) else (real, 1)
        blocks += f'[[services.real]]\naddress = "{server.address}"\nweight = {weight}\n'
    return f"""
[[services]]
name = "{name}"
protocol = "tcp"
listen = "127.0.0.1:{port}"
scheduler = "{scheduler}"
check = {check}
{extra}
{blocks}"""


def node_text(*services: str, status_listen: str = "127.0.0.1:0", report: str = "") -> str:
    return f'[node]\nname = "n1"\nstatus_listen = "{status_listen}"\n{"".join(services)}\n{report}'


def node_config(*services: str, report: str = "") -> NodeConfig:
    return parse_config(tomllib.loads(node_text(*services, report=report)), "test", environ={})


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig, **kwargs: Any) -> AsyncIterator[Node]:
    node = Node(config, timeouts=FAST, **kwargs)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def new_client() -> httpx.AsyncClient:
    """A new connection for every request, so that each one is scheduled."""
    return httpx.AsyncClient(
        trust_env=False, timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def ids(client: httpx.AsyncClient, url: str, n: int) -> list[str]:
    """``n`` requests, one after the other; any failure fails the test."""
    answers = []
    for _ in range(n):
        response = await client.get(url)
        assert response.status_code == 200
        answers.append(response.text)
    return answers


def real_status(node: Node, service: str, address: str) -> dict[str, Any]:
    for doc in node.status()["services"]:
        if doc["name"] == service:
            for real in doc["real"]:
                if real["address"] == address:
                    return cast(dict[str, Any], real)
    raise AssertionError(f"{service} has no real server {address}: {node.status()}")


def service_status(node: Node, name: str) -> dict[str, Any]:
    for doc in node.status()["services"]:
        if doc["name"] == name:
            return cast(dict[str, Any], doc)
    raise AssertionError(f"no service {name}")


async def wait_until(what: str, ready: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def wait_for(what: str, ready: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def url_of(node: Node, service: str = "web") -> str:
    host, port = node.address(service)
    return f"http://{host}:{port}/"


# --- pure parts ------------------------------------------------------------------------------


def _spec(check: CheckSpec) -> ServiceSpec:
    reals = (RealSpec("127.0.0.1", 9001), RealSpec("::1", 9002))
    return ServiceSpec("web", "tcp", "127.0.0.1", 8000, real=reals, check=check)


def test_probe_targets_follow_the_check_kind() -> None:
    http = probe_targets(_spec(CheckSpec(kind="http", url="/health", expect="OK", fall=4)))
    assert [(t.key, t.kind, t.url, t.expect, t.fall) for t in http] == [
        ("web/127.0.0.1:9001", "http", "http://127.0.0.1:9001/health", "OK", 4),
        ("web/[::1]:9002", "http", "http://[::1]:9002/health", "OK", 4),
    ]
    tcp = probe_targets(_spec(CheckSpec(kind="tcp", interval=0.5, timeout=0.1)))
    assert [(t.kind, t.host, t.port, t.interval, t.timeout) for t in tcp] == [
        ("tcp", "127.0.0.1", 9001, 0.5, 0.1),
        ("tcp", "::1", 9002, 0.5, 0.1),
    ]
    agent = probe_targets(_spec(CheckSpec(kind="agent", agent_port=9777)))
    assert [(t.kind, t.host, t.port) for t in agent] == [
        ("agent", "127.0.0.1", 9777),
        ("agent", "::1", 9777),
    ]
    assert probe_targets(_spec(CheckSpec(kind="none"))) == []
    # a check port: the database's health endpoint beside its service port
    primary = probe_targets(_spec(CheckSpec(kind="http", url="/primary", port=8008)))
    assert [t.url for t in primary] == [
        "http://127.0.0.1:8008/primary",
        "http://[::1]:8008/primary",
    ]
    tcp_port = probe_targets(_spec(CheckSpec(kind="tcp", port=8008)))
    assert [(t.host, t.port) for t in tcp_port] == [("127.0.0.1", 8008), ("::1", 8008)]


@pytest.mark.parametrize(
    ("line", "weight"),
    [
        (b"up\n", None),
        (b"ready\n", None),
        (b"drain\n", 0),
        (b"maint\n", 0),
        (b"50%\n", 2),
        (b"up 150% #busy\n", 6),
        (b"ready 0%\n", 0),
    ],
)
def test_agent_weight_from_the_agents_words(line: bytes, weight: int | None) -> None:
    import datetime as dt

    from dispatcher.backends.health import Health, ProbeResult, parse_agent_reply

    report = parse_agent_reply(line)
    result = ProbeResult(True, "", 0.0, dt.datetime.now(dt.UTC), 0.0, agent=report)
    assert agent_weight(Health("up", result), configured=4) == weight
    assert agent_weight(Health("up", None), configured=4) is None


def test_render_text_shows_every_server_and_the_fallback() -> None:
    doc = {
        "node": "n1",
        "uptime": 3725.0,
        "state": "running: 1 service(s), 1/2 real server(s) up",
        "config": "node.toml",
        "reloads": 2,
        "report": {"url": "http://d:8081", "site": "eu", "last": "reported load 0.250 (1 conn)"},
        "services": [
            {
                "name": "web",
                "protocol": "tcp",
                "address": "127.0.0.1:8000",
                "scheduler": "wlc",
                "dataplane": "userspace",
                "persistence": {"timeout": 300.0, "netmask": 24},
                "templates": 3,
                "real": [
                    {
                        "address": "127.0.0.1:9001",
                        "state": "up",
                        "weight": 2,
                        "effective_weight": 1,
                        "active": 4,
                        "total": 120,
                        "bytes_in": 2048,
                        "bytes_out": 5 * 1024 * 1024,
                        "check": {"health": "up", "detail": "agent: 50%"},
                    },
                    {
                        "address": "127.0.0.1:9002",
                        "state": "down",
                        "weight": 1,
                        "effective_weight": 1,
                        "active": 0,
                        "total": 7,
                        "bytes_in": 12,
                        "bytes_out": 0,
                        "check": {"health": "down", "detail": "ConnectError"},
                    },
                ],
                "fallback": {"address": "127.0.0.1:9099", "in_use": False, "active": 0, "total": 0},
            }
        ],
    }
    text = render_text(doc)
    lines = text.splitlines()
    assert lines[0] == (
        "node n1: up 1h2m5s, running: 1 service(s), 1/2 real server(s) up "
        "(config node.toml, 2 reload(s))"
    )
    assert lines[1] == "load report to http://d:8081 as site eu: reported load 0.250 (1 conn)"
    assert lines[3] == (
        "service web: tcp 127.0.0.1:8000, scheduler wlc, userspace plane, "
        "persistence 300s /24 (3 template(s))"
    )
    assert lines[4].split() == [
        "REAL", "SERVER", "STATE", "WEIGHT", "ACTIVE", "TOTAL", "IN", "OUT", "CHECK",
    ]  # fmt: skip
    assert lines[5].split() == [
        "127.0.0.1:9001", "up", "1", "(of", "2)", "4", "120", "2.0K", "5.0M", "up:", "agent:",
        "50%",
    ]  # fmt: skip
    assert lines[6].split()[:7] == ["127.0.0.1:9002", "down", "1", "0", "7", "12", "0"]
    assert lines[7].split()[:4] == ["127.0.0.1:9099", "(fallback)", "standby", "-"]
    assert render_text({"node": "n2", "services": []}).splitlines()[-1] == "no services"


# --- start-up -----------------------------------------------------------------------------------


async def test_first_client_never_meets_a_server_nobody_looked_at() -> None:
    async with id_servers("a", "b", "c") as (a, b, c):
        await c.kill()  # dead before the node starts
        config = node_config(service_toml("web", free_port(), [a, b, c]))
        async with running_node(config) as node, new_client() as client:
            assert real_status(node, "web", c.address)["state"] == "down"
            assert real_status(node, "web", c.address)["check"]["health"] == "down"

            def up() -> bool:  # a first probe may time out on a busy machine
                return all(real_status(node, "web", s.address)["state"] == "up" for s in (a, b))

            await wait_until("a and b up", up)
            answers = await ids(client, url_of(node), 20)
            assert set(answers) == {"a", "b"}
            assert real_status(node, "web", c.address)["total"] == 0  # never even tried
            assert node.summary() == "running: 1 service(s), 2/3 real server(s) up"


async def test_a_node_that_cannot_listen_leaves_nothing_behind() -> None:
    async with id_servers("a") as (a,):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            node = Node(node_config(service_toml("web", port, [a])), timeouts=FAST)
            with pytest.raises(DataplaneError, match="cannot listen"):
                await node.start()
        assert node.state == "stopped"
        assert node.prober is None
        assert node.listener is not None
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", node.status_port)):
            pass


# --- health checks move the switch -------------------------------------------------------------


@pytest.mark.parametrize("quiescent", [False, True], ids=["leaves", "quiesced"])
async def test_a_killed_server_gets_no_client_after_fall_checks(quiescent: bool) -> None:
    """The issue's scenario: a real server dies mid-run; once its checks failed ``fall``
    times, every new connection succeeds and none goes to it (not even an attempt)."""
    extra = "quiescent = true" if quiescent else ""
    async with id_servers("a", "b", "c") as (a, b, c):
        config = node_config(service_toml("web", free_port(), [a, b, c], extra=extra))
        async with running_node(config) as node, new_client() as client:
            url = url_of(node)
            answers: list[str] = []
            stop = asyncio.Event()

            async def load() -> None:
                for _ in range(2000):  # bounded: stopped long before
                    if stop.is_set():
                        return
                    try:
                        answers.append((await client.get(url)).text)
                    except httpx.HTTPError as exc:
                        answers.append(f"error {exc!r}")

            running = asyncio.create_task(load())
            await wait_until("some traffic on b", lambda: answers.count("b") >= 3)
            await b.kill()
            dead = b.address
            await wait_until("b down", lambda: real_status(node, "web", dead)["state"] == "down")
            stop.set()
            await running
            before = real_status(node, "web", dead)
            assert before["effective_weight"] == (0 if quiescent else 1)
            after_detection = await ids(client, url, 60)
            assert set(after_detection) == {"a", "c"}
            assert real_status(node, "web", dead)["total"] == before["total"]
            assert "1 service(s), 2/3 real server(s) up" in node.summary()
            # the load ran through the kill; whatever failed, failed before detection
            assert {"a", "c"} <= set(answers)


async def test_fallback_only_while_every_real_server_is_down() -> None:
    async with id_servers("a", "b") as (a, b), id_servers("sorry") as (sorry,):
        extra = f'fallback = "{sorry.address}"'
        config = node_config(service_toml("web", free_port(), [a, b], extra=extra))
        async with running_node(config) as node, new_client() as client:
            url = url_of(node)
            assert set(await ids(client, url, 10)) == {"a", "b"}
            assert sorry.hits == 0
            await a.kill()
            await b.kill()
            await wait_until(
                "fallback in use", lambda: service_status(node, "web")["fallback"]["in_use"]
            )
            assert await ids(client, url, 10) == ["sorry"] * 10
            assert "on fallback: web" in node.summary()
            await a.start()  # the same address again
            await wait_until(
                "fallback left", lambda: not service_status(node, "web")["fallback"]["in_use"]
            )
            assert await ids(client, url, 10) == ["a"] * 10
            assert sorry.hits == 10
            assert "fallback" not in node.summary()


async def test_agent_check_drains_weights_and_takes_down() -> None:
    hosts = ["127.0.0.2", "127.0.0.3"]
    socks = same_port_sockets(hosts)
    agent_port = socks[0].getsockname()[1]
    agents = [Agent(sock) for sock in socks]
    for agent in agents:
        await agent.start()
    check = (
        f'{{ kind = "agent", agent_port = {agent_port}, interval = 0.2, timeout = 0.2, '
        "rise = 2, fall = 2 }"
    )
    try:
        async with (
            id_servers("a", host=hosts[0]) as (a,),
            id_servers("b", host=hosts[1]) as (b,),
        ):
            toml = service_toml("web", free_port(), [(a, 2), (b, 2)], scheduler="wrr", check=check)
            async with running_node(node_config(toml)) as node, new_client() as client:
                url = url_of(node)

                def state(server: IdServer) -> dict[str, Any]:
                    return real_status(node, "web", server.address)

                assert set(await ids(client, url, 10)) == {"a", "b"}
                assert state(b)["agent_weight"] is None
                agents[1].reply = "drain"
                await wait_until("b drained", lambda: state(b)["state"] == "quiescent")
                total = state(b)["total"]
                assert await ids(client, url, 12) == ["a"] * 12
                assert state(b)["total"] == total
                agents[1].reply = "ready 50%"
                await wait_until("b at half weight", lambda: state(b)["effective_weight"] == 1)
                assert state(b)["state"] == "up"
                answers = await ids(client, url, 30)
                assert answers.count("a") == 20  # wrr 2:1
                assert answers.count("b") == 10
                agents[1].reply = "down #disk full"
                await wait_until("b down", lambda: state(b)["state"] == "down")
                assert "disk full" in state(b)["check"]["detail"]
                assert set(await ids(client, url, 6)) == {"a"}
                agents[1].reply = "up"  # the 50% stands: unsaid words keep their value
                await wait_until("b up", lambda: state(b)["state"] == "up")
                assert state(b)["effective_weight"] == 1
    finally:
        for agent in agents:
            await agent.stop()


# --- reload -----------------------------------------------------------------------------------


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """One request on an open connection; the answering server's id."""
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return (await asyncio.wait_for(reader.readexactly(length), WAIT)).decode()


async def test_reload_in_place_keeps_an_established_connection() -> None:
    async with id_servers("a", "b", "d") as (a, b, d):
        port = free_port()
        old = node_config(service_toml("web", port, [(a, 1), (b, 1)], scheduler="wrr"))
        async with running_node(old) as node, new_client() as client:
            url = url_of(node)
            running: Running = node.services["web"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                held = await _ask(reader, writer)
                holder = {"a": a, "b": b}[held]
                other = b if holder is a else a
                new = node_config(
                    service_toml("web", port, [(holder, 0), (other, 1), (d, 2)], scheduler="wrr")
                )
                line = await node.reload(new)
                assert line == "reloaded test: 1 kept, 0 started, 0 stopped"
                assert node.services["web"] is running  # updated in place
                assert await _ask(reader, writer) == held  # the same connection, still served
                assert real_status(node, "web", holder.address)["state"] == "quiescent"
                assert real_status(node, "web", holder.address)["active"] == 1
                # d was probed during the reload; on a busy machine that probe may time out
                await wait_until(
                    "d up", lambda: real_status(node, "web", d.address)["state"] == "up"
                )
                answers = await ids(client, url, 30)
                assert held not in answers
                assert answers.count(other.ident) == 10
                assert answers.count("d") == 20
                assert await _ask(reader, writer) == held
            finally:
                writer.close()
            assert node.reloads == 1


async def test_reload_moves_adds_and_removes_services() -> None:
    async with id_servers("a", "b") as (a, b):
        web, other, moved, api = (free_port() for _ in range(4))
        old = node_config(service_toml("web", web, [a]), service_toml("other", other, [b]))
        async with running_node(old) as node, new_client() as client:
            assert await ids(client, f"http://127.0.0.1:{other}/", 1) == ["b"]
            new = node_config(service_toml("web", moved, [a]), service_toml("api", api, [b]))
            line = await node.reload(new)
            assert line == "reloaded test: 0 kept, 2 started, 2 stopped"
            assert await ids(client, f"http://127.0.0.1:{moved}/", 3) == ["a"] * 3
            assert await ids(client, f"http://127.0.0.1:{api}/", 3) == ["b"] * 3
            for gone in (web, other):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{gone}/")
            assert [s["name"] for s in node.status()["services"]] == ["web", "api"]
            assert real_status(node, "web", a.address)["check"]["health"] == "up"


async def test_a_bad_configuration_on_reload_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with id_servers("a") as (a,):
        path = tmp_path / "node.toml"
        path.write_text(node_text(service_toml("web", free_port(), [a])), encoding="utf-8")
        config = load_config(path, environ={})
        node = Node(config, loader=lambda: load_config(path, environ={}), timeouts=FAST)
        task = asyncio.create_task(node.run())
        try:
            await wait_until("running", lambda: node.state.startswith("running"))
            url = url_of(node)
            path.write_text(
                node_text(service_toml("web", 1, [a], scheduler="nope")), encoding="utf-8"
            )
            node.request_reload()
            await wait_until("reload tried", lambda: node.last_reload is not None)
            assert node.last_reload is not None
            failed = f"reload failed, the running configuration stays: {path}: services[0]."
            assert node.last_reload.startswith(failed + "scheduler")
            logged = [r for r in caplog.records if "reload failed" in r.getMessage()]
            assert [r.levelname for r in logged] == ["ERROR"]  # once, at ERROR
            assert logged[0].getMessage() == f"node n1: {node.last_reload}"
            assert node.reloads == 0
            assert node.config is config
            async with new_client() as client:
                assert await ids(client, url, 3) == ["a"] * 3
        finally:
            node.request_stop()
            await asyncio.wait_for(task, WAIT)
        assert node.state == "stopped"


async def test_cycles_act_on_the_flags() -> None:
    async with id_servers("a") as (a,):
        config = node_config(service_toml("web", free_port(), [a]))
        async with running_node(config) as node:
            assert await node.cycle() == "running: 1 service(s), 1/1 real server(s) up"
            node.request_reload()  # started without a file to read again
            assert await node.cycle() == "reload refused: this node was not started from a file"
            assert await node.cycle() == "running: 1 service(s), 1/1 real server(s) up"
            node.request_stop()
            assert await node.cycle() == "stopping"


# --- status -------------------------------------------------------------------------------------


async def test_status_endpoint_answers_json() -> None:
    async with id_servers("a", "b") as (a, b), id_servers("sorry") as (sorry,):
        await b.kill()
        extra = f'fallback = "{sorry.address}"\npersistence = {{ timeout = 60 }}'
        config = node_config(service_toml("web", free_port(), [a, b], extra=extra))
        async with running_node(config) as node, new_client() as client:
            await ids(client, url_of(node), 2)
            base = f"http://127.0.0.1:{node.status_port}"
            response = await client.get(f"{base}/status")
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            doc = response.json()
            assert doc["node"] == "n1"
            assert doc["uptime"] >= 0
            assert doc["state"] == "running: 1 service(s), 1/2 real server(s) up"
            assert doc["report"] is None
            [web] = doc["services"]
            assert web["address"] == "127.0.0.1:" + url_of(node).rsplit(":", 1)[1].strip("/")
            assert (web["scheduler"], web["dataplane"], web["running"]) == ("rr", "userspace", True)
            assert web["templates"] == 1
            reals = {r["address"]: r for r in web["real"]}
            assert reals[a.address]["state"] == "up"
            assert reals[a.address]["total"] == 2
            assert reals[a.address]["bytes_in"] > 0
            assert reals[a.address]["bytes_out"] > 0
            assert reals[a.address]["check"]["detail"] == "HTTP 200"
            assert reals[b.address]["state"] == "down"
            assert web["fallback"] == {
                "address": sorry.address, "in_use": False, "active": 0, "total": 0,
            }  # fmt: skip
            assert "127.0.0.1" in render_text(doc)
            missing = await client.get(f"{base}/nope")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"
            wrong = await client.post(f"{base}/status")
            assert wrong.status_code == 405
            assert wrong.headers["allow"] == "GET, HEAD"


async def test_a_64_mib_header_to_the_status_port_stalls_nothing() -> None:
    """The status listener shares the daemon's loop (checks, heartbeat): a stranger's huge
    header is cut at 16 KiB and /status keeps answering at once meanwhile."""
    async with id_servers("a") as (a,):
        config = node_config(service_toml("web", free_port(), [a]))
        async with running_node(config) as node, new_client() as client:
            base = f"http://127.0.0.1:{node.status_port}"

            async def attack() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", node.status_port)
                try:
                    writer.write(b"GET /status HTTP/1.1\r\nHost: h\r\nX-Huge: ")
                    chunk = b"x" * (1 << 20)
                    for _ in range(64):  # 64 MiB, unless the listener cuts it first
                        writer.write(chunk)
                        await writer.drain()
                    return await reader.read(12)
                except OSError:
                    return b"cut"
                finally:
                    writer.close()

            attacker = asyncio.create_task(attack())
            waits = []
            while not attacker.done():
                started = time.monotonic()
                assert (await client.get(f"{base}/status")).status_code == 200
                waits.append(time.monotonic() - started)
                await asyncio.sleep(0.01)
            assert await attacker in (b"HTTP/1.1 400", b"cut")
            assert max(waits) < 0.25, waits


# --- the command line, as a user runs it -------------------------------------------------------


async def _run_farmnode(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        FARMNODE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FARMNODE_")}


async def test_serve_status_reload_and_stop_from_the_command_line(tmp_path: Path) -> None:
    async with id_servers("a", "b", "c") as (a, b, c), new_client() as client:
        status_port, port = free_port(), free_port()
        path = tmp_path / "node.toml"

        def write(*services: str) -> None:
            text = node_text(*services, status_listen=f"127.0.0.1:{status_port}")
            path.write_text(text, encoding="utf-8")

        write(service_toml("web", port, [a, b]))
        env = _clean_env()
        process = await asyncio.create_subprocess_exec(
            FARMNODE, "serve", "--config", str(path), env=env, stderr=asyncio.subprocess.PIPE
        )
        status_url = f"http://127.0.0.1:{status_port}/status"

        async def status() -> dict[str, Any] | None:
            if process.returncode is not None:
                raise AssertionError(f"farmnode serve exited with {process.returncode}")
            try:
                return cast(dict[str, Any], (await client.get(status_url)).json())
            except httpx.TransportError:
                return None

        async def answers(pred: Callable[[dict[str, Any]], bool]) -> bool:
            doc = await status()
            return doc is not None and pred(doc)

        try:
            await wait_for("the status listener", lambda: answers(lambda d: True), 15)
            both_up = ["up", "up"]
            await wait_for(
                "a and b up",
                lambda: answers(
                    lambda d: [r["state"] for r in d["services"][0]["real"]] == both_up
                ),
            )
            assert set(await ids(client, f"http://127.0.0.1:{port}/", 4)) == {"a", "b"}
            code, out, err = await _run_farmnode("status", "--config", str(path), env=env)
            assert (code, err) == (0, "")
            lines = out.splitlines()
            assert lines[0].startswith("node n1: up ")
            assert f"service web: tcp 127.0.0.1:{port}, scheduler rr, userspace plane" in lines
            rows = {line.split()[0]: line.split() for line in lines if line.startswith("  1")}
            assert rows[a.address][1:5] == ["up", "1", "0", "2"]
            assert rows[b.address][1:5] == ["up", "1", "0", "2"]
            code, out, _ = await _run_farmnode("status", "--json", "-c", str(path), env=env)
            assert code == 0
            assert json.loads(out)["services"][0]["name"] == "web"

            write(service_toml("web", port, [a, (b, 0), c]))
            process.send_signal(signal.SIGHUP)
            await wait_for("the reload", lambda: answers(lambda d: d["reloads"] == 1))
            states = ["up", "quiescent", "up"]
            await wait_for(
                "c up",
                lambda: answers(lambda d: [r["state"] for r in d["services"][0]["real"]] == states),
            )
            assert set(await ids(client, f"http://127.0.0.1:{port}/", 6)) == {"a", "c"}

            good = path.read_text(encoding="utf-8")
            path.write_text(good + "\n[[services]\n", encoding="utf-8")  # not even TOML
            process.send_signal(signal.SIGHUP)
            await wait_for(
                "the failed reload",
                lambda: answers(lambda d: (d["last_reload"] or "").startswith("reload failed")),
            )
            assert set(await ids(client, f"http://127.0.0.1:{port}/", 4)) == {"a", "c"}
            # status still finds the node: it reads only node.status_listen
            code, out, err = await _run_farmnode("status", "--config", str(path), env=env)
            assert (code, err) == (0, "")
            assert "last reload: reload failed, the running configuration stays: " in out
            path.write_text(good.replace("[[services]]", "[[services]]\nbogus = 1", 1))
            code, out, err = await _run_farmnode("status", "--config", str(path), env=env)
            assert (code, err) == (0, ""), "a valid TOML file that fails validation"
            path.write_text("[node\n", encoding="utf-8")
            code, out, err = await _run_farmnode("status", "--config", str(path), env=env)
            assert code == 2
            assert "give --address" in err
            address = f"127.0.0.1:{status_port}"
            code, out, err = await _run_farmnode("status", "--address", address, env=env)
            assert (code, err) == (0, "")
            assert out.startswith("node n1: up ")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            _, err_bytes = await asyncio.wait_for(process.communicate(), 15)
        stderr = err_bytes.decode()
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert "reload failed, the running configuration stays" in stderr
        assert stderr.rstrip().endswith("node n1: stopped")
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")
        code, out, err = await _run_farmnode("status", "--config", str(path), env=env)
        assert code == 2  # the file is still broken
        path.write_text(node_text(status_listen=f"127.0.0.1:{status_port}"), encoding="utf-8")
        code, out, err = await _run_farmnode("status", "--config", str(path), env=env)
        assert (code, out) == (1, "")
        assert err.startswith(f"farmnode: node n1 is not running (nothing answers at {status_url}")


async def test_serve_exits_1_when_it_cannot_listen(tmp_path: Path) -> None:
    async with id_servers("a") as (a,):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            path = tmp_path / "node.toml"
            text = node_text(service_toml("web", taken.getsockname()[1], [a]))
            path.write_text(text, encoding="utf-8")
            code, out, err = await _run_farmnode("serve", "-c", str(path), env=_clean_env())
        assert (code, out) == (1, "")
        assert "Traceback" not in err
        assert err.splitlines()[-1].startswith("farmnode: userspace data plane: service web:")


# --- nftables: what a crashed run left is swept -----------------------------------------------


@pytest.fixture
def switch_ns() -> Iterator[str]:
    from tests.farmnode.netns import Lab, unavailable_reason

    reason = unavailable_reason()
    if reason is None and shutil.which("nft") is None:
        reason = "the nft binary is missing (apt-get install nftables)"
    if reason is not None:
        skip_or_fail(reason)
    with Lab() as lab:
        yield lab.namespace("switch").name


async def test_nftables_services_sweep_stale_chains_and_clean_up(switch_ns: str) -> None:
    def nft(*args: str, script: str | None = None) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", switch_ns, "nft", *args],
            input=script,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    crashed = (  # a service an earlier run had, and this configuration does not
        "add table ip farmnode\nadd chain ip farmnode gone-prerouting\n"
        "add rule ip farmnode gone-prerouting ip daddr 10.213.0.1 tcp dport 81 counter\n"
    )
    nft("-f", "-", script=crashed)
    text = node_text(
        """
[[services]]
name = "web"
protocol = "tcp"
listen = "10.213.0.1:80"
scheduler = "wrr"
dataplane = "nftables"
check = { kind = "none" }
[[services.real]]
address = "10.213.0.2:80"
"""
    )
    config = parse_config(tomllib.loads(text), "test", environ={})

    def plane(spec: ServiceSpec, service: VirtualService) -> NftablesPlane:
        return NftablesPlane(spec, service, netns=switch_ns)

    node = Node(config, planes={"nftables": plane}, timeouts=FAST)
    await node.start()
    try:
        listing = nft("list", "table", "ip", "farmnode")
        assert "gone-prerouting" not in listing
        assert "web-prerouting" in listing
        assert "dnat to 10.213.0.2:80" in listing
        assert (await node.measure()).connections == 0
        new = parse_config(tomllib.loads(text.replace('"10.213.0.2:80"', '"10.213.0.3:80"')), "t")
        await node.reload(new)
        await wait_for(
            "the new server in the rules",
            lambda: asyncio.to_thread(
                lambda: "10.213.0.3:80" in nft("list", "table", "ip", "farmnode")
            ),
        )
    finally:
        await node.stop()
    assert "farmnode" not in nft("list", "tables")
